"""Converts face datasets between the formats the field uses.

    python -m data_pipelines.convert folder-to-rec FOLDER OUT_DIR     # train.rec/.idx, property
    python -m data_pipelines.convert rec-to-folder REC_DIR OUT_DIR    # folder per identity
    python -m data_pipelines.convert pairs-to-bin LFW_ROOT OUT.bin [--pairs pairs.txt]
    python -m data_pipelines.convert tfds-prepare FOLDER_OR_REC_DIR --name NAME --data-dir DIR

Image bytes are copied as stored in every direction, so a round trip gives the same files.
`tfds-prepare` needs the `tfds` extra; a source folder holding `train.rec` is read as RecordIO.
"""

from __future__ import annotations

import argparse
import os
import sys

from data_pipelines.sources import recordio_faces, verification_bin


def _tfds_prepare(args: argparse.Namespace) -> str:
    from data_pipelines.sources import tfds_faces

    rec, _ = recordio_faces.rec_paths(args.source)
    if os.path.isfile(rec):
        path = tfds_faces.prepare_recordio_dataset(args.source, name=args.name,
                                                   data_dir=args.data_dir)
    else:
        path = tfds_faces.prepare_folder_dataset(args.source, name=args.name,
                                                 data_dir=args.data_dir)
    return f"prepared TFDS dataset {args.name!r} in {path}"


def _run(args: argparse.Namespace) -> str:
    if args.command == "folder-to-rec":
        count = recordio_faces.folder_to_recordio(args.source, args.out)
        return f"wrote {count} images to {os.path.join(args.out, 'train.rec')}"
    if args.command == "rec-to-folder":
        count = recordio_faces.recordio_to_folder(args.source, args.out)
        return f"wrote {count} images under {args.out}"
    if args.command == "pairs-to-bin":
        pairs = args.pairs or os.path.join(args.source, "pairs.txt")
        count = verification_bin.pairs_to_bin(args.source, pairs, args.out)
        return f"wrote {count} pairs ({2 * count} images) to {args.out}"
    return _tfds_prepare(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.convert",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, source, out in (
            ("folder-to-rec", "folder with one sub-folder per identity", "output folder"),
            ("rec-to-folder", "folder holding train.rec/train.idx, or a .rec", "output folder"),
            ("pairs-to-bin", "LFW root (images/<name>/<name>_<n:04d>.jpg)", "output .bin")):
        command = commands.add_parser(name)
        command.add_argument("source", help=source)
        command.add_argument("out", help=out)
        if name == "pairs-to-bin":
            command.add_argument("--pairs", help="pairs file (default: LFW_ROOT/pairs.txt)")
    prepare = commands.add_parser("tfds-prepare")
    prepare.add_argument("source", help="folder per identity, or folder holding train.rec")
    prepare.add_argument("--name", required=True, help="TFDS dataset name (snake_case)")
    prepare.add_argument("--data-dir", required=True, help="TFDS data directory")
    args = parser.parse_args(argv)
    try:
        print(_run(args))
    except (OSError, ValueError, KeyError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
