"""What the command lines share: the run arguments (`--config`, `--set`, `--workdir`), loading
the config they describe, and the errors that end a run with a message instead of a traceback."""

from __future__ import annotations

import argparse
import pathlib
import sys

from cure_jax import compile_cache
from cure_jax import config as config_lib
from cure_jax.loop import NonFiniteLossError

# Errors a user can cause (a bad value, a missing file, a request that cannot be served): printed
# as one line, exit status 1.
RUN_ERRORS = (config_lib.ConfigError, NonFiniteLossError, FileNotFoundError, NotADirectoryError,
              ValueError)


def run_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser with the arguments every run command takes."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default",
                        help="a configs/<name>.py file path, or a bundled config name")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field, e.g. teacher.lr=0.05")
    parser.add_argument("--workdir", default=None, help="run folder (default: runs/<config name>)")
    return parser


def add_seeds_argument(parser: argparse.ArgumentParser) -> None:
    """`--seeds 0,1,2`: run every unlearning once per `unlearn.seed` (cure_jax/seeds.py)."""
    parser.add_argument("--seeds", default=None, metavar="K,K,...",
                        help="run each unlearning once per seed (unlearn.seed: the request draw "
                             "and the unlearning run; one teacher) in <workdir>/seed<k>/, and "
                             "report mean ± standard deviation; default: one run with the "
                             "config's seed, in <workdir>/")


def load_run_config(args) -> tuple[config_lib.Config, pathlib.Path]:
    """The config of `--config` with the `--set` overrides applied, and the run folder; turns on
    the compile cache it names (`run.compile_cache`), before the command compiles anything.

    Raises:
      ConfigError: an unknown config, key or value, or a compile cache folder that cannot be
        created.
    """
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    try:
        compile_cache.use(config.run.compile_cache)
    except ValueError as error:
        raise config_lib.ConfigError(str(error)) from error
    return config, pathlib.Path(args.workdir or pathlib.Path("runs") / config.name)


def fail(error: Exception, status: int) -> int:
    print(f"error: {error}", file=sys.stderr)
    return status
