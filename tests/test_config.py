"""Config files, `--set` overrides and their errors."""

import json

import pytest

from cure_jax import config as config_lib
from cure_jax.config import Config, ConfigError


def test_override_coerces_by_field_type():
    config = config_lib.apply_overrides(Config(), [
        "teacher.lr=0.05", "teacher.epochs=3", "eval.flip=false", "data.root=/x",
        "teacher.milestones=2,4.5", "data.crop_box=1,2,3,4"])
    assert config.teacher.lr == 0.05 and isinstance(config.teacher.epochs, int)
    assert config.eval.flip is False and config.data.root == "/x"
    assert config.teacher.milestones == (2.0, 4.5) and config.data.crop_box == (1, 2, 3, 4)
    assert Config().teacher.lr != 0.05  # frozen defaults are untouched


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: .*lr.*momentum"):
        config_lib.apply_overrides(Config(), ["teacher.learning_rate=1"])
    with pytest.raises(ConfigError,
                       match="valid keys: bad_teacher, baselines, boundary_shrink, cure, data"):
        config_lib.apply_overrides(Config(), ["optimiser.lr=1"])


def test_bad_values_and_choices_are_errors():
    with pytest.raises(ConfigError, match="not a valid int"):
        config_lib.apply_overrides(Config(), ["teacher.epochs=many"])
    with pytest.raises(ConfigError, match="arcface, cosface"):
        config_lib.apply_overrides(Config(), ["model.head=sphereface"])
    with pytest.raises(ConfigError, match="key=value"):
        config_lib.apply_overrides(Config(), ["teacher.lr"])


def test_bundled_configs_load_by_name_and_path(tmp_path):
    assert config_lib.load_config("smoke").name == "smoke"
    path = tmp_path / "mine.py"
    path.write_text("from cure_jax.config import Config\n"
                    "def get_config():\n    return Config(name='mine')\n")
    assert config_lib.load_config(str(path)).name == "mine"
    with pytest.raises(ConfigError, match="bundled configs: .*default.*smoke"):
        config_lib.load_config("no_such_config")


def test_default_long_differs_from_the_default_only_in_the_teacher_schedule():
    # Its teacher must stay comparable with the default's: same faces, model and recipe.
    long = config_lib.load_config("default_long")
    assert config_lib.differences(config_lib.load_config("default"), long) == [
        "name", "teacher.epochs", "teacher.milestones"]
    assert (long.teacher.epochs, long.teacher.milestones) == (24, (15.0, 21.0))


def test_json_round_trip_and_differences(tmp_path):
    config = config_lib.apply_overrides(Config(), ["teacher.milestones=1,2"])
    config_lib.write_config(config, tmp_path / "c.json")
    again = config_lib.from_dict(json.loads((tmp_path / "c.json").read_text()))
    assert again == config
    assert config_lib.differences(Config(), config) == ["teacher.milestones"]
