"""Unlearning metrics (SPEC section 4): accuracy, UES and the papers' Table 1/2 quantities.

These are the evaluator's functions: they take identity labels, which unlearning never sees.
The array functions are pure jnp (jittable) and return scalars as 0-d arrays; ``ues`` and
``unlearning_summary`` work on concrete values and return Python floats.

Shape legend: N samples, D embedding dimension, C identity classes.
Accuracies are fractions in [0, 1]; UES is a ratio and does not depend on the unit.
"""

import math

import jax
import jax.numpy as jnp

from cure_jax.models.heads import cosine_logits


def class_logits(
    unit_emb_NxD: jax.Array, class_centres_CxD: jax.Array, *, scale: float
) -> jax.Array:
    """Identity logits ``s * cos(z, W_c)`` against the teacher's frozen margin-head centres.

    Args:
        unit_emb_NxD: embeddings (normalised again here, so raw ones are fine too).
        class_centres_CxD: margin-head class centres W (normalised here).
        scale: s, the margin head's scale (64 for ArcFace).

    Returns:
        Logits, shape [N, C].
    """
    return scale * cosine_logits(unit_emb_NxD, class_centres_CxD)


def accuracy(logits_NxC: jax.Array, labels_N: jax.Array) -> jax.Array:
    """Top-1 accuracy.

    Args:
        logits_NxC: class scores.
        labels_N: int true classes.

    Returns:
        Scalar fraction of rows whose argmax is the label.
    """
    return jnp.mean(jnp.argmax(logits_NxC, axis=-1) == labels_N)


def ues(
    acc_forget_before: float,
    acc_forget_after: float,
    acc_retain_before: float,
    acc_retain_after: float,
    *,
    alpha: float = 0.5,
) -> float:
    """Unlearning Efficacy Score ``alpha (A_f0 - A_f) / A_f0 - (1 - alpha) (A_r0 - A_r) / A_r0``.

    Rewards the relative drop of forget accuracy and penalises the relative drop of retain
    accuracy. All four accuracies must share a unit (fractions or percentages).

    Args:
        acc_forget_before: A_f0, forget accuracy of the original model.
        acc_forget_after: A_f, forget accuracy after unlearning.
        acc_retain_before: A_r0, retain accuracy of the original model.
        acc_retain_after: A_r, retain accuracy after unlearning.
        alpha: weight of the forget term.

    Returns:
        UES as a Python float; higher is better.

    Raises:
        ValueError: a before-accuracy is 0 (the relative drop is undefined).
    """
    a_f0, a_f = float(acc_forget_before), float(acc_forget_after)
    a_r0, a_r = float(acc_retain_before), float(acc_retain_after)
    if a_f0 == 0.0 or a_r0 == 0.0:
        raise ValueError(
            f"UES is undefined when a before-accuracy is 0 (forget {a_f0}, retain {a_r0})"
        )
    return alpha * (a_f0 - a_f) / a_f0 - (1.0 - alpha) * (a_r0 - a_r) / a_r0


def confidence(probs_NxC: jax.Array) -> jax.Array:
    """Mean over samples of the largest class probability.

    Args:
        probs_NxC: softmax probabilities.

    Returns:
        Scalar in [1/C, 1].
    """
    return jnp.mean(jnp.max(probs_NxC, axis=-1))


def entropy(probs_NxC: jax.Array) -> jax.Array:
    """Mean over samples of the Shannon entropy ``-sum p log p`` (nats).

    Args:
        probs_NxC: softmax probabilities.

    Returns:
        Scalar in [0, log C].
    """
    # entr is -p log p with the limit 0 at p = 0, where p * log(p) would give 0 * -inf = NaN.
    return jnp.mean(jnp.sum(jax.scipy.special.entr(probs_NxC), axis=-1))


def activation_distance(probs_before_NxC: jax.Array, probs_after_NxC: jax.Array) -> jax.Array:
    """Mean over samples of ``||p_before - p_after||_2``.

    Args:
        probs_before_NxC: probabilities of the original model.
        probs_after_NxC: probabilities after unlearning, same samples.

    Returns:
        Scalar in [0, sqrt(2)].
    """
    return jnp.mean(jnp.linalg.norm(probs_before_NxC - probs_after_NxC, axis=-1))


def layer_distance(params_before, params_after) -> jax.Array:
    """Mean over parameter arrays of the L2 (Frobenius) norm of their difference.

    Args:
        params_before: pytree of arrays (the original model).
        params_after: pytree of the same structure (the unlearned model).

    Returns:
        Scalar, >= 0.

    Raises:
        ValueError: the pytrees have different structures (from ``jax.tree.map``), or are empty.
    """
    norms = jax.tree.map(
        lambda a, b: jnp.linalg.norm(jnp.ravel(jnp.asarray(b) - jnp.asarray(a))),
        params_before,
        params_after,
    )
    leaves = jax.tree.leaves(norms)
    if not leaves:
        raise ValueError("layer_distance needs at least one parameter array")
    return jnp.mean(jnp.stack(leaves))


