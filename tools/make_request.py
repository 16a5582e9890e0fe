"""Writes the photos of a forget request into a new folder, for checking
`python -m cure_jax.forget` where no real request exists.

    python tools/make_request.py --config default --identity 17 --output req17/
    python tools/make_request.py --config default --unseen 3 --output nobody/
    python tools/make_request.py --config lfw --identity Vladimir_Putin --output putin/

`--identity` writes `--count` held-out images of a training identity (a number, or a name of a
folder dataset): images of the person that the model never trained on, as the person would send.
`--unseen` writes photos of someone outside the training set: a freshly rendered synthetic
person (a number), or a person folder under `data.root` that the training set leaves out (a
name). The identity is printed, never written beside the photos: the request carries no label.
Give the photos to `python -m cure_jax.forget --photos DIR --aligned` (they are prepared like
the training images).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cure_jax import config as config_lib  # noqa: E402
from cure_jax.request_photos import write_holdout_photos, write_unseen_photos  # noqa: E402
from data_pipelines.datasets import load_face_data  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--identity", help="a training identity: number or name")
    who.add_argument("--unseen", help="someone outside the training set: number or name")
    parser.add_argument("--output", required=True, type=pathlib.Path)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="which held-out images")
    args = parser.parse_args(argv)
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    data = load_face_data(config.data, progress=False)
    try:
        if args.identity is not None:
            written = write_holdout_photos(data, args.identity, args.output, count=args.count,
                                           seed=args.seed)
        else:
            written = write_unseen_photos(config.data, data, args.unseen, args.output,
                                          count=args.count)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{len(written)} photos in {args.output}: " + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
