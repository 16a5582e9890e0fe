"""Serving a forget request from photos: the stage behind `python -m cure_jax.forget`.

A request is served against the model of the run folder as it stands: the teacher for the first
request, the student of request k - 1 for request k. In order:

1. The photos are hashed; a request whose photos were served before is answered from the
   ledger and nothing changes; one that was interrupted resumes.
2. The photos are aligned (or taken as prepared) and embedded with the model (flip test).
3. The search threshold is calibrated on the model's verification people for this many photos
   at `forget.far`; the training images above it are the request's forget set. At least
   `forget.min_images` of them must also pass the stricter confirmation threshold
   (`forget.confirm_far`), and the photos, each compared alone with those images, must show
   one person (`search.photo_groups`).
   Nothing of the identity labels is read up to here.
4. The method (`unlearn.method`) runs with the images found as its forget set and every other
   training image not forgotten before as its retain set, sized to the request
   (`request_config`); its student is saved in `requests/<k>/student`.
5. The audit (`cure_jax.audit_report`) and the ledger entry close the request.

Every check of steps 1-3 (and the method's own check) happens before anything is written: a
refused request changes nothing on disk.
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

import numpy as np

from cure_jax import audit_report, ledger, methods, sharding, stages
from cure_jax import config as config_lib
from cure_jax.checkpointing import Checkpointer
from cure_jax.embeddings import EvalEmbeddings, cached_eval_embeddings, embed_pass
from cure_jax.models.backbone import Backbone
from cure_jax.request_photos import load_request_photos, photo_digests, request_key
from cure_jax.search import Calibration, calibrate_rates, flip_unit, photo_groups, scores
from data_pipelines.datasets import load_face_data
from data_pipelines.pipelines import ArraySource
from data_pipelines.splits import RequestSplit


class RequestRefused(ValueError):
    """A request that cannot be served; nothing was changed."""


class Model(NamedTuple):
    """The model a request starts from."""

    name: str  # "teacher" or "request k"
    backbone: Backbone
    embeddings: EvalEmbeddings  # every evaluation set; training images in both orientations


class Thresholds(NamedTuple):
    """A request's thresholds, calibrated on the model's verification people."""

    search: Calibration  # for P photos at `forget.far`: the images found
    confirm: Calibration  # for P photos at `forget.confirm_far`: the person is in the set
    photo: Calibration  # for one photo at `forget.far`: the photos' agreement


class Search(NamedTuple):
    """What the search found, label-free."""

    found: np.ndarray  # record indices (into data.records) of the images found, sorted
    candidates: np.ndarray  # record indices searched (training images not forgotten before)
    scores: np.ndarray  # float32 [N] score of every training image (data.train_indices order)
    photos: np.ndarray  # [P, D] flip-test unit embeddings of the photos
    thresholds: Thresholds
    confirmed: int  # images found that also score above the confirmation threshold
    groups: list  # lists of photo indices whose matches alone share training images
    photo_matches: np.ndarray  # int [P] training images each photo matches alone

    @property
    def calibration(self) -> Calibration:
        return self.thresholds.search


def check_config(config) -> None:
    """Refuses, before any work, a config under which the method would read identity labels.

    Raises:
      ConfigError: naming the key.
    """
    methods.get_method(config.unlearn.method)
    if config.dispersion.groups == "labels":
        raise config_lib.ConfigError("dispersion.groups=labels: a forget request carries no "
                                     "labels; use dispersion.groups=clusters")
    if config.baselines.labels == "true":
        raise config_lib.ConfigError("baselines.labels=true: a forget request carries no "
                                     "labels; use baselines.labels=pseudo")


def open_run(config, workdir: pathlib.Path):
    """(mesh, data) of a run folder whose teacher is finished; writes nothing.

    Raises:
      ConfigError: no finished teacher in `workdir`, or one made with other settings.
    """
    if not (workdir / "teacher" / "eval.json").exists():
        raise config_lib.ConfigError(
            f"{workdir} holds no finished teacher; train it first: python -m cure_jax.train "
            f"--config {config.name} --workdir {workdir} --stage teacher")
    stages.check_folder(workdir, config, stages.TEACHER_KEYS)
    mesh = sharding.make_mesh(config.run.num_devices)
    data = load_face_data(config.data, progress=config.run.progress)
    stages.preflight(config, data, mesh)
    if data.verification is None:
        raise config_lib.ConfigError(
            "the search is calibrated on the model's verification people, and this data has "
            "none: set data.pairs (folders) or data.num_verification_identities (synthetic)")
    return mesh, data


def starting_model(workdir: pathlib.Path, number: int, teacher_run: stages.TeacherRun) -> Model:
    """The teacher for request 1; the student of request `number - 1` otherwise.

    Raises:
      ValueError: the earlier student or its embeddings are missing.
    """
    if number == 1:
        return Model("teacher", teacher_run.backbone, teacher_run.embeddings)
    folder = ledger.request_folder(workdir, number - 1)
    backbone = load_student(folder, teacher_run.backbone)
    path = folder / "embeddings.npz"
    if not path.exists():
        raise ValueError(f"{path} is missing: request {number - 1} did not finish")
    with np.load(path) as cache:
        embeddings = EvalEmbeddings.from_arrays({key: cache[key] for key in cache.files})
    return Model(f"request {number - 1}", backbone, embeddings)


def save_student(folder: pathlib.Path, student: Backbone, number: int) -> None:
    """Saves the student's arrays (Orbax) in `folder/student`, once."""
    checkpointer = Checkpointer(folder / "student", max_to_keep=1)
    try:
        if checkpointer.latest_step() is None:
            checkpointer.save(0, student, {"request": number})
    finally:
        checkpointer.close()


