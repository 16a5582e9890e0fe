"""Where a training step spends its time: a per-op profile of the teacher or the CURE step.

    python tools/profile_step.py --kind cure [--config default] [--steps 3] [--top 25]
    python tools/profile_step.py --kind teacher --set model.width=0.5

Builds the step as tools/bench_cure.py does (`benchlib.RandomSetup`: random images, the config's
model), runs it a few times to compile and warm up, then traces `--steps` steps with
`jax.profiler` and sums the device time of every XLA op over them. Prints the time per step by
kind of op (the op name without its number: `convolution`, `transpose_copy_fusion`, ...) and the
`--top` single ops with their shapes from the compiled program, so that one slow op (a transpose
fused with a batch norm, a stride-2 input gradient) stands out. Reading the trace needs `pip
install xprof` (not a dependency of the package). Times on a shared machine are inflated alike;
compare ops within one run.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import sys
import tempfile

import jax
from benchlib import RandomSetup

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib


def build_step(config, kind: str, folder: pathlib.Path):
    """(step, state, batch) of the teacher or the CURE step on random images."""
    setup = RandomSetup(config)
    if kind == "teacher":
        return setup.teacher_step()
    return setup.cure_step(setup.cure_context(folder), config.teacher.batch_size)


def op_times(trace_dir: pathlib.Path, steps: int) -> dict[str, float]:
    """Milliseconds per step of every XLA op in the trace (names as the compiled program's)."""
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError as error:
        raise SystemExit("reading the trace needs xprof: pip install xprof") from error
    (xplane, *_) = sorted(trace_dir.glob("**/*.xplane.pb"))
    data, _ = raw_to_tool_data.xspace_to_tool_data([str(xplane)], "trace_viewer", {})
    return op_durations(json.loads(data)["traceEvents"], steps)


def op_durations(events: list[dict], steps: int) -> dict[str, float]:
    """Milliseconds per step of every XLA op among trace-viewer ``events``.

    On more than one core XLA:CPU runs convolutions and matrix products asynchronously: the op's
    own event covers only its launch (0.1 ms for a 13 ms convolution), its work runs in thread
    pool tasks, and an ``end: <op>`` event marks its completion. Such an op is timed from its
    launch to that end. Ops that run at once overlap, so the times can add up to more than the
    step.
    """
    launches = collections.defaultdict(list)  # op name -> [(start, end)] in microseconds
    ends = collections.defaultdict(list)  # op name -> completion times of its async runs
    for event in events:
        # Host-side events: Python frames, the thread pool, the jitted call.
        name = event.get("name", "")
        host = "$" in name or "::" in name or name.startswith("PjitFunction")
        if event.get("ph") != "X" or "dur" not in event or host:
            continue
        if name.startswith("end: "):
            ends[name[len("end: "):]].append(event["ts"] + event["dur"])
        else:
            launches[name].append((event["ts"], event["ts"] + event["dur"]))
    times = collections.defaultdict(float)
    for name, runs in launches.items():
        pending = sorted(ends.get(name, []))
        for start, end in sorted(runs):
            # The first completion after a launch is that run's: runs of one op do not overlap.
            while pending and pending[0] < start:
                pending.pop(0)
            if pending:
                end = max(end, pending.pop(0))
            times[name] += (end - start) / 1000 / steps
    return dict(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("teacher", "cure"), default="cure")
    parser.add_argument("--config", default="default")
    parser.add_argument("--steps", type=int, default=3, help="steps traced")
    parser.add_argument("--top", type=int, default=25, help="single ops listed")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    with tempfile.TemporaryDirectory() as folder:
        step, state, batch = build_step(config, args.kind, pathlib.Path(folder))
        key = jax.random.key(0)
        program = step.lower(state, batch, key).compile().as_text()
        for _ in range(3):  # compile and warm up
            state, metrics = step(state, batch, key)
            jax.block_until_ready(metrics)
        trace_dir = pathlib.Path(folder) / "trace"
        jax.profiler.start_trace(str(trace_dir))
        for _ in range(args.steps):
            state, metrics = step(state, batch, key)
            jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        times = op_times(trace_dir, args.steps)
    shapes = dict(re.findall(r"^\s*(?:ROOT )?%(\S+) = (\S+)", program, flags=re.M))
    kinds = collections.defaultdict(lambda: [0.0, 0])
    for name, ms in times.items():
        kind = re.sub(r"[.\d]+$", "", name)
        kinds[kind][0] += ms
        kinds[kind][1] += 1
    total = sum(times.values())
    print(f"{args.kind} step, config {' '.join([args.config, *args.overrides])}: {total:.0f} ms "
          f"of XLA ops per step ({args.steps} steps traced; ops that run at once overlap)")
    print("\n| kind of op | ms per step | share | ops |\n|---|---|---|---|")
    for kind, (ms, count) in sorted(kinds.items(), key=lambda item: -item[1][0]):
        if ms >= 0.005 * total:
            print(f"| {kind} | {ms:.1f} | {100 * ms / total:.1f}% | {count} |")
    print("\n| op | ms per step | shape |\n|---|---|---|")
    for name, ms in sorted(times.items(), key=lambda item: -item[1])[:args.top]:
        print(f"| {name} | {ms:.1f} | {shapes.get(name, '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
