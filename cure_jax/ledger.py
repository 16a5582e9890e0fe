"""The ledger of forget requests: `requests.json` in the run folder.

Requests are served in sequence: request k starts from the student of request k - 1 (the
teacher for the first). The ledger records, for every request, its photos (names and sha256),
the search (statistic, threshold, the training images found, by record index), the method, the
student it produced with its digests, the report and the times. An entry is written once every
check has passed ("started": the method may be training) and completed when the student and its
report are saved ("served"). The file is replaced atomically: a killed process never leaves half
of it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import re

import numpy as np

from cure_jax.export import file_sha256

LEDGER_NAME = "requests.json"
STARTED, SERVED = "started", "served"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_folder(workdir: pathlib.Path, number: int) -> pathlib.Path:
    """Where request `number` (1-based) keeps its method run, student and report."""
    return pathlib.Path(workdir) / "requests" / f"{number:04d}"


def read(workdir: pathlib.Path) -> list[dict]:
    """Every request recorded in `workdir`, in order (none when there is no ledger).

    Raises:
      ValueError: the ledger exists but is not one this package wrote.
    """
    path = pathlib.Path(workdir) / LEDGER_NAME
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())["requests"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a ledger of forget requests ({err}); move it away "
                         "to start a new sequence") from err
    numbers = [entry.get("number") for entry in entries]
    if numbers != list(range(1, len(entries) + 1)):
        raise ValueError(f"{path}: requests are numbered {numbers}, not 1, 2, ...")
    return entries


def write(workdir: pathlib.Path, entries: list[dict]) -> None:
    """Replaces the ledger with `entries`, atomically."""
    path = pathlib.Path(workdir) / LEDGER_NAME
    partial = path.with_suffix(".json.partial")
    text = json.dumps({"requests": entries}, indent=1)
    # Lists of record indices on one line each: the ledger stays readable.
    text = re.sub(r"\[([\d,\s]+)\]",
                  lambda m: "[" + ", ".join(re.split(r"[,\s]+", m.group(1).strip())) + "]", text)
    partial.write_text(text + "\n")
    partial.replace(path)


def find(entries: list[dict], key: str) -> dict | None:
    """The request whose photos have the digest set `key`, if one was recorded."""
    return next((entry for entry in entries if entry["photos_key"] == key), None)


def forgotten_rows(entries: list[dict], *, before: int) -> list[int]:
    """Training records forgotten by the requests numbered below `before`."""
    return sorted({row for entry in entries if entry["number"] < before
                   for row in entry["found"]})


def upsert(workdir: pathlib.Path, entry: dict) -> list[dict]:
    """Writes `entry` as request `entry["number"]`: replaces it, or appends the next one."""
    entries = read(workdir)
    number = entry["number"]
    if number <= len(entries):
        entries[number - 1] = entry
    elif number == len(entries) + 1:
        entries.append(entry)
    else:
        raise ValueError(f"request {number} cannot follow {len(entries)} recorded requests")
    write(workdir, entries)
    return entries


def folder_sha256(folder: pathlib.Path) -> str:
    """sha256 over a folder's files: each one's path relative to the folder and its contents,
    in sorted order (a checkpoint's digest)."""
    folder = pathlib.Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def weights_sha256(tree) -> str:
    """sha256 over a model's arrays in tree order (each leaf's path, dtype, shape and bytes):
    the same weights give the same digest whatever file holds them."""
    import jax

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def new_entry(number: int, photos, found, config, start_from: str, command: str,
              workdir: pathlib.Path, aligned: bool) -> dict:
    """The ledger entry of a request about to be served (status "started").

    Args:
      photos: the `RequestPhotos`; found: the `forget_stage.Search`; config: the request's
        sized config; start_from: the name of the model it starts from.
    """
    folder = request_folder(workdir, number)
    return {
        "number": number, "status": STARTED, "started": now(), "finished": None,
        "command": command, "photos_folder": str(photos.folder.resolve()), "aligned": aligned,
        "photos": [{"file": f, "sha256": h} for f, h in zip(photos.files, photos.sha256,
                                                             strict=True)],
        "photos_key": photos.key, "method": config.unlearn.method, "from": start_from,
        "statistic": config.forget.statistic, "far": config.forget.far,
        "threshold": found.calibration.threshold, "found_count": int(len(found.found)),
        "found": [int(i) for i in found.found],
        "folder": str(folder.relative_to(workdir)),
        "student": str((folder / "student").relative_to(workdir)),
        "report": str((folder / "report.html").relative_to(workdir)),
    }


def provenance(workdir: pathlib.Path, folder: pathlib.Path, teacher, student) -> dict:
    """Digests of the teacher, the student and the request's config."""
    checkpoints = workdir / "teacher" / "checkpoints"
    steps = sorted((p for p in checkpoints.glob("*") if p.name.isdigit()),
                   key=lambda p: int(p.name)) if checkpoints.is_dir() else []
    teacher_folder = steps[-1] if steps else None
    return {
        "teacher_checkpoint": (str(teacher_folder.relative_to(workdir)) if teacher_folder
                               else "-"),
        "teacher_checkpoint_sha256": (folder_sha256(teacher_folder) if teacher_folder
                                      else "-"),
        "teacher_weights_sha256": weights_sha256(tuple(teacher)),
        "student_checkpoint_sha256": folder_sha256(folder / "student"),
        "student_weights_sha256": weights_sha256(tuple(student)),
        "config": str((folder / "config.json").relative_to(workdir)),
        "config_sha256": file_sha256(folder / "config.json"),
    }