def load_student(folder: pathlib.Path, like: Backbone) -> Backbone:
    """The student saved in `folder/student`, restored into the structure of `like`.

    Raises:
      ValueError: no student was saved there.
    """
    checkpointer = Checkpointer(folder / "student", max_to_keep=1)
    try:
        if checkpointer.latest_step() is None:
            raise ValueError(f"{folder / 'student'} holds no saved student")
        state, _ = checkpointer.restore(checkpointer.latest_step(), Backbone(*like))
    finally:
        checkpointer.close()
    return Backbone(*state)


def model_embeddings(model_backbone: Backbone, teacher_run, data, config, mesh,
                     path: pathlib.Path) -> EvalEmbeddings:
    """A student's embeddings of every evaluation set, training images in both orientations
    (the next request's targets), kept at `path`."""
    return cached_eval_embeddings(path, teacher_run.embed, model_backbone, data,
                                  batch_size=config.eval.batch_size, mesh=mesh,
                                  flip_test=config.eval.flip, progress=config.run.progress,
                                  who="student")


def embed_photos(images: np.ndarray, backbone: Backbone, teacher_run, config, mesh) -> np.ndarray:
    """Flip-test unit embeddings [P, D] of the photos."""
    source = ArraySource(images, np.zeros(len(images), np.int32))

    def embed(mirrored: bool):
        return embed_pass(teacher_run.embed, backbone.params, backbone.batch_stats, source,
                          batch_size=config.eval.batch_size, mesh=mesh, mirrored=mirrored)

    return flip_unit(embed(False), embed(True) if config.eval.flip else None)


def unit_sets(embeddings: EvalEmbeddings, config) -> tuple[np.ndarray, np.ndarray]:
    """Flip-test unit embeddings of the training images and of the verification images."""
    train = flip_unit(embeddings.train, embeddings.train_flipped if config.eval.flip else None)
    plain, mirrored = embeddings.sets["verification"]
    return train, flip_unit(plain, mirrored if config.eval.flip else None)


