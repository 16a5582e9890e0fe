"""Bad input stops before any work with the key named; a failed start leaves the run folder as it
was; a non-finite loss keeps only good checkpoints and says how to go on; images are decoded as
they are; logs stay true after a kill."""

import dataclasses
import json
import pathlib
import typing
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cure_jax import config as config_lib
from cure_jax import loop, methods, stages, train
from cure_jax.checkpointing import Checkpointer
from cure_jax.config import ConfigError
from data_pipelines.datasets import load_face_data
from data_pipelines.sources.image_folder import decode_image
from data_pipelines.sources.lfw_pairs import read_pairs

SMOKE = config_lib.load_config("smoke")
HUGE = {int: 10**12, float: 1e30}


def _numeric_fields(config, prefix=""):
    """(key, plain type) of every int or float field of every section."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from _numeric_fields(value, f"{prefix}{field.name}.")
            continue
        kind = typing.get_type_hints(type(config))[field.name]
        if kind in (int, float):
            yield prefix + field.name, kind


@pytest.fixture(scope="module")
def smoke_data():
    return load_face_data(SMOKE.data, progress=False)


def test_every_numeric_field_at_zero_minus_one_and_huge_is_refused_clearly_or_accepted(
        smoke_data):
    """Each value either stops with an error that names its key, at parsing or in the checks a
    run makes before any work, or passes them all; nothing raises anything else."""
    fields = list(_numeric_fields(SMOKE))
    assert len(fields) > 80
    refused = 0
    for key, kind in fields:
        for value in (0, -1, HUGE[kind]):
            try:
                config = config_lib.apply_overrides(SMOKE, [f"{key}={value}"])
                if key.startswith("data."):
                    continue  # the data would change: parsing and validation are the checks
                mesh = stages.sharding.make_mesh(config.run.num_devices)
                stages.preflight(config, smoke_data, mesh)
                for name in methods.METHODS:
                    stages.request_split(stages.with_method(config, name), smoke_data)
            except (ConfigError, ValueError) as error:
                refused += 1
                assert key in str(error), (key, value, str(error))
    assert refused > 150


@pytest.mark.parametrize("override", [
    "teacher.epochs=0", "teacher.epochs=-1", "student.epochs=0", "student.epochs=-2",
    "teacher.batch_size=0", "student.batch_size=0", "run.checkpoint_every=0",
    "run.log_every=0", "teacher.batch_size=-8", "student.batch_size=-8"])
def test_bad_values_stop_at_parsing_and_touch_nothing(tmp_path, capsys, override):
    workdir = tmp_path / "run"
    assert train.main(["--config", "smoke", "--workdir", str(workdir), "--set", override]) == 2
    assert override.split("=")[0] in capsys.readouterr().err
    assert not workdir.exists()


def test_a_file_as_the_data_root_is_named(tmp_path, capsys):
    a_file = tmp_path / "pairs.txt"
    a_file.write_text("10\t300\n")
    workdir = tmp_path / "run"
    assert train.main(["--config", "smoke", "--workdir", str(workdir), "--set",
                       "data.source=folder", "--set", f"data.root={a_file}"]) == 1
    assert f"{a_file}' is not a directory" in capsys.readouterr().err
    assert not workdir.exists()


@pytest.mark.parametrize("override, message", [
    ("unlearn.method=nope", "unknown unlearning method 'nope'"),
    ("data.source=folder", "data.root"),
    ("teacher.batch_size=4096", "teacher.batch_size=4096 is more than the"),
    ("student.batch_size=1000", "student.batch_size=1000"),
])
def test_a_refused_start_writes_nothing(tmp_path, capsys, override, message):
    workdir = tmp_path / "run"
    assert train.main(["--config", "smoke", "--workdir", str(workdir), "--set", override]) == 1
    assert message in capsys.readouterr().err
    assert not (workdir / "config.json").exists()


def test_a_changed_method_setting_is_refused_before_work_and_overwrites_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    stages.write_folder_config(workdir, SMOKE)
    stages.write_folder_config(workdir / "cure", SMOKE)
    before = (workdir / "config.json").read_text()
    code = train.main(["--config", "smoke", "--workdir", str(workdir), "--set", "cure.margin=0.1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "cure.margin=0.3 there, 0.1 now" in err and "another --workdir" in err
    assert (workdir / "config.json").read_text() == before
    assert not (workdir / "teacher").exists()


# Non-finite losses.


class ToyState(NamedTuple):
    step: jax.Array
    params: jax.Array


def _toy_step(explode_at: int):
    """A step whose update explodes the parameters (to 1e35, still finite) at `explode_at`, so
    that the loss of the next step is infinite."""

    @jax.jit
    def step(state, batch, root_key):
        del root_key
        params = jnp.where(state.step + 1 == explode_at, 1e35, state.params + batch["x"])
        loss = jnp.sum(state.params**2) * 1e10
        finite = jnp.all(jnp.isfinite(params))
        return ToyState(state.step + 1, params), {"loss": loss, "params_finite": finite}

    return step


class _Batches:
    def __init__(self):
        self.position = 0

    def __next__(self):
        self.position += 1
        return {"x": np.ones(2, np.float32)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _phase(folder, step_fn, **run_settings):
    run = dataclasses.replace(SMOKE.run, log_every=1, checkpoint_every=2, max_to_keep=5,
                              **run_settings)
    state = ToyState(jnp.zeros((), jnp.int32), jnp.zeros(2, jnp.float32))
    return loop.run_phase(folder=folder, step_fn=step_fn, state=state, iterator=_Batches(),
                          num_steps=10, root_key=jax.random.key(0),
                          mesh=stages.sharding.make_mesh(1), run=run, desc="toy",
                          lr_key="teacher.lr")


def test_a_non_finite_loss_keeps_only_good_checkpoints_and_says_how_to_continue(tmp_path):
    with pytest.raises(loop.NonFiniteLossError) as caught:
        _phase(tmp_path, _toy_step(explode_at=7))
    message = str(caught.value)
    assert "loss became inf at step 8" in message
    # The state saved at step 6 is before the explosion: kept; nothing later exists.
    assert "last good checkpoint is step 6" in message
    assert "--set teacher.lr=<lower> --set run.restart_from=6" in message
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    assert checkpointer.all_steps() == [2, 4, 6]
    restored, _ = checkpointer.restore(6, ToyState(jnp.zeros((), jnp.int32), jnp.zeros(2)))
    assert np.all(np.abs(np.asarray(restored.params)) < 1e3)
    checkpointer.close()
    with pytest.raises(ValueError, match="restart_from=3: toy has no checkpoint at that step; "
                                         "its checkpoints are at steps 2, 4, 6"):
        _phase(tmp_path, _toy_step(explode_at=-1), restart_from=3)
    # Restarting from the good one with a step that behaves finishes the phase.
    final = _phase(tmp_path, _toy_step(explode_at=-1), restart_from=6)
    assert int(final.step) == 10


def test_an_explosion_at_a_checkpoint_step_deletes_that_checkpoint(tmp_path):
    with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step 4"):
        _phase(tmp_path, _toy_step(explode_at=6))
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [2, 4]


def test_restart_accepts_a_lower_learning_rate_in_the_same_folder(tmp_path):
    stages.write_folder_config(tmp_path, SMOKE)
    lower = config_lib.apply_overrides(SMOKE, ["teacher.lr=0.01"])
    with pytest.raises(ConfigError, match="teacher.lr"):
        stages.check_folder(tmp_path, lower, stages.TEACHER_KEYS)
    restarted = config_lib.apply_overrides(lower, ["run.restart_from=0"])
    stages.check_folder(tmp_path, restarted, stages.TEACHER_KEYS)
    other = config_lib.apply_overrides(restarted, ["teacher.momentum=0.5"])
    with pytest.raises(ConfigError, match="teacher.momentum"):
        stages.check_folder(tmp_path, other, stages.TEACHER_KEYS)


def test_a_log_killed_before_the_first_checkpoint_holds_no_step_twice(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n"
                                                    for s in (1, 2, 3)))
    _phase(tmp_path, _toy_step(explode_at=-1))
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


# Images and pairs files.


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 128], [65535, 257 * 64]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    decoded = decode_image(str(path))
    np.testing.assert_array_equal(decoded[..., 0], [[0, 128], [255, 64]])
    assert np.all(decoded[..., 0] == decoded[..., 2])


def _tiny_folder(root: pathlib.Path, *, bad: bool, side: int = 40):
    rng = np.random.default_rng(0)
    for person in ("Ann", "Ben", "Cy"):
        (root / person).mkdir(parents=True)
        for number in range(1, 6):
            image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / person / f"{person}_{number:04d}.png")
    if bad:
        (root / "Ben" / "Ben_0003.png").write_bytes(b"not an image")


def test_skipped_images_are_left_out_counted_and_listed(tmp_path, capsys):
    _tiny_folder(tmp_path / "faces", bad=True)
    data_config = dataclasses.replace(SMOKE.data, source="folder", root=str(tmp_path / "faces"),
                                      on_bad_image="skip", holdout_identities=0.0)
    data = load_face_data(data_config, progress=False)
    assert data.skipped_files == [str(tmp_path / "faces" / "Ben" / "Ben_0003.png")]
    assert len(data.records) == 14
    assert "1 unreadable image file(s) left out" in capsys.readouterr().out
    config = dataclasses.replace(SMOKE, data=data_config,
                                 teacher=dataclasses.replace(SMOKE.teacher, batch_size=8))
    stages.start(config, tmp_path / "run", [])
    listed = (tmp_path / "run" / "skipped_images.txt").read_text().split()
    assert listed == data.skipped_files


def test_small_images_are_counted_in_a_warning(tmp_path, capsys):
    _tiny_folder(tmp_path / "faces", bad=False, side=12)
    data_config = dataclasses.replace(SMOKE.data, source="folder", root=str(tmp_path / "faces"),
                                      holdout_identities=0.0)
    load_face_data(data_config, progress=False)
    assert "15 of 15 images" in capsys.readouterr().out


def test_a_binary_pairs_file_is_named(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=f"{path}: not a text pairs file"):
        read_pairs(path)


def test_a_file_as_workdir_and_a_bad_tuple_item_are_named(tmp_path, capsys):
    path = tmp_path / "a_file"
    path.write_text("x")
    assert train.main(["--config", "smoke", "--workdir", str(path)]) == 1
    assert f"--workdir {path} is a file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="teacher.milestones='a': not a valid float"):
        config_lib.apply_overrides(SMOKE, ["teacher.milestones=a,b"])
