"""Evaluation of a backbone (teacher or student): identity accuracy and verification.

Labels live here: the unlearning methods never import this module.
"""

from __future__ import annotations

import numpy as np

from cure_jax.embeddings import embed_source
from cure_jax.metrics.verification import pair_distances, verify
from data_pipelines.pipelines import SubsetSource


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
    return metrics
