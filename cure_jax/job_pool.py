"""A command's unlearning runs side by side in worker processes (`--jobs N`).

A compare or an ablation is a list of unlearning runs that share one teacher and nothing else.
XLA:CPU's steps gain 1.5-1.8x from a second core, not 2x (docs/PERFORMANCE.md, "One core
against two"), so N runs at once, each on 1/N of the cores, can finish a list sooner than one
run at a time on all of them. The command trains (or reuses) the teacher first; then N worker
processes start (`spawn`), each pins itself to its cores before JAX starts its backend, loads
the data and the teacher once, and takes the next unfinished run from a shared queue until none
is left, writing its run folder as the serial command would, with the run's output in
`<run folder>/log.txt`. The command then collects every run from its folder, as it reuses
finished runs on any rerun.

A command that offers `--jobs` defines `job_plan(argv) -> Plan`: its config, run folder, jobs
and their labels, the same in every process; the plan runs a job in a worker.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import importlib
import multiprocessing
import os
import pathlib
import queue
import signal
import sys
import time
import traceback
from collections.abc import Sequence

from tqdm import tqdm

LOG_FILE = "log.txt"
_PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclasses.dataclass
class Plan:
    """What a command runs, from its arguments, and how a worker runs one of them."""

    config: object  # the command's Config
    workdir: pathlib.Path  # its run folder, with the teacher
    jobs: tuple  # stages.Job of every run, finished ones included
    labels: tuple  # each run's name in messages and report titles

    @functools.cached_property
    def reloaded(self):
        """The data and the teacher, loaded once per worker process."""
        from cure_jax import stages

        return stages.reload(self.config, self.workdir)

    def run(self, k: int) -> None:
        """Runs job `k` into its folder, as the command itself would."""
        from cure_jax import stages

        job, (mesh, data, teacher_run) = self.jobs[k], self.reloaded
        stages.unlearn_stage(job.config, self.workdir, mesh, data, teacher_run,
                             stages.request_split(job.config, data), folder=job.folder,
                             label=self.labels[k])


class JobsFailed(RuntimeError):
    """One or more runs ended with an error; the message names each with its log."""


def add_argument(parser: argparse.ArgumentParser) -> None:
    """`--jobs N`."""
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="unlearning runs at once, each in a worker process on 1/N of the "
                             "CPU cores (CPU only; default 1: one after another in this "
                             "process). Each run's output goes to <run folder>/log.txt")


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


@contextlib.contextmanager
def _output_to(path: pathlib.Path):
    """This process's stdout and stderr, Python's and the C libraries', appended to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _run_one(module: str, argv: Sequence[str], k: int, loaded: dict) -> str | None:
    """Runs job `k` of the command's plan in this process; None, or the line that says why it
    failed (the traceback goes to the run's log). `loaded` keeps the plan, with its data and
    teacher, from this process's first run on."""
    from cure_jax import cli

    try:
        if not loaded:
            loaded["plan"] = importlib.import_module(module).job_plan(argv)
        loaded["plan"].run(k)
        return None
    except cli.RUN_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return f"error: {error}"
    except Exception as error:  # noqa: BLE001  (any failure is this run's, reported with its log)
        traceback.print_exc()
        return f"{type(error).__name__}: {error}"


def _end_with(parent: int) -> None:
    """Asks Linux to end this process when the command's process ends, however it ends (a kill
    leaves no chance to stop the workers), so that no run goes on writing its folder unseen
    while the command is run again."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it ended before the request
        os._exit(1)


def _worker(module: str, argv: Sequence[str], cores: tuple[int, ...], folders, tasks,
            events, parent: int) -> None:
    """A worker process: pins itself to `cores` (first, before JAX starts: XLA:CPU sizes its
    thread pool by the cores the process may use), then runs the runs `tasks` hands it until it
    hands None, each with its output in its folder's log, telling `events` of each."""
    _end_with(parent)
    os.sched_setaffinity(0, cores)
    loaded: dict = {}
    while (k := tasks.get()) is not None:
        events.put(("started", k, cores))
        folders[k].mkdir(parents=True, exist_ok=True)
        with _output_to(folders[k] / LOG_FILE):
            failure = _run_one(module, argv, k, loaded)
        events.put(("ended", k, failure))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def run_pending(module: str, argv: Sequence[str], plan: Plan, jobs: int, *,
                progress: bool) -> None:
    """Runs every run of `plan` whose folder holds no `metrics.json` in `jobs` worker processes
    of `module` (which defines `job_plan(argv)`); waits for all.

    A run that fails does not stop the others; interrupting this process stops every run (each
    resumes from its checkpoints on the next command).

    Raises:
      JobsFailed: naming each failed run, the line that says why and its log.
    """
    folders = [job.folder for job in plan.jobs]
    pending = [k for k, folder in enumerate(folders) if not (folder / "metrics.json").exists()]
    if not pending:
        return
    groups = core_groups(min(jobs, len(pending)), sorted(os.sched_getaffinity(0)))
    context = multiprocessing.get_context("spawn")  # never fork a process that runs JAX
    tasks, events = context.Queue(), context.Queue()
    for k in [*pending, *[None] * len(groups)]:
        tasks.put(k)
    # No progress bars in the logs: the command shows one over the runs.
    worker_argv = [*argv, "--set", "run.progress=false"]
    workers = [context.Process(target=_worker, args=(module, worker_argv, cores, folders, tasks,
                                                     events, os.getpid()))
               for cores in groups]
    started: dict[int, float] = {}
    reported: set[int] = set()  # runs whose worker told their end
    failed = []
    ended = False
    bar = tqdm(total=len(pending), desc=f"runs, {len(groups)} at a time", unit="run",
               disable=not progress)
    try:
        for worker in workers:
            worker.start()
        while len(reported) < len(pending):
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                if not any(worker.is_alive() for worker in workers):
                    failed.append("the worker processes ended early (exit status "
                                  f"{', '.join(str(w.exitcode) for w in workers)}); unfinished: "
                                  + ", ".join(plan.labels[k] for k in pending
                                              if k not in reported))
                    break
                continue
            kind, k, detail = event
            label, log = plan.labels[k], folders[k] / LOG_FILE
            if kind == "started":
                started[k] = time.perf_counter()
                bar.write(f"{label}: started on core(s) {','.join(map(str, detail))}; "
                          f"output in {log}")
                continue
            reported.add(k)
            bar.update(1)
            took = _duration(time.perf_counter() - started[k])
            if detail is None:
                bar.write(f"{label}: finished in {took}")
            else:
                failed.append(f"{label} ({detail}; log: {log})")
                bar.write(f"{label}: failed after {took}; log: {log}")
        ended = True
    finally:
        for worker in workers:  # done, they leave on the queue's None; interrupted, stopped
            if worker.is_alive() and not ended:
                worker.terminate()
            worker.join()
        bar.close()
    if failed:
        raise JobsFailed(f"{len(failed)} run(s) failed: " + "; ".join(failed))
