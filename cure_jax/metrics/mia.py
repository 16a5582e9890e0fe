"""Membership inference: can an attacker tell the forget samples from never-trained ones?

A population attack (SPEC section 4): logistic regression on three per-sample features of the
model's identity probabilities (cross-entropy loss against the true identity, confidence, entropy),
members = forget samples, non-members = never-trained samples of the same identities. The two
groups are balanced by subsampling and the accuracy is measured with stratified k-fold
cross-validation. 0.5 means the attacker cannot tell them apart; a model retrained without the
forget set is the reference.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def _log_softmax(logits_NxC: np.ndarray) -> np.ndarray:
    shifted = logits_NxC - logits_NxC.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def attack_features(logits_NxC: np.ndarray, labels_N: np.ndarray) -> np.ndarray:
    """Per-sample [loss, confidence, entropy] of identity logits.

    Args:
      logits_NxC: identity logits (the teacher's head: `s * cos(z, W)`).
      labels_N: true identity of each sample.

    Returns:
      float64 [N, 3].
    """
    logp = _log_softmax(np.asarray(logits_NxC, np.float64))
    p = np.exp(logp)
    loss = -logp[np.arange(len(labels_N)), np.asarray(labels_N)]
    confidence = p.max(axis=-1)
    entropy = -(p * logp).sum(axis=-1)
    return np.stack([loss, confidence, entropy], axis=-1)


def attack_accuracy(members_Mx3: np.ndarray, nonmembers_Nx3: np.ndarray, *, folds: int = 5,
                    seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic-regression attack separating the two groups.

    The larger group is subsampled to the size of the smaller, so 0.5 is chance.

    Raises:
      ValueError: a group has fewer samples than `folds`.
    """
    count = min(len(members_Mx3), len(nonmembers_Nx3))
    if count < folds:
        raise ValueError(f"membership inference needs at least {folds} samples per group, got "
                         f"{len(members_Mx3)} members and {len(nonmembers_Nx3)} non-members")
    rng = np.random.default_rng(seed)
    members = members_Mx3[rng.choice(len(members_Mx3), count, replace=False)]
    nonmembers = nonmembers_Nx3[rng.choice(len(nonmembers_Nx3), count, replace=False)]
    features = np.concatenate([members, nonmembers])
    is_member = np.concatenate([np.ones(count, int), np.zeros(count, int)])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, features, is_member, cv=splits)))