def calibrations(config, data, model: Model, count: int) -> Thresholds:
    """The thresholds of requests of `count` photos (search and confirmation) and of one photo
    (each photo alone), calibrated on the model's verification people."""
    _, verification_VxD = unit_sets(model.embeddings, config)
    labels_V = data.verification.source.labels
    forget = config.forget
    kwargs = dict(statistic=forget.statistic, templates=forget.templates, seed=config.run.seed)
    # The confirmation is never looser than the search.
    fars = (forget.far, min(forget.confirm_far, forget.far))
    try:
        search_at, confirm_at = calibrate_rates(verification_VxD, labels_V,
                                                template_size=count, fars=fars, **kwargs)
        # One photo: the agreement threshold is the search threshold (no second pass).
        (single,) = (search_at,) if count == 1 else calibrate_rates(
            verification_VxD, labels_V, template_size=1, fars=fars[:1], **kwargs)
    except ValueError as err:
        raise RequestRefused(f"{err} (forget.far={forget.far:g}, forget.confirm_far="
                             f"{forget.confirm_far:g})") from err
    return Thresholds(search_at, confirm_at, single)


def search(config, data, model: Model, photos_PxD: np.ndarray, forgotten: list[int], *,
           calibrated: Thresholds | None = None) -> Search:
    """Calibrates (unless `calibrated` is given), checks that the photos show one person, and
    finds their training images among those not `forgotten` (record indices).

    Raises:
      RequestRefused: the photos disagree, or match no image, one image, too few images
        closely enough, or most of the set.
    """
    thresholds = calibrated or calibrations(config, data, model, len(photos_PxD))
    train_NxD, _ = unit_sets(model.embeddings, config)
    candidate = ~np.isin(data.train_indices, forgotten)
    result_scores = scores(photos_PxD, train_NxD, statistic=config.forget.statistic)
    found_rows = np.flatnonzero(candidate & (result_scores > thresholds.search.threshold))
    confirmed = int(np.sum(result_scores[found_rows] > thresholds.confirm.threshold))
    # One person: the photos are grouped by the images found that each one matches alone.
    groups, photo_matches = photo_groups(photos_PxD, train_NxD[found_rows],
                                         threshold=thresholds.photo.threshold)
    result = Search(data.train_indices[found_rows], data.train_indices[candidate],
                    result_scores, photos_PxD, thresholds, confirmed, groups, photo_matches)
    refuse_unservable(result, config)
    return result


def refuse_unservable(result: Search, config) -> None:
    """Raises RequestRefused for a request that cannot be served (module docstring)."""
    forget = config.forget
    threshold = result.calibration.threshold
    at = (f"at the false-accept rate {forget.far:g} (threshold {threshold:.3f}, "
          f"{forget.statistic} of {len(result.photos)} photo(s))")
    if len(result.groups) > 1:
        groups = " and ".join("photos " + ", ".join(str(p + 1) for p in group)
                              for group in result.groups)
        raise RequestRefused(
            f"the photos do not show one person: {groups} match different training images "
            f"(each photo alone, threshold {result.thresholds.photo.threshold:.3f} at the "
            f"false-accept rate {forget.far:g}). Send photos of one person only")
    count, total = len(result.found), len(result.candidates)
    expected = forget.far * total
    if count == 0:
        best = float(np.max(result.scores))
        raise RequestRefused(
            f"no training image matches these photos {at}; the best score is {best:.3f}. The "
            "model holds no image of this person to forget")
    if count < forget.min_images:
        raise RequestRefused(
            f"only {count} training image(s) match these photos {at}: fewer than "
            f"forget.min_images={forget.min_images}. About {expected:.1f} of the {total} images "
            "match someone by chance at this rate, so so few cannot be told from chance, and a "
            "method cannot unlearn a person from them")
    if count > forget.max_share * total:
        raise RequestRefused(
            f"{count} of the {total} training images match these photos {at}, more than "
            f"forget.max_share={forget.max_share:g} of them: the photos do not single out one "
            "person, and forgetting them would unlearn most of the model")
    if result.confirmed < forget.min_images:
        confirm = result.thresholds.confirm
        raise RequestRefused(
            f"no training image matches these photos closely enough: {count} image(s) score "
            f"above the search threshold {threshold:.3f}, but {result.confirmed} above the "
            f"confirmation threshold {confirm.threshold:.3f} (false-accept rate "
            f"{confirm.far:g}), fewer than forget.min_images={forget.min_images}. A person in "
            "the training set finds their own images well above the search threshold; these "
            "are most likely the images of someone who resembles them. The model holds no "
            "image of this person to forget (a stricter or looser check: --set "
            "forget.confirm_far=...)")


