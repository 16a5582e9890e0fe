"""`--jobs N`: a command's unlearning runs side by side in processes pinned to their cores."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cure_jax import job_pool

CORES = sorted(os.sched_getaffinity(0))
ROOT = pathlib.Path(__file__).resolve().parents[1]

# A stand-in for a command that offers `--jobs`: its plan's runs record the process they ran in
# and what they were given (or fail, where their folder asks for it) instead of unlearning.
FAKE_COMMAND = textwrap.dedent("""
    import json, os, pathlib, time
    from cure_jax import job_pool

    class FakePlan(job_pool.Plan):
        def run(self, k):
            folder = self.jobs[k]
            print(f"run {k} in process {os.getpid()}")
            if (folder / "hang").exists():  # until the test kills it
                (folder / "pid").write_text(str(os.getpid()))
                time.sleep(600)
            if (folder / "fail").exists():
                raise ValueError("the run failed")
            if (folder / "crash").exists():  # the worker process itself dies
                os._exit(9)
            record = {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0))}
            (folder / "metrics.json").write_text(json.dumps(record))

    def job_plan(argv):
        root = pathlib.Path(argv[0])
        jobs = tuple(root / f"run{k}" for k in range(int(argv[1])))
        return FakePlan(None, root, jobs, tuple(f"run {k}" for k in range(len(jobs))))
""")


def test_core_groups_split_the_cores_evenly_and_refuse_more_jobs_than_cores():
    assert job_pool.core_groups(2, [0, 1, 2, 3, 4]) == [(0, 1, 2), (3, 4)]
    assert job_pool.core_groups(3, [4, 5, 6]) == [(4,), (5,), (6,)]
    assert job_pool.core_groups(1, [0, 1]) == [(0, 1)]
    with pytest.raises(ValueError, match=r"--jobs 3 is more than the 2 CPU core\(s\).*at most 2"):
        job_pool.core_groups(3, [0, 1])
    with pytest.raises(ValueError, match="at least 1"):
        job_pool.core_groups(0, [0, 1])


def test_jobs_are_checked_against_the_cores_and_the_backend(monkeypatch):
    job_pool.check_jobs(1)
    with pytest.raises(ValueError, match=f"at most {len(CORES)}"):
        job_pool.check_jobs(len(CORES) + 1)
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    job_pool.check_jobs(1)  # one run at a time needs no CPU cores of its own
    if len(CORES) > 1:
        with pytest.raises(ValueError, match="on gpu every run would share one device"):
            job_pool.check_jobs(2)


@pytest.fixture
def fake_command(tmp_path, monkeypatch):
    (tmp_path / "fake_command.py").write_text(FAKE_COMMAND)
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers start with this process's path
    return tmp_path


class _Folder:
    """A stand-in for stages.Job where the pool reads only `.folder`."""

    def __init__(self, folder):
        self.folder = folder


def _plan(root, count):
    return job_pool.Plan(None, root, tuple(_Folder(root / f"run{k}") for k in range(count)),
                         tuple(f"run {k}" for k in range(count)))


def test_pending_runs_go_to_pinned_workers_and_finished_ones_are_left(fake_command):
    root = fake_command / "runs"
    plan = _plan(root, 5)
    (root / "run2").mkdir(parents=True)
    (root / "run2" / "metrics.json").write_text("{}")  # finished earlier: not run again
    workers = min(2, len(CORES))
    job_pool.run_pending("fake_command", [str(root), "5"], plan, workers, progress=False)
    assert (root / "run2" / "metrics.json").read_text() == "{}"
    groups = job_pool.core_groups(workers, CORES)
    records = {k: json.loads((root / f"run{k}" / "metrics.json").read_text())
               for k in (0, 1, 3, 4)}
    for k, record in records.items():
        assert tuple(record["cores"]) in groups  # pinned to one group, not every core
        assert f"run {k} in process {record['pid']}" in (
            root / f"run{k}" / job_pool.LOG_FILE).read_text()
    # Four runs, `workers` processes: each loaded the plan once and ran several runs.
    assert len({record["pid"] for record in records.values()}) == workers
    assert not (root / "run2" / job_pool.LOG_FILE).exists()


def test_a_failed_run_is_named_with_its_log_and_the_others_finish(fake_command):
    root = fake_command / "runs"
    plan = _plan(root, 3)
    (root / "run1").mkdir(parents=True)
    (root / "run1" / "fail").touch()
    with pytest.raises(job_pool.JobsFailed) as failure:
        job_pool.run_pending("fake_command", [str(root), "3"], plan, 1, progress=False)
    assert str(failure.value) == (f"1 run(s) failed: run 1 (error: the run failed; log: "
                                  f"{root / 'run1' / job_pool.LOG_FILE})")
    assert "error: the run failed" in (root / "run1" / job_pool.LOG_FILE).read_text()
    assert (root / "run0" / "metrics.json").exists() and (root / "run2" / "metrics.json").exists()


def test_workers_that_die_are_reported_with_the_runs_left_undone(fake_command):
    root = fake_command / "runs"
    plan = _plan(root, 2)
    (root / "run0").mkdir(parents=True)
    (root / "run0" / "crash").touch()
    with pytest.raises(job_pool.JobsFailed) as failure:
        job_pool.run_pending("fake_command", [str(root), "2"], plan, 1, progress=False)
    assert str(failure.value) == ("1 run(s) failed: the worker processes ended early (exit "
                                  "status 9); unfinished: run 0, run 1")


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie that nobody reaped has ended)."""
    try:
        return "\nState:\tZ" not in pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_workers_end_when_the_command_is_killed(fake_command):
    root = fake_command / "runs"
    count = min(2, len(CORES))
    for k in range(count):
        (root / f"run{k}").mkdir(parents=True)
        (root / f"run{k}" / "hang").touch()
    command = textwrap.dedent(f"""
        import pathlib, sys
        sys.path.insert(0, {str(fake_command)!r})
        from cure_jax import job_pool
        from tests.test_job_pool import _plan
        job_pool.run_pending("fake_command", [{str(root)!r}, "{count}"],
                             _plan(pathlib.Path({str(root)!r}), {count}), {count},
                             progress=False)
    """)
    parent = subprocess.Popen([sys.executable, "-c", command], cwd=ROOT)
    pid_files = [root / f"run{k}" / "pid" for k in range(count)]
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in pid_files) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(path.exists() for path in pid_files), "the workers never started their runs"
    pids = [int(path.read_text()) for path in pid_files]
    assert all(_alive(pid) for pid in pids)
    parent.kill()  # no chance to stop its workers itself
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    outlived = [pid for pid in pids if _alive(pid)]
    for pid in outlived:  # leave no process behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not outlived, "workers outlived the command"


