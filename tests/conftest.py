"""Test-wide setup: importing the package sets its XLA flags before any backend starts."""

import atexit
import os
import shutil
import tempfile

# One compile cache for the whole session, the command lines it starts included (they inherit the
# environment, and `run.compile_cache=auto` keeps the folder it names): a program that tests
# compile again, in this process or in another, is loaded instead. Its own folder, removed at the
# end, so that no test reads what an earlier session or a user's runs left. The pytest-xdist
# workers (pyproject.toml runs tests in parallel) inherit the folder of the process that started
# them, which alone removes it.
_CACHE_VARIABLE = "CURE_JAX_TEST_COMPILE_CACHE"
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and os.environ.get(_CACHE_VARIABLE):
    _CACHE = os.environ[_CACHE_VARIABLE]
else:
    _CACHE = tempfile.mkdtemp(prefix="cure_jax_test_compile_cache_")
    os.environ[_CACHE_VARIABLE] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
if _WORKER:
    # On a GPU each worker would otherwise reserve 75% of its memory at start.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

import cure_jax  # noqa: E402, F401

jax.config.update("jax_compilation_cache_dir", _CACHE)  # in case jax was imported before

# Tests compare computations that should agree to float32 tolerance (padded against unpadded
# batches, 4 devices against 1). GPUs run float32 matrix products in TF32 by default, whose
# rounding differs between such shapes by ~1e-4; full precision keeps the comparisons about the
# maths. A no-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most eight.

    Much of the suite is XLA compiling, which keeps one core busy, so on two cores two workers
    finish it about 1.3x sooner than one process (README). Each worker holds its own JAX runtime
    and compiled programs (up to 5 GB here), hence the cap.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


# Tests marked `slow` (more than ~10 s on two cores: whole command lines, end-to-end runs) take most
# of the suite's time: on two cores of an Intel Xeon the whole suite took 13.5 minutes and the rest
# alone 5.5 (27-33 minutes in all on two AMD EPYC cores with AVX2 only). A plain `python -m pytest`
# leaves them out so that the suite stays quick to rerun while working; CI runs them (`CI=true`), as
# does `--slow`, a path or test named on the command line, or an explicit `-m` expression (which
# then alone decides).
_TRUE = {"1", "true", "yes", "on"}


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the tests marked slow (always on when the environment sets CI=true)",
    )


def _runs_slow_tests(config) -> bool:
    return (
        config.getoption("--slow")
        or os.environ.get("CI", "").strip().lower() in _TRUE
        or bool(config.getoption("markexpr"))
        or config.args_source == config.ArgsSource.ARGS
    )


def pytest_report_header(config):
    if _runs_slow_tests(config):
        return "tests marked slow: included"
    return "tests marked slow: left out (run them with --slow, or CI=true as CI does)"


def pytest_terminal_summary(terminalreporter, config):
    # Also under -q, which hides the header, and under pytest-xdist, whose summary does not count
    # what the workers deselected.
    if not _runs_slow_tests(config):
        terminalreporter.write_line(
            "tests marked slow were left out: run them with --slow (CI=true runs them too)"
        )


def pytest_collection_modifyitems(config, items):
    if _runs_slow_tests(config):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
