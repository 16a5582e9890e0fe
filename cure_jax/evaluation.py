"""Evaluation of a backbone (teacher or student): identity accuracy and verification.

Labels live here: the unlearning methods never import this module.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.embeddings import embed_source
from cure_jax.metrics.mia import attack_accuracy, attack_features
from cure_jax.metrics.retrieval import cluster_compactness, retrieval_metrics
from cure_jax.metrics.unlearning import layer_distance, unlearning_summary
from cure_jax.metrics.verification import pair_distances, verify
from cure_jax.models.heads import cosine_logits
from data_pipelines.pipelines import SubsetSource
from data_pipelines.splits import forget_retain_split


def unit(x_NxD: np.ndarray) -> np.ndarray:
    return x_NxD / np.maximum(np.linalg.norm(x_NxD, axis=-1, keepdims=True), 1e-12)


def identity_accuracy(emb_NxD: np.ndarray, labels_N: np.ndarray, centres_CxD: np.ndarray) -> float:
    """Top-1 accuracy of the nearest class centre by cosine (the margin head without margin)."""
    predictions = np.argmax(unit(emb_NxD) @ unit(centres_CxD).T, axis=-1)
    return float(np.mean(predictions == labels_N))


def verification_metrics(embed, params, batch_stats, verification, *, batch_size: int, mesh,
                         flip: bool, progress: bool = False) -> dict:
    """arcface_torch verification on `verification` pairs (flip test, 10 folds, TAR@FAR=1e-3)."""
    emb = unit(embed_source(embed, params, batch_stats, verification.source, batch_size=batch_size,
                            mesh=mesh, flip=flip, progress=progress, desc="verification"))
    dist = pair_distances(emb[verification.idx_a], emb[verification.idx_b])
    result = verify(dist, verification.issame, folds_P=verification.folds)
    return {"verification_accuracy": result.accuracy,
            "verification_std": result.accuracy_std,
            "tar_at_far_1e-3": result.tar_at_far,
            "verification_pairs": result.num_pairs}


def evaluate_backbone(embed, params, batch_stats, centres_CxD, data, config, mesh) -> dict:
    """Held-out identity accuracy (unseen images of training identities) and verification."""
    holdout = SubsetSource(data.records, data.holdout_indices)
    metrics = {}
    if len(holdout):
        emb = embed_source(embed, params, batch_stats, holdout, batch_size=config.eval.batch_size,
                           mesh=mesh, progress=config.run.progress, desc="held-out images")
        labels = data.records.labels[data.holdout_indices]
        metrics["holdout_accuracy"] = identity_accuracy(emb, labels, centres_CxD)
    if data.verification is not None:
        metrics.update(verification_metrics(
            embed, params, batch_stats, data.verification, batch_size=config.eval.batch_size,
            mesh=mesh, flip=config.eval.flip, progress=config.run.progress))
    for name, verification in data.bin_verifications.items():
        result = verification_metrics(embed, params, batch_stats, verification,
                                      batch_size=config.eval.batch_size, mesh=mesh,
                                      flip=config.eval.flip, progress=config.run.progress)
        metrics.update({f"{key}@{name}": value for key, value in result.items()})
    return metrics


@dataclasses.dataclass(frozen=True)
class RequestSplit:
    """Which records an unlearning request covers, by identity (the evaluator's view, labels in).

    Attributes:
      forget_identities: sorted identity labels to forget.
      forget: training-record indices of the forget identities (D_f).
      retain: training-record indices of the other identities (D_r).
      forget_holdout: held-out (never trained) records of the forget identities.
      retain_holdout: held-out records of the retained identities.
    """

    forget_identities: np.ndarray
    forget: np.ndarray
    retain: np.ndarray
    forget_holdout: np.ndarray
    retain_holdout: np.ndarray

    @classmethod
    def of(cls, data, forget_ids: np.ndarray) -> RequestSplit:
        forget, retain = forget_retain_split(data.records.labels, data.train_indices, forget_ids)
        forget_holdout, retain_holdout = forget_retain_split(data.records.labels,
                                                             data.holdout_indices, forget_ids)
        return cls(forget_ids, forget, retain, forget_holdout, retain_holdout)


def class_logits_of(emb_NxD: np.ndarray, centres_CxD: np.ndarray, scale: float) -> jax.Array:
    return scale * cosine_logits(jnp.asarray(emb_NxD), jnp.asarray(centres_CxD))


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


def evaluate_unlearning(*, embed, teacher, student, centres_CxD, split: RequestSplit, data,
                        config, mesh, teacher_forget: np.ndarray, teacher_retain: np.ndarray,
                        own_embedding_space: bool = False) -> UnlearningEvaluation:
    """Everything the papers report about one student against its teacher.

    Args:
      embed: `make_embed_fn` of the backbone's evaluation graph.
      teacher, student: `Backbone`s.
      centres_CxD: the teacher's frozen margin-head class centres.
      split: the request's records.
      teacher_forget, teacher_retain: cached raw teacher embeddings of `split.forget`/`retain`.
      own_embedding_space: the student does not descend from the teacher (retraining); the
        after-values of `HEAD_SCORED_AFTER` are left out and `head_scored` is 0.

    Returns:
      The metrics, a flat dict of floats: `unlearning_summary` (accuracies, UES, confidence,
      entropy, activation distance, completeness, membership recall), layer distance, held-out
      accuracies of forget and retain identities, retrieval (R@1, R@5, mAP, CS of forget and
      retain identities, over every image of the training identities), membership inference
      accuracy (forget training images against held-out images of the forget identities) and
      verification, each before and after; and the pool's unit embeddings before and after.
    """
    batch, scale = config.eval.batch_size, config.model.scale
    labels = data.records.labels

    def embeddings(model, indices, desc):
        return embed_source(embed, model.params, model.batch_stats,
                            SubsetSource(data.records, indices), batch_size=batch, mesh=mesh,
                            progress=config.run.progress, desc=desc)

    student_forget = embeddings(student, split.forget, "student: forget set")
    student_retain = embeddings(student, split.retain, "student: retain set")
    metrics = unlearning_summary(
        class_logits_of(teacher_forget, centres_CxD, scale),
        class_logits_of(student_forget, centres_CxD, scale),
        class_logits_of(teacher_retain, centres_CxD, scale),
        class_logits_of(student_retain, centres_CxD, scale),
        jnp.asarray(labels[split.forget]), jnp.asarray(labels[split.retain]),
        alpha=config.eval.ues_alpha, membership_threshold=config.eval.membership_threshold)
    metrics["layer_distance"] = float(layer_distance(teacher.params, student.params))
    pool = {"before": [teacher_forget, teacher_retain], "after": [student_forget, student_retain]}
    pool_indices = [split.forget, split.retain]
    for name, indices in (("forget_holdout", split.forget_holdout),
                          ("retain_holdout", split.retain_holdout)):
        if len(indices) == 0:
            continue
        pool_indices.append(indices)
        for when, model in (("before", teacher), ("after", student)):
            emb = embeddings(model, indices, f"{name} images")
            pool[when].append(emb)
            metrics[f"{name}_acc_{when}"] = identity_accuracy(emb, labels[indices], centres_CxD)
    if len(split.forget_holdout) >= 5:
        # Members: the forget training images; non-members: never-trained images of the same
        # people. Features from the teacher's identity head, before and after.
        holdout_labels = labels[split.forget_holdout]
        for when, parts in pool.items():
            members = attack_features(
                np.asarray(class_logits_of(parts[0], centres_CxD, scale)), labels[split.forget])
            nonmembers = attack_features(
                np.asarray(class_logits_of(parts[2], centres_CxD, scale)), holdout_labels)
            metrics[f"mia_{when}"] = attack_accuracy(members, nonmembers)
    pool_labels = labels[np.concatenate(pool_indices)]
    is_forget = np.isin(pool_labels, split.forget_identities)
    units = {when: unit(np.concatenate(parts)) for when, parts in pool.items()}
    for when, emb in units.items():
        metrics.update(retrieval_summary(emb, pool_labels, is_forget, when))
    named = {"": data.verification} if data.verification is not None else {}
    named.update({f"@{name}": v for name, v in data.bin_verifications.items()})
    for suffix, verification in named.items():
        for when, model in (("before", teacher), ("after", student)):
            result = verification_metrics(embed, model.params, model.batch_stats,
                                          verification, batch_size=batch, mesh=mesh,
                                          flip=config.eval.flip)
            metrics[f"verification_{when}{suffix}"] = result["verification_accuracy"]
            metrics[f"tar_at_far_{when}{suffix}"] = result["tar_at_far_1e-3"]
    if own_embedding_space:
        for key in HEAD_SCORED_AFTER:
            metrics.pop(key, None)
    metrics["head_scored"] = float(not own_embedding_space)
    metrics["forget_images"] = len(split.forget)
    metrics["retain_images"] = len(split.retain)
    metrics["forget_identities"] = len(split.forget_identities)
    return UnlearningEvaluation(metrics, pool_labels, is_forget, units["before"], units["after"])
