"""Which tests a run selects: plain runs leave the slow ones out, CI runs every test."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _collected(*args: str, ci: str | None) -> list[str]:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    # No path named, so that the run counts as a plain one: the other files are ignored (which
    # saves importing them) and `-k` picks the two files by name.
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
               "-n", "0", "--ignore-glob=*/test_[!fl]*.py", "-k", "test_forget_cli or test_ledger",
               *args]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_a_plain_run_leaves_out_slow_tests_and_ci_runs_them():
    plain = _collected(ci=None)
    in_ci = _collected(ci="true")
    # Every test of test_forget_cli.py is marked slow; test_ledger.py has none.
    assert plain and all("test_ledger.py" in test for test in plain)
    assert any("test_forget_cli.py" in test for test in in_ci)
    assert set(plain) < set(in_ci)
    assert _collected("--slow", ci="false") == in_ci