def _comparable(metrics: dict) -> dict:
    """The metrics that do not name files or time the run."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, (int, float)) and not any(
                part in key for part in ("seconds", "sha256", "max_abs_diff"))}


@pytest.mark.slow
@pytest.mark.skipif(len(CORES) < 2, reason="--jobs 2 needs two CPU cores")
def test_compare_with_two_jobs_gives_the_serial_results(tmp_path, capsys):
    from cure_jax import compare

    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    args = ["--config", "smoke", "--methods", "neggrad,cure"]
    assert compare.main([*args, "--workdir", str(serial)]) == 0
    parallel.mkdir()
    for name in ("teacher", "config.json"):  # the same teacher: the runs alone differ
        copy = shutil.copytree if (serial / name).is_dir() else shutil.copy
        copy(serial / name, parallel / name)
    teacher_log = (parallel / "teacher" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert compare.main([*args, "--workdir", str(parallel), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "neggrad: started on core(s)" in out and "cure: finished in" in out
    assert (parallel / "teacher" / "metrics.jsonl").read_text() == teacher_log  # reused
    a = json.loads((serial / "comparison.json").read_text())
    b = json.loads((parallel / "comparison.json").read_text())
    assert list(b) == ["neggrad", "cure"]
    for name in b:
        # One core per process instead of two sums some products in another order: float
        # rounding apart, not bit for bit (a serial run on one core gives these bit for bit).
        assert _comparable(b[name]) == pytest.approx(_comparable(a[name]), rel=1e-4, abs=1e-5)
        assert "# " + name in (parallel / name / job_pool.LOG_FILE).read_text()
    assert compare.main([*args, "--workdir", str(parallel), "--jobs", "99"]) == 2
    assert "--jobs 99 is more than" in capsys.readouterr().err

    # ablate's runs go the same way, with its labels; full CURE is compare's run, reused.
    from cure_jax import ablate

    assert ablate.main(["--config", "smoke", "--workdir", str(parallel), "--ablations", "A1",
                        "--jobs", "2"]) == 0
    label = f"A1 {ablate.BY_KEY['A1'].name}"
    assert f"{label}: started on core(s)" in capsys.readouterr().out
    assert f"# {label} on smoke" in (parallel / "ablation" / "A1" / job_pool.LOG_FILE).read_text()
    assert (parallel / "ablation.md").exists()
