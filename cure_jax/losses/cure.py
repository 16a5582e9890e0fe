"""CURE loss terms (SPEC section 2) as pure functions of arrays.

Every term returns a scalar: the mean over the real samples of a batch. Arrays are positional,
hyper-parameters keyword-only. An optional ``mask`` (bool or 0/1 float, shape [B], nonzero = real
sample) excludes the padded rows of a fixed-shape batch; a fully masked batch gives 0, not NaN.

Shape legend: B batch, D embedding dimension, K number of clusters (pseudo-label classes for the
head logits, retain centroids for the contrastive term).

Notation: ``e`` raw embedding, ``z = e / ||e||`` unit embedding, ``s`` student, ``t`` teacher.
"""

import dataclasses

import jax
import jax.numpy as jnp

from cure_jax.losses.common import cosine, l2_normalize, masked_mean

_TERMS = ("pl", "cosf", "con", "cosr", "fm", "fd")


def pseudo_label_loss(
    head_logits_BxK: jax.Array,
    pseudo_labels_B: jax.Array,
    *,
    temperature: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Pseudo-label loss ``L_pl = CE(h(z_s) / T, y~)``.

    Args:
        head_logits_BxK: pseudo-label head outputs ``h(z_s)``.
        pseudo_labels_B: int targets ``y~ = phi(l(x))`` in [0, K).
        temperature: T > 0; the logits are divided by it.
        mask: optional [B] padding mask.

    Returns:
        Scalar mean cross-entropy.
    """
    # log_softmax, not log(softmax): exact for large logit gaps where softmax underflows to 0.
    logp_BxK = jax.nn.log_softmax(head_logits_BxK / temperature, axis=-1)
    nll_B = -jnp.take_along_axis(logp_BxK, pseudo_labels_B[:, None].astype(jnp.int32), axis=-1)
    return masked_mean(nll_B[:, 0], mask)


def forget_cosine_loss(
    student_emb_BxD: jax.Array, teacher_emb_BxD: jax.Array, *, mask: jax.Array | None = None
) -> jax.Array:
    """Forget cosine loss ``L_cosf = mean cos(z_s, t_f)`` (minimised: pushes away from the teacher).

    Args:
        student_emb_BxD: student embeddings of forget images (raw or unit).
        teacher_emb_BxD: teacher embeddings of the same images (raw or unit).
        mask: optional [B] padding mask.

    Returns:
        Scalar in [-1, 1].
    """
    return masked_mean(cosine(student_emb_BxD, teacher_emb_BxD), mask)


def contrastive_loss(
    student_emb_BxD: jax.Array,
    teacher_emb_BxD: jax.Array,
    retain_centroids_KxD: jax.Array,
    *,
    margin: float,
    retain_mode: str = "nearest",
    mask: jax.Array | None = None,
) -> jax.Array:
    """Contrastive loss ``L_con = mean[relu(cos(z_s, t_f) - m) + relu(agg_j cos(z_s, c_j) - m)]``.

    ``agg`` is the max (``"nearest"``) or the mean over the normalised retain centroids ``c_j``.

    The first hinge penalises a forget feature for staying near its teacher embedding, the second
    for being near the retain set, summarised by its k-means centroids.

    Args:
        student_emb_BxD: student embeddings of forget images.
        teacher_emb_BxD: teacher embeddings of the same images.
        retain_centroids_KxD: retain centroids ``c_r`` (normalised here).
        margin: m; similarities below it cost nothing.
        retain_mode: ``"nearest"`` aggregates over centroids with max (the closest one), ``"mean"``
            with the mean.
        mask: optional [B] padding mask.

    Returns:
        Scalar, >= 0.

    Raises:
        ValueError: unknown ``retain_mode``.
    """
    z_s_BxD = l2_normalize(student_emb_BxD)
    cos_t_B = jnp.sum(z_s_BxD * l2_normalize(teacher_emb_BxD), axis=-1)
    cos_r_BxK = z_s_BxD @ l2_normalize(retain_centroids_KxD).T
    if retain_mode == "nearest":
        cos_r_B = jnp.max(cos_r_BxK, axis=-1)
    elif retain_mode == "mean":
        cos_r_B = jnp.mean(cos_r_BxK, axis=-1)
    else:
        raise ValueError(f"retain_mode must be 'nearest' or 'mean', got {retain_mode!r}")
    per_sample_B = jax.nn.relu(cos_t_B - margin) + jax.nn.relu(cos_r_B - margin)
    return masked_mean(per_sample_B, mask)


def retain_cosine_loss(
    student_emb_BxD: jax.Array, teacher_emb_BxD: jax.Array, *, mask: jax.Array | None = None
) -> jax.Array:
    """Retain cosine loss ``L_cosr = mean(1 - cos(z_s, t_r))``.

    Args:
        student_emb_BxD: student embeddings of retain images.
        teacher_emb_BxD: teacher embeddings of the same images.
        mask: optional [B] padding mask.

    Returns:
        Scalar in [0, 2].
    """
    return masked_mean(1.0 - cosine(student_emb_BxD, teacher_emb_BxD), mask)


def feature_matching_loss(
    student_emb_BxD: jax.Array,
    teacher_emb_BxD: jax.Array,
    *,
    on: str = "raw",
    mask: jax.Array | None = None,
) -> jax.Array:
    """Feature matching ``L_fm = mean ||e_s - e_t||^2 / D``.

    Args:
        student_emb_BxD: student embeddings of retain images, raw (unnormalised).
        teacher_emb_BxD: teacher embeddings of the same images, raw.
        on: ``"raw"`` compares raw embeddings (keeps their magnitude, the paper's stated purpose),
            ``"unit"`` compares the normalised ones.
        mask: optional [B] padding mask.

    Returns:
        Scalar, >= 0.

    Raises:
        ValueError: unknown ``on``.
    """
    if on == "unit":
        student_emb_BxD = l2_normalize(student_emb_BxD)
        teacher_emb_BxD = l2_normalize(teacher_emb_BxD)
    elif on != "raw":
        raise ValueError(f"on must be 'raw' or 'unit', got {on!r}")
    sq_B = jnp.mean(jnp.square(student_emb_BxD - teacher_emb_BxD), axis=-1)
    return masked_mean(sq_B, mask)


def feature_distribution_loss(
    student_emb_BxD: jax.Array,
    teacher_emb_BxD: jax.Array,
    *,
    temperature: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Feature distribution ``L_fd = T^2 KL(softmax(t_r / T) || softmax(z_s / T))``.

    The softmax runs over the D feature dimensions of the unit embeddings (both normalised here).

    Args:
        student_emb_BxD: student embeddings of retain images.
        teacher_emb_BxD: teacher embeddings of the same images.
        temperature: T > 0.
        mask: optional [B] padding mask.

    Returns:
        Scalar, >= 0.
    """
    # log_softmax on both sides: the KL is a difference of logs, exact even where p underflows.
    logp_t_BxD = jax.nn.log_softmax(l2_normalize(teacher_emb_BxD) / temperature, axis=-1)
    logp_s_BxD = jax.nn.log_softmax(l2_normalize(student_emb_BxD) / temperature, axis=-1)
    kl_B = jnp.sum(jnp.exp(logp_t_BxD) * (logp_t_BxD - logp_s_BxD), axis=-1)
    # T^2 keeps the gradient's scale independent of T (Hinton et al.'s distillation convention).
    return temperature**2 * masked_mean(kl_B, mask)


@dataclasses.dataclass(frozen=True)
class CureWeights:
    """Weights of the six CURE terms. A weight of exactly 0 removes its term (see ``cure_loss``).

    Values are coerced to Python floats: they must be static (known at trace time), which is what
    lets a zero weight skip its term instead of multiplying it.
    """

    pl: float = 1.0  # pseudo-label cross-entropy
    cosf: float = 1.0  # forget cosine
    con: float = 1.0  # contrastive (teacher and retain hinges)
    cosr: float = 1.0  # retain 1 - cosine
    fm: float = 1.0  # feature matching
    fd: float = 1.0  # feature distribution (KL over feature dims)

    def __post_init__(self):
        for name in _TERMS:
            # float() fails loudly on a traced value: a weight cannot be data-dependent.
            object.__setattr__(self, name, float(getattr(self, name)))


def cure_loss(
    *,
    student_forget: jax.Array,
    teacher_forget: jax.Array,
    head_logits: jax.Array,
    pseudo_labels: jax.Array,
    student_retain: jax.Array,
    teacher_retain: jax.Array,
    retain_centroids: jax.Array,
    weights: CureWeights,
    temperature_pl: float,
    temperature_fd: float,
    margin: float,
    retain_mode: str = "nearest",
    feature_match_on: str = "raw",
    forget_mask: jax.Array | None = None,
    retain_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total CURE loss ``w_pl L_pl + w_cosf L_cosf + w_con L_con + w_cosr L_cosr + w_fm L_fm
    + w_fd L_fd``.

    A weight of exactly 0 removes its term: the term is not computed at all (the decision is
    taken in Python at trace time), so a term that would be NaN or inf cannot poison the total
    or its gradient through ``0 * NaN``. A removed term is reported as 0.0. The ablations
    (A1-A12) are exactly these removals.

    Args:
        student_forget: [Bf, D] student embeddings of a forget batch (raw).
        teacher_forget: [Bf, D] teacher embeddings of the same images.
        head_logits: [Bf, K_f] pseudo-label head outputs on the student forget embeddings.
        pseudo_labels: [Bf] int pseudo-labels ``y~``.
        student_retain: [Br, D] student embeddings of a retain batch (raw).
        teacher_retain: [Br, D] teacher embeddings of the same images (raw).
        retain_centroids: [K_r, D] retain centroids.
        weights: static term weights.
        temperature_pl: T of the pseudo-label cross-entropy.
        temperature_fd: T of the feature distribution KL.
        margin: m of the contrastive hinges.
        retain_mode: ``"nearest" | "mean"``, see ``contrastive_loss``.
        feature_match_on: ``"raw" | "unit"``, see ``feature_matching_loss``.
        forget_mask: optional [Bf] padding mask of the forget batch.
        retain_mask: optional [Br] padding mask of the retain batch.

    Returns:
        ``(total, terms)``: the scalar total and a dict of the six unweighted scalar terms keyed
        ``pl, cosf, con, cosr, fm, fd``.
    """
    compute = {
        "pl": lambda: pseudo_label_loss(
            head_logits, pseudo_labels, temperature=temperature_pl, mask=forget_mask
        ),
        "cosf": lambda: forget_cosine_loss(student_forget, teacher_forget, mask=forget_mask),
        "con": lambda: contrastive_loss(
            student_forget,
            teacher_forget,
            retain_centroids,
            margin=margin,
            retain_mode=retain_mode,
            mask=forget_mask,
        ),
        "cosr": lambda: retain_cosine_loss(student_retain, teacher_retain, mask=retain_mask),
        "fm": lambda: feature_matching_loss(
            student_retain, teacher_retain, on=feature_match_on, mask=retain_mask
        ),
        "fd": lambda: feature_distribution_loss(
            student_retain, teacher_retain, temperature=temperature_fd, mask=retain_mask
        ),
    }
    total = jnp.zeros((), jnp.float32)
    terms = {}
    for name in _TERMS:
        weight = getattr(weights, name)
        if weight == 0.0:
            terms[name] = jnp.zeros((), jnp.float32)
            continue
        terms[name] = compute[name]()
        total = total + weight * terms[name]
    return total, terms
