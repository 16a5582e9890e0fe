"""Finding one person's images in an unlabelled training set from a few photos of them.

Every photo and every training image is embedded with the flip test (the raw embeddings of the
image and of its mirror image summed, then normalised). The photos' unit embeddings `z_1..z_P`
give one score per training image `x`, by the statistic `forget.statistic`:

- "mean" (default): `cos(t, x)` with the template `t = unit(z_1 + ... + z_P)`, the normalised
  mean of the photos' unit embeddings;
- "max": `max_p cos(z_p, x)`, the best single photo.

An image is found when its score is strictly above a threshold calibrated, for that statistic
and that number of photos, on the model's own verification images (people it was not trained
on, with their identity labels): templates of P images of one verification person are scored
against every image of every other person (impostor comparisons), and the threshold is the
smallest value that at most `far` of those comparisons exceed. So `far` is the expected share of
another person's images that a request of P photos finds: about `far * N` false matches in a
training set of N images.

Whether the person is in the training set at all is judged by a stricter threshold from the same
calibration, at `forget.confirm_far`: at least `forget.min_images` training images must score
above it. The images found are those above the search threshold; the confirmation asks that some
of them are far above it. Photos of someone outside the training set who resembles a training
person find that person's images just above the search threshold (with the pretrained teacher on
LFW, the mean score of such finds is 0.41-0.47 against a threshold of 0.40; a person's own images
score 0.79-0.86), and are refused.

Whether the images found are one person's is judged through the photos (`photo_groups`): each
photo is compared alone with the images found, at the threshold of a one-photo request (the
verification pairs' threshold at `far`), and photos that match a common image belong together.
When the photos fall into more than one group, the images found show more than one person.

Legend: P photos, N training images, V verification images, D width, T templates.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, NamedTuple

import jax.numpy as jnp
import numpy as np

from cure_jax.fields import Count, Fraction, Range
from cure_jax.losses.common import l2_normalize

STATISTICS = ("mean", "max")
# A threshold is trusted when at least this many impostor comparisons lie above it.
MIN_IMPOSTORS_ABOVE = 10


@dataclasses.dataclass(frozen=True)
class ForgetConfig:
    """A forget request served from photos (`python -m cure_jax.forget`)."""

    # Share of another person's images that a request may find (the search's false accepts).
    far: Annotated[float, Range(0.0, 1.0, low_open=True)] = 1e-3
    # Stricter rate of the confirmation threshold: a request is served only when at least
    # `min_images` training images score above it (the person is in the training set); it is
    # never looser than `far`.
    confirm_far: Annotated[float, Range(0.0, 1.0, low_open=True)] = 1e-4
    statistic: Literal["mean", "max"] = "mean"  # how the photos' similarities combine
    templates: Count = 4000  # calibration templates drawn from the verification people
    min_images: Annotated[int, Range(2)] = 2  # fewer images found (or confirmed): refused
    # A request that finds more than this share of the training set is refused.
    max_share: Annotated[float, Range(0.0, 1.0, low_open=True)] = 0.5
    # The method's budget for one request: student steps, each one forget batch of at most
    # `student.batch_size` found images beside one retain batch.
    steps: Count = 200
    # CURE's forget clusters K_f over one person's images (`cure.forget_clusters` caps it).
    forget_clusters: Count = 4
    # Share of the found images each cluster must hold at least (fewer images: fewer clusters).
    min_cluster_share: Fraction = 0.1


def flip_unit(plain_NxD: np.ndarray, mirrored_NxD: np.ndarray | None) -> np.ndarray:
    """Flip-test unit embeddings: `unit(plain + mirrored)` (plain alone without mirrors)."""
    raw = plain_NxD if mirrored_NxD is None else plain_NxD + mirrored_NxD
    return np.asarray(l2_normalize(jnp.asarray(raw, jnp.float32)))


def scores(photos_PxD: np.ndarray, gallery_NxD: np.ndarray, *, statistic: str) -> np.ndarray:
    """The request's score of every gallery image (see the module docstring).

    Args:
      photos_PxD: unit embeddings of the photos.
      gallery_NxD: unit embeddings of the images to score.
      statistic: "mean" or "max".

    Returns:
      float32 [N].
    """
    if statistic == "mean":
        template_D = np.asarray(l2_normalize(jnp.asarray(photos_PxD.sum(axis=0))))
        return gallery_NxD @ template_D
    if statistic == "max":
        return np.max(gallery_NxD @ photos_PxD.T, axis=1)
    raise ValueError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")


class Calibration(NamedTuple):
    """A threshold calibrated on verification people.

    Attributes:
      threshold: an image is accepted when its score is strictly above it.
      far: the target false-accept rate.
      measured_far: share of the impostor comparisons above the threshold (<= far).
      tar: share of genuine comparisons above it (a template against its person's other
        images): what the search finds of an unseen person at this threshold.
      impostors: number of impostor comparisons.
      templates: number of templates drawn.
      people: verification people with enough images to draw templates from.
      template_size: photos per template (the request's P).
      statistic: "mean" or "max".
    """

    threshold: float
    far: float
    measured_far: float
    tar: float
    impostors: int
    templates: int
    people: int
    template_size: int
    statistic: str


def _template_subsets(labels_V: np.ndarray, size: int, total: int, seed: int):
    """(members [T, size] verification rows, person label [T]): random subsets of `size` images
    of one person each, spread evenly over the people with more than `size` images."""
    people, counts = np.unique(labels_V, return_counts=True)
    people = people[counts > size]  # one image at least is left for the genuine comparisons
    if len(people) < 2:
        raise ValueError(
            f"calibrating a request of {size} photo(s) needs verification people with at least "
            f"{size + 1} images each, two or more; the verification set has {len(people)}")
    rng = np.random.default_rng(seed)
    per_person = max(1, total // len(people))
    members, owners = [], []
    for person in people:
        rows = np.flatnonzero(labels_V == person)
        for _ in range(per_person):
            members.append(rng.choice(rows, size, replace=False))
            owners.append(person)
    return np.stack(members), np.asarray(owners), len(people)


def calibrate(unit_VxD: np.ndarray, labels_V: np.ndarray, *, template_size: int, far: float,
              statistic: str, templates: int = 4000, seed: int = 0,
              chunk: int = 256) -> Calibration:
    """The threshold at which requests of `template_size` photos accept at most `far` of the
    impostor comparisons among the verification people.

    Args:
      unit_VxD: flip-test unit embeddings of the verification images.
      labels_V: their identities.
      template_size: photos per request (P >= 1).
      far: target false-accept rate in (0, 1].
      statistic: "mean" or "max".
      templates: templates to draw in all (evenly over the people).
      seed: seeds the draws.
      chunk: templates scored at a time (memory: chunk * V floats).

    Raises:
      ValueError: too few verification people, or too few impostor comparisons to resolve
        `far` (fewer than `MIN_IMPOSTORS_ABOVE / far`).
    """
    (calibration,) = calibrate_rates(unit_VxD, labels_V, template_size=template_size,
                                     fars=(far,), statistic=statistic, templates=templates,
                                     seed=seed, chunk=chunk)
    return calibration


def calibrate_rates(unit_VxD: np.ndarray, labels_V: np.ndarray, *, template_size: int,
                    fars: tuple[float, ...], statistic: str, templates: int = 4000,
                    seed: int = 0, chunk: int = 256) -> tuple[Calibration, ...]:
    """`calibrate` at each of `fars` from one set of comparisons (same arguments and errors)."""
    members_TxP, owners_T, people = _template_subsets(np.asarray(labels_V), template_size,
                                                      templates, seed)
    impostor, genuine = [], []
    for lo in range(0, len(members_TxP), chunk):
        for rows_P, owner in zip(members_TxP[lo:lo + chunk], owners_T[lo:lo + chunk],
                                 strict=True):
            row_scores = scores(unit_VxD[rows_P], unit_VxD, statistic=statistic)
            same = labels_V == owner
            same[rows_P] = False  # the template's own images are neither
            impostor.append(row_scores[labels_V != owner])
            genuine.append(row_scores[same])
    impostor_I = np.sort(np.concatenate(impostor))[::-1]
    genuine_G = np.concatenate(genuine)
    calibrations = []
    for far in fars:
        above = int(np.floor(far * impostor_I.size))
        if above < MIN_IMPOSTORS_ABOVE:
            raise ValueError(
                f"the verification set gives {impostor_I.size} impostor comparisons for requests "
                f"of {template_size} photo(s), too few to calibrate a false-accept rate of "
                f"{far:g} (it needs {int(np.ceil(MIN_IMPOSTORS_ABOVE / far))}); raise the rate "
                "or add verification people")
        # The `above`-th highest impostor score: at most `above` comparisons exceed it.
        threshold = float(impostor_I[above])
        calibrations.append(Calibration(
            threshold=threshold, far=far,
            measured_far=float(np.mean(impostor_I > threshold)),
            tar=float(np.mean(genuine_G > threshold)), impostors=int(impostor_I.size),
            templates=len(members_TxP), people=people, template_size=template_size,
            statistic=statistic))
    return tuple(calibrations)


def photo_groups(photos_PxD: np.ndarray, gallery_NxD: np.ndarray, *, threshold: float
                 ) -> tuple[list[list[int]], np.ndarray]:
    """Which photos show the same person, judged through the gallery (the training set).

    Each photo searches the gallery alone (`cos(z_p, x) > threshold`, the threshold of a
    one-photo request). Photos whose matches share a gallery image are linked; the groups are
    the connected sets of linked photos. A photo that matches no image alone gives no evidence
    either way and is left out of the groups. Photos of one person find images of that person
    and fall into one group; photos of people who are both in the gallery fall into two.

    Args:
      photos_PxD: unit embeddings of the photos.
      gallery_NxD: unit embeddings of the images searched.
      threshold: the one-photo threshold.

    Returns:
      (groups: lists of photo indices, by first photo; matches: int [P] images each photo
      matches alone).
    """
    matches_PxN = (photos_PxD @ gallery_NxD.T) > threshold
    shared_PxP = (matches_PxN.astype(np.int32) @ matches_PxN.T.astype(np.int32)) > 0
    unassigned = [p for p in range(len(photos_PxD)) if matches_PxN[p].any()]
    groups = []
    while unassigned:
        group = [unassigned.pop(0)]
        frontier = list(group)
        while frontier:
            linked = [q for q in unassigned if shared_PxP[frontier, q].any()]
            unassigned = [q for q in unassigned if q not in linked]
            group += linked
            frontier = linked
        groups.append(sorted(group))
    return groups, matches_PxN.sum(axis=1)
