"""A command's unlearning runs side by side in processes of their own (`--jobs N`).

A compare or an ablation is a list of unlearning runs that share one teacher and nothing else.
XLA:CPU's steps gain 1.5-1.8x from a second core, not 2x (docs/PERFORMANCE.md, "One core
against two"), so on the CPU N runs at once, each pinned to 1/N of the cores, finish a list
sooner than one run at a time on all of them. The command trains (or reuses) the teacher
first; then each unfinished run goes to a fresh process of the same command line with
`--job K --cores C`, which pins itself to its cores before JAX starts its backend, reuses the
teacher and writes its run folder as the serial command would, its output in
`<run folder>/log.txt`. The command then collects every run from its folder, as it reuses
finished runs on any rerun.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

LOG_FILE = "log.txt"


class JobsFailed(RuntimeError):
    """One or more runs ended with an error; the message names each with its log."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--jobs N`, and the hidden `--job K --cores C` by which a command runs one of its runs."""
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="unlearning runs at once, each in its own process on 1/N of the "
                             "CPU cores (CPU only; default 1: one after another in this "
                             "process). Each run's output goes to <run folder>/log.txt")
    parser.add_argument("--job", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cores", default=None, help=argparse.SUPPRESS)


def pin(cores: str) -> None:
    """Confines this process to `cores` ("0,1"), before JAX starts: XLA:CPU sizes its thread
    pool by the cores the process may use."""
    os.sched_setaffinity(0, {int(core) for core in cores.split(",")})


def core_groups(workers: int, cores: Sequence[int]) -> list[tuple[int, ...]]:
    """`cores` split into `workers` groups of consecutive cores, as even as they go (the first
    groups one larger).

    Raises:
      ValueError: fewer cores than workers, or fewer than one worker.
    """
    if workers < 1:
        raise ValueError(f"--jobs {workers}: give at least 1")
    if workers > len(cores):
        raise ValueError(f"--jobs {workers} is more than the {len(cores)} CPU core(s) this "
                         f"process may use; give at most {len(cores)}")
    size, extra = divmod(len(cores), workers)
    groups, start = [], 0
    for k in range(workers):
        end = start + size + (k < extra)
        groups.append(tuple(cores[start:end]))
        start = end
    return groups


def check_jobs(jobs: int) -> None:
    """A `--jobs` this machine can serve, checked before any work.

    Raises:
      ValueError: naming the valid range, or the backend that is not a CPU.
    """
    core_groups(jobs, sorted(os.sched_getaffinity(0)))
    if jobs > 1:
        import jax

        if jax.default_backend() != "cpu":
            raise ValueError(f"--jobs {jobs} splits the CPU cores between processes; on "
                             f"{jax.default_backend()} every run would share one device. "
                             "Leave it at 1")


def _last_line(path: pathlib.Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def run_pending(module: str, argv: Sequence[str], folders: Sequence[pathlib.Path],
                labels: Sequence[str], jobs: int, *, progress: bool) -> None:
    """Runs every run whose folder holds no `metrics.json`, `jobs` at a time, each as
    `python -m module *argv --job K --cores C` with K its index in `folders`; waits for all.

    A run that fails does not stop the others; interrupting this process stops every run (each
    resumes from its checkpoints on the next command).

    Raises:
      JobsFailed: naming each failed run, its exit status, its last line and its log.
    """
    pending = [k for k, folder in enumerate(folders) if not (folder / "metrics.json").exists()]
    if not pending:
        return
    free = core_groups(min(jobs, len(pending)), sorted(os.sched_getaffinity(0)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    running: dict[subprocess.Popen, tuple[int, tuple[int, ...], float]] = {}
    failed = []
    bar = tqdm(total=len(pending), desc=f"runs, {len(free)} at a time", unit="run",
               disable=not progress)
    try:
        while pending or running:
            while pending and free:
                k, cores = pending.pop(0), free.pop(0)
                cores_text = ",".join(map(str, cores))
                folders[k].mkdir(parents=True, exist_ok=True)
                log = folders[k] / LOG_FILE
                with open(log, "a") as out:
                    command = [sys.executable, "-m", module, *argv, "--set", "run.progress=false",
                               "--job", str(k), "--cores", cores_text]
                    running[subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                             env=env)] = (k, cores, time.perf_counter())
                bar.write(f"{labels[k]}: started on core(s) {cores_text}; output in {log}")
            time.sleep(0.2)
            for process in [p for p in running if p.poll() is not None]:
                k, cores, started = running.pop(process)
                free.append(cores)
                bar.update(1)
                took = _duration(time.perf_counter() - started)
                if process.returncode == 0:
                    bar.write(f"{labels[k]}: finished in {took}")
                else:
                    log = folders[k] / LOG_FILE
                    failed.append(f"{labels[k]} (exit status {process.returncode}: "
                                  f"{_last_line(log)}; log: {log})")
                    bar.write(f"{labels[k]}: failed after {took}; log: {log}")
    finally:
        for process in running:
            process.terminate()
        for process in running:
            process.wait()
        bar.close()
    if failed:
        raise JobsFailed(f"{len(failed)} run(s) failed: " + "; ".join(failed))