def request_config(config, num_forget: int, mesh):
    """The config sized to a request of `num_forget` images (`stages.sized_for_images`):
    `forget.steps` steps, at most `forget.forget_clusters` CURE clusters."""
    try:
        return stages.sized_for_images(
            config, num_forget, mesh, steps=config.forget.steps,
            max_clusters=min(config.cure.forget_clusters, config.forget.forget_clusters))
    except config_lib.ConfigError:
        raise
    except ValueError as err:
        raise RequestRefused(str(err)) from err


def request_split(data, found: np.ndarray, forgotten: list[int]) -> RequestSplit:
    """The method's view: forget = the images found; retain = every other training image not
    forgotten before. No labels."""
    return stages.image_split(data, found, forgotten)


def train_student(config, folder: pathlib.Path, mesh, data, teacher_run, model: Model,
                  split: RequestSplit) -> Backbone:
    """Runs the method on the request from `model` (resuming in `folder/<method>`)."""
    start_from = teacher_run._replace(backbone=model.backbone, embeddings=model.embeddings)
    context = stages.unlearn_context(config, folder / config.unlearn.method, mesh, data,
                                     start_from, split)
    return methods.get_method(config.unlearn.method).run(context)


def plan(entries: list[dict], key: str) -> tuple[int, dict | None]:
    """(the request's number, its ledger entry when it was recorded before).

    Raises:
      RequestRefused: the last request was interrupted and these are other photos.
    """
    recorded = ledger.find(entries, key)
    if entries and entries[-1]["status"] == ledger.STARTED and recorded is not entries[-1]:
        last = entries[-1]
        raise RequestRefused(
            f"request {last['number']} ({last['photos_folder']}) was interrupted; run it again "
            "with the same photos to finish it before a new request")
    return (recorded["number"] if recorded else len(entries) + 1), recorded


def check_method(config, split: RequestSplit) -> None:
    """The method's own check of the sized request, as a refusal."""
    spec = methods.get_method(config.unlearn.method)
    if spec.check is not None:
        try:
            spec.check(config, len(split.forget), len(split.retain))
        except ValueError as err:
            raise RequestRefused(f"{config.unlearn.method} cannot serve this request as sized "
                                 f"({err})") from err


class Checked(NamedTuple):
    """A request that passed every check, ready to be served."""

    number: int
    recorded: dict | None  # its ledger entry when it was interrupted before
    entries: list[dict]  # the ledger
    photos: object  # RequestPhotos
    mesh: object
    data: object  # FaceData
    teacher_run: stages.TeacherRun
    model: Model  # the model it starts from
    found: Search
    config: object  # sized to the request
    split: RequestSplit
    folder: pathlib.Path