def completeness(
    logits_before_NxC: jax.Array, logits_after_NxC: jax.Array, *, k: int = 3
) -> jax.Array:
    """Mean Jaccard similarity of the top-k class sets before and after unlearning.

    Args:
        logits_before_NxC: scores of the original model.
        logits_after_NxC: scores after unlearning, same samples.
        k: size of the top sets; clipped to C (then every set is all classes).

    Returns:
        Scalar in [0, 1]; 1 when every top-k set is unchanged.
    """
    # A tiny smoke run may have fewer classes than k; top_k would refuse.
    k = min(k, logits_before_NxC.shape[-1])
    _, top_before_Nxk = jax.lax.top_k(logits_before_NxC, k)
    _, top_after_Nxk = jax.lax.top_k(logits_after_NxC, k)
    # top_k indices are distinct within a row, so matches count the intersection exactly.
    inter_N = jnp.sum(top_before_Nxk[:, :, None] == top_after_Nxk[:, None, :], axis=(1, 2))
    return jnp.mean(inter_N / (2 * k - inter_N))


def membership_recall(probs_NxC: jax.Array, *, threshold: float = 0.5) -> jax.Array:
    """Fraction of samples whose largest class probability exceeds ``threshold``.

    Args:
        probs_NxC: softmax probabilities (of forget samples, in the papers' use).
        threshold: confidence above which a sample counts as recognised as a member.

    Returns:
        Scalar fraction.
    """
    return jnp.mean(jnp.max(probs_NxC, axis=-1) > threshold)


def unlearning_summary(
    forget_logits_before: jax.Array,
    forget_logits_after: jax.Array,
    retain_logits_before: jax.Array,
    retain_logits_after: jax.Array,
    forget_labels: jax.Array,
    retain_labels: jax.Array,
    *,
    alpha: float = 0.5,
    membership_threshold: float = 0.5,
    k: int = 3,
) -> dict[str, float]:
    """The papers' Table 1/2 quantities from identity logits before and after unlearning.

    Logits are ``class_logits`` of the teacher (before) and the student (after). UES is NaN when a
    before-accuracy is 0 (an untrained teacher in a smoke run), so a report can still be written.

    Args:
        forget_logits_before: [Nf, C] teacher logits on the forget set.
        forget_logits_after: [Nf, C] student logits on the forget set.
        retain_logits_before: [Nr, C] teacher logits on the retain set.
        retain_logits_after: [Nr, C] student logits on the retain set.
        forget_labels: [Nf] int identities.
        retain_labels: [Nr] int identities.
        alpha: UES forget weight.
        membership_threshold: see ``membership_recall``.
        k: top-k size of ``completeness``.

    Returns:
        Flat dict of Python floats: forget_acc_before/after, retain_acc_before/after, ues,
        conf_drop_forget/retain (before - after), entropy_increase_forget/retain (after - before),
        activation_distance and completeness (forget set), membership_recall_before/after
        (forget set).
    """
    p_f0 = jax.nn.softmax(forget_logits_before, axis=-1)
    p_f1 = jax.nn.softmax(forget_logits_after, axis=-1)
    p_r0 = jax.nn.softmax(retain_logits_before, axis=-1)
    p_r1 = jax.nn.softmax(retain_logits_after, axis=-1)
    out = {
        "forget_acc_before": accuracy(forget_logits_before, forget_labels),
        "forget_acc_after": accuracy(forget_logits_after, forget_labels),
        "retain_acc_before": accuracy(retain_logits_before, retain_labels),
        "retain_acc_after": accuracy(retain_logits_after, retain_labels),
        "conf_drop_forget": confidence(p_f0) - confidence(p_f1),
        "conf_drop_retain": confidence(p_r0) - confidence(p_r1),
        "entropy_increase_forget": entropy(p_f1) - entropy(p_f0),
        "entropy_increase_retain": entropy(p_r1) - entropy(p_r0),
        "activation_distance": activation_distance(p_f0, p_f1),
        "completeness": completeness(forget_logits_before, forget_logits_after, k=k),
        "membership_recall_before": membership_recall(p_f0, threshold=membership_threshold),
        "membership_recall_after": membership_recall(p_f1, threshold=membership_threshold),
    }
    out = {name: float(value) for name, value in out.items()}
    try:
        out["ues"] = ues(
            out["forget_acc_before"],
            out["forget_acc_after"],
            out["retain_acc_before"],
            out["retain_acc_after"],
            alpha=alpha,
        )
    except ValueError:
        out["ues"] = math.nan
    return out
