"""The compile cache of the command lines (`run.compile_cache`): where it goes, how it is turned
off, and that a second run loads what the first compiled and computes the same."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from cure_jax import compile_cache, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_enable_compilation_cache")


@pytest.fixture
def jax_cache_options():
    """Puts JAX's cache options back as they were (the session's cache, tests/conftest.py)."""
    before = {name: getattr(jax.config, name) for name in CACHE_OPTIONS}
    yield
    for name, value in before.items():
        jax.config.update(name, value)


def test_a_named_folder_is_created_and_used(tmp_path, jax_cache_options):
    folder = tmp_path / "a" / "b"
    assert compile_cache.use(str(folder)) == folder
    assert folder.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(folder)


def test_auto_keeps_the_folder_the_environment_chose(tmp_path, jax_cache_options):
    chosen = jax.config.jax_compilation_cache_dir
    assert chosen  # tests/conftest.py chose one, through JAX_COMPILATION_CACHE_DIR
    assert compile_cache.use("auto") == pathlib.Path(chosen)
    assert jax.config.jax_compilation_cache_dir == chosen


def test_auto_without_a_choice_uses_the_user_cache_folder(tmp_path, monkeypatch,
                                                          jax_cache_options):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = tmp_path / "xdg" / "cure_jax" / "jax"
    assert compile_cache.default_folder() == expected
    assert compile_cache.use("auto") == expected
    assert expected.is_dir() and jax.config.jax_compilation_cache_dir == str(expected)


def test_off_turns_the_cache_off_and_auto_leaves_it_off(jax_cache_options):
    assert compile_cache.use("off") is None
    assert not jax.config.jax_enable_compilation_cache
    assert compile_cache.use("auto") is None
    assert not jax.config.jax_enable_compilation_cache


def test_a_folder_that_cannot_be_created_is_a_clear_error(tmp_path, capsys, jax_cache_options):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="run.compile_cache=.*cannot create the folder"):
        compile_cache.use(str(blocker / "cache"))
    code = train.main(["--config", "smoke", "--workdir", str(tmp_path / "w"),
                       "--set", f"run.compile_cache={blocker / 'cache'}"])
    assert code == 2
    assert "run.compile_cache=" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def _teacher_run(workdir: pathlib.Path, cache: pathlib.Path):
    """The smoke teacher through `python -m cure_jax.train`, in a fresh process."""
    command = [sys.executable, "-m", "cure_jax.train", "--config", "smoke", "--stage", "teacher",
               "--workdir", str(workdir), "--set", f"run.compile_cache={cache}",
               "--set", "run.progress=false"]
    # JAX_LOG_COMPILES: JAX names each program it loads from the cache on stderr.
    # JAX writes only programs that took at least a second to compile, so on a machine where a
    # program compiles in about a second one run writes it and the other does not; with no
    # threshold every program is written, however fast the machine.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def _loaded(run) -> int:
    return run.stderr.count("Persistent compilation cache hit for")


def _results(workdir: pathlib.Path) -> tuple[list, dict]:
    """Every logged training metric but the timings, and the teacher's evaluation."""
    lines = [json.loads(line) for line in
             (workdir / "teacher" / "metrics.jsonl").read_text().splitlines()]
    logged = [{k: v for k, v in line.items() if not k.endswith("_per_s")} for line in lines]
    evaluation = json.loads((workdir / "teacher" / "eval.json").read_text())
    return logged, {k: v for k, v in evaluation.items() if not k.endswith("_seconds")}


@pytest.mark.slow
def test_a_second_run_loads_what_the_first_compiled_and_computes_the_same(tmp_path):
    cache = tmp_path / "cache"
    first = _teacher_run(tmp_path / "first", cache)
    assert first.returncode == 0, first.stderr
    entries = sorted(path.name for path in cache.iterdir())
    assert any(name.startswith("jit_step-") for name in entries)
    assert _loaded(first) == 0
    second = _teacher_run(tmp_path / "second", cache)
    assert second.returncode == 0, second.stderr
    if "Error reading persistent compilation cache entry" in second.stderr:
        pytest.skip("XLA:CPU refused the programs it cached on this CPU (jax-ml/jax#38445)")
    # Every program loaded, none compiled anew (it would have been written as a new entry).
    assert _loaded(second) == len(entries)
    assert sorted(path.name for path in cache.iterdir()) == entries
    assert _results(tmp_path / "second") == _results(tmp_path / "first")
