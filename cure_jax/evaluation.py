"""Evaluation of a backbone (teacher or student) and of an unlearning run, as pure functions of
embeddings that `cure_jax.embeddings.embed_eval_sets` computed once per backbone.

Labels live here: the unlearning methods never import this module.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from cure_jax.embeddings import EvalEmbeddings
from cure_jax.losses.common import l2_normalize
from cure_jax.metrics.mia import attack_accuracy, attack_features
from cure_jax.metrics.retrieval import cluster_compactness, retrieval_metrics
from cure_jax.metrics.unlearning import class_logits, layer_distance, unlearning_summary
from cure_jax.metrics.verification import pair_distances, verify
from data_pipelines.splits import RequestSplit


def unit(x_NxD: np.ndarray) -> np.ndarray:
    """Unit rows as a NumPy array (`losses.common.l2_normalize`, the package's one rule)."""
    return np.asarray(l2_normalize(jnp.asarray(x_NxD)))


def identity_accuracy(emb_NxD: np.ndarray, labels_N: np.ndarray, centres_CxD: np.ndarray) -> float:
    """Top-1 accuracy of the nearest class centre by cosine (the margin head without margin)."""
    predictions = np.argmax(unit(emb_NxD) @ unit(centres_CxD).T, axis=-1)
    return float(np.mean(predictions == labels_N))


def verification_metrics(plain_NxD: np.ndarray, mirrored_NxD: np.ndarray | None,
                         verification) -> dict:
    """arcface_torch verification on `verification` pairs (10 folds, TAR@FAR=1e-3) from the raw
    embeddings of its images; with the flip test when the mirrored images' embeddings are given
    (the raw sum of both views is normalised)."""
    raw = plain_NxD if mirrored_NxD is None else plain_NxD + mirrored_NxD
    unit_emb = unit(raw)
    dist = pair_distances(unit_emb[verification.idx_a], unit_emb[verification.idx_b])
    result = verify(dist, verification.issame, folds_P=verification.folds)
    return {"verification_accuracy": result.accuracy,
            "verification_std": result.accuracy_std,
            "tar_at_far_1e-3": result.tar_at_far,
            "verification_pairs": result.num_pairs}


def others_pairs(verification, forget_names) -> np.ndarray | None:
    """bool [P]: the pairs that show none of `forget_names`, or None when the verification set
    does not name its people (`Verification.names`)."""
    if verification.names is None:
        return None
    forgotten = np.isin(np.asarray(verification.names), list(forget_names))
    labels = np.asarray(verification.source.labels)
    return ~(forgotten[labels[verification.idx_a]] | forgotten[labels[verification.idx_b]])


def verification_subset(verification, keep_P: np.ndarray):
    """`verification` with only the pairs where `keep_P` holds (each keeps its fold)."""
    folds = verification.folds
    if folds is None:  # 10 contiguous folds, made explicit before pairs leave them
        folds = np.arange(len(keep_P)) * 10 // len(keep_P)
    return dataclasses.replace(verification, idx_a=verification.idx_a[keep_P],
                               idx_b=verification.idx_b[keep_P],
                               issame=verification.issame[keep_P], folds=folds[keep_P])


def verification_sets(data) -> dict[str, tuple[str, object]]:
    """{suffix of the metric names: (set name in `EvalEmbeddings`, `Verification`)}: the main
    set (no suffix) and each `.bin` set ("@<file>")."""
    sets = {} if data.verification is None else {"": ("verification", data.verification)}
    for name, verification in data.bin_verifications.items():
        sets[f"@{name}"] = (f"bin:{name}", verification)
    return sets


def backbone_metrics(emb: EvalEmbeddings, data, centres_CxD) -> dict:
    """Held-out identity accuracy (unseen images of training identities) and verification on
    every verification set."""
    metrics = {}
    if len(data.holdout_indices):
        labels = data.records.labels[data.holdout_indices]
        metrics["holdout_accuracy"] = identity_accuracy(emb.holdout, labels, centres_CxD)
    for suffix, (name, verification) in verification_sets(data).items():
        result = verification_metrics(*emb.sets[name], verification)
        metrics.update({f"{key}{suffix}": value for key, value in result.items()})
    return metrics


class UnlearningEvaluation(NamedTuple):
    metrics: dict  # flat floats, see `evaluate_unlearning`
    labels: np.ndarray  # [N] identity of each pool image (training identities, all images)
    is_forget: np.ndarray  # bool [N]: the image belongs to a forget identity
    before: np.ndarray  # [N, D] unit teacher embeddings of the pool
    after: np.ndarray  # [N, D] unit student embeddings of the pool


def retrieval_summary(unit_NxD: np.ndarray, labels_N: np.ndarray, is_forget_N: np.ndarray,
                      when: str) -> dict:
    """Leave-one-out R@1, R@5, mAP and CS of forget and of retain identities over one pool."""
    out = {}
    for side, queries in (("forget", is_forget_N), ("retain", ~is_forget_N)):
        result = retrieval_metrics(unit_NxD, labels_N, query_mask_N=queries)
        out[f"{side}_r1_{when}"] = result.r1
        out[f"{side}_r5_{when}"] = result.r5
        out[f"{side}_map_{when}"] = result.map
        out[f"{side}_cs_{when}"] = cluster_compactness(unit_NxD, labels_N, label_mask=queries)
    return out


# Read through the teacher's class centres: meaningless for a student with its own space.
HEAD_SCORED_AFTER = (
    "forget_acc_after", "retain_acc_after", "ues", "conf_drop_forget", "conf_drop_retain",
    "entropy_increase_forget", "entropy_increase_retain", "activation_distance", "completeness",
    "membership_recall_after", "forget_holdout_acc_after", "retain_holdout_acc_after",
    "mia_after")


class _Rows(NamedTuple):
    """Rows of a request's records in the embedding arrays."""

    forget: np.ndarray  # into EvalEmbeddings.train
    retain: np.ndarray
    forget_holdout: np.ndarray  # into EvalEmbeddings.holdout
    retain_holdout: np.ndarray


def _rows(split: RequestSplit, data) -> _Rows:
    return _Rows(np.searchsorted(data.train_indices, split.forget),
                 np.searchsorted(data.train_indices, split.retain),
                 np.searchsorted(data.holdout_indices, split.forget_holdout),
                 np.searchsorted(data.holdout_indices, split.retain_holdout))


def evaluate_unlearning(*, teacher: EvalEmbeddings, student: EvalEmbeddings, teacher_params,
                        student_params, centres_CxD, split: RequestSplit, data, config,
                        own_embedding_space: bool = False) -> UnlearningEvaluation:
    """Everything the papers report about one student against its teacher.

    Args:
      teacher, student: each backbone's embeddings of the evaluation sets.
      teacher_params, student_params: their parameters (for the layer distance).
      centres_CxD: the teacher's frozen margin-head class centres.
      split: the request's records.
      own_embedding_space: the student does not descend from the teacher (retraining); the
        after-values of `HEAD_SCORED_AFTER` are left out and `head_scored` is 0.

    Returns:
      The metrics, a flat dict of floats: `unlearning_summary` (accuracies, UES, confidence,
      entropy, activation distance, completeness, membership recall), layer distance, held-out
      accuracies of forget and retain identities, retrieval (R@1, R@5, mAP, CS of forget and
      retain identities, over every image of the training identities), membership inference
      accuracy (forget training images against held-out images of the forget identities) and
      verification, each before and after; verification on the pairs that show no forgotten
      person ("verification_others_*") where the set names its people; and the pool's unit
      embeddings before and after.
    """
    scale = config.model.scale
    labels = data.records.labels
    rows = _rows(split, data)
    models = {"before": teacher, "after": student}

    def logits(emb_NxD):
        return class_logits(jnp.asarray(emb_NxD), jnp.asarray(centres_CxD), scale=scale)

    metrics = unlearning_summary(
        logits(teacher.train[rows.forget]), logits(student.train[rows.forget]),
        logits(teacher.train[rows.retain]), logits(student.train[rows.retain]),
        jnp.asarray(labels[split.forget]), jnp.asarray(labels[split.retain]),
        alpha=config.eval.ues_alpha, membership_threshold=config.eval.membership_threshold)
    metrics["layer_distance"] = float(layer_distance(teacher_params, student_params))
    pool = {when: [emb.train[rows.forget], emb.train[rows.retain]]
            for when, emb in models.items()}
    pool_indices = [split.forget, split.retain]
    for name, indices, holdout_rows in (
            ("forget_holdout", split.forget_holdout, rows.forget_holdout),
            ("retain_holdout", split.retain_holdout, rows.retain_holdout)):
        if len(indices) == 0:
            continue
        pool_indices.append(indices)
        for when, emb in models.items():
            pool[when].append(emb.holdout[holdout_rows])
            metrics[f"{name}_acc_{when}"] = identity_accuracy(emb.holdout[holdout_rows],
                                                              labels[indices], centres_CxD)
    if len(split.forget_holdout) >= 5:
        # Members: the forget training images; non-members: never-trained images of the same
        # people. Features from the teacher's identity head, before and after.
        for when, parts in pool.items():
            members = attack_features(np.asarray(logits(parts[0])), labels[split.forget])
            nonmembers = attack_features(np.asarray(logits(parts[2])),
                                         labels[split.forget_holdout])
            metrics[f"mia_{when}"] = attack_accuracy(members, nonmembers)
    pool_labels = labels[np.concatenate(pool_indices)]
    is_forget = np.isin(pool_labels, split.forget_identities)
    units = {when: unit(np.concatenate(parts)) for when, parts in pool.items()}
    for when, emb in units.items():
        metrics.update(retrieval_summary(emb, pool_labels, is_forget, when))
    forget_names = [data.identity_names[i] for i in split.forget_identities]
    for suffix, (name, verification) in verification_sets(data).items():
        # The forgotten people's own pairs should fail after unlearning; the pairs of everyone
        # else ("others") measure what unlearning cost the people it should not touch.
        keep = others_pairs(verification, forget_names)
        for when, emb in models.items():
            result = verification_metrics(*emb.sets[name], verification)
            metrics[f"verification_{when}{suffix}"] = result["verification_accuracy"]
            metrics[f"tar_at_far_{when}{suffix}"] = result["tar_at_far_1e-3"]
            if keep is not None:
                others = verification_metrics(*emb.sets[name], verification_subset(
                    verification, keep))
                metrics[f"verification_others_{when}{suffix}"] = others["verification_accuracy"]
        if keep is not None:
            metrics[f"verification_others_pairs{suffix}"] = int(keep.sum())
    if own_embedding_space:
        for key in HEAD_SCORED_AFTER:
            metrics.pop(key, None)
    metrics["head_scored"] = float(not own_embedding_space)
    metrics["forget_images"] = len(split.forget)
    metrics["retain_images"] = len(split.retain)
    metrics["forget_identities"] = len(split.forget_identities)
    return UnlearningEvaluation(metrics, pool_labels, is_forget, units["before"], units["after"])