def check_request(config, workdir: pathlib.Path, photos_folder: pathlib.Path, *,
                  aligned: bool) -> Checked | dict:
    """Every check of a request, writing nothing: the served entry when these photos were
    served before, else the `Checked` request.

    Raises:
      RequestRefused, PhotoError, ConfigError: see `serve`.
    """
    check_config(config)
    _, digests = photo_digests(photos_folder)
    entries = ledger.read(workdir)
    number, recorded = plan(entries, request_key(digests))
    if recorded is not None and recorded["status"] == ledger.SERVED:
        return recorded
    photos = load_request_photos(photos_folder, image_size=config.data.image_size,
                                 crop_box=config.data.crop_box, aligned=aligned)
    mesh, data = open_run(config, workdir)
    teacher_run = stages.teacher_stage(config, workdir, mesh, data)
    model = starting_model(workdir, number, teacher_run)
    photo_units = embed_photos(photos.images, model.backbone, teacher_run, config, mesh)
    forgotten = ledger.forgotten_rows(entries, before=number)
    found = search(config, data, model, photo_units, forgotten)
    sized = request_config(config, len(found.found), mesh)
    split = request_split(data, found.found, forgotten)
    check_method(sized, split)
    folder = ledger.request_folder(workdir, number)
    stages.check_folder(folder, sized, ("",))
    if recorded is not None and recorded["found"] != found.found.tolist():
        raise config_lib.ConfigError(f"request {number} was started on other images; rerun it "
                                     "with the settings it started with")
    return Checked(number, recorded, entries, photos, mesh, data, teacher_run, model, found,
                   sized, split, folder)


def serve(config, workdir: pathlib.Path, photos_folder: pathlib.Path, *, aligned: bool,
          command: str) -> tuple[dict, bool]:
    """Serves one forget request (module docstring).

    Returns:
      (the request's ledger entry, whether it was served now: False when those photos were
      served before, in which case nothing changed).

    Raises:
      RequestRefused, PhotoError: the request cannot be served; nothing was changed.
      ConfigError: a setting that cannot serve requests, or no finished teacher.
    """
    checked = check_request(config, workdir, photos_folder, aligned=aligned)
    if isinstance(checked, dict):
        return checked, False
    c = checked
    batch = c.config.student.batch_size
    print(f"request {c.number}: {len(c.found.found)} of {len(c.found.candidates)} training "
          f"images found at the false-accept rate {c.config.forget.far:g}; "
          f"{c.config.unlearn.method} unlearns them from the {c.model.name} "
          f"({c.config.student.epochs} epochs of {len(c.found.found) // batch} batches of "
          f"{batch}: {c.config.student.epochs * (len(c.found.found) // batch)} steps)")
    # Every check has passed: from here on the request writes.
    entry = c.recorded or ledger.new_entry(c.number, c.photos, c.found, c.config, c.model.name,
                                           command, workdir, aligned)
    ledger.upsert(workdir, entry)
    stages.write_folder_config(c.folder, c.config)
    student = train_student(c.config, c.folder, c.mesh, c.data, c.teacher_run, c.model, c.split)
    save_student(c.folder, student, c.number)
    student_emb = model_embeddings(student, c.teacher_run, c.data, c.config, c.mesh,
                                   c.folder / "embeddings.npz")
    photos_after = embed_photos(c.photos.images, student, c.teacher_run, c.config, c.mesh)
    entry = {**entry, "provenance": ledger.provenance(workdir, c.folder, c.teacher_run.backbone,
                                                         student)}
    metrics = audit_report.request_metrics(
        config=c.config, data=c.data, teacher_run=c.teacher_run, model=c.model,
        student=student, student_emb=student_emb, search=c.found, photos_after=photos_after,
        photos=c.photos, entries=[*c.entries[:c.number - 1], entry],
        centres=class_centres(c.teacher_run))
    (c.folder / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    entry = {**entry, "status": ledger.SERVED, "finished": ledger.now()}
    audit_report.write_report(c.folder, metrics, entry, audit_report.history(workdir, c.number),
                              data=c.data, photos=c.photos)
    ledger.upsert(workdir, entry)
    return entry, True


def class_centres(teacher_run):
    """The teacher's identity-head class centres, or None for a teacher without one."""
    try:
        return np.asarray(teacher_run.teacher.class_centres())
    except (AttributeError, KeyError, TypeError):
        return None
