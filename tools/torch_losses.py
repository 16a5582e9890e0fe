"""PyTorch twins of the package's losses: the margin heads (`cure_jax.losses.margin`), CURE's six
terms (`cure_jax.losses.cure`) and the dispersion forms (`cure_jax.losses.dispersion`), written
term for term from the JAX functions, for the side-by-side benchmark (tools/bench_torch.py) and
its parity checks. The package itself never imports torch.

Simplifications against the JAX originals, none of which changes a value on the batches the
benchmark builds: no padding masks (every row is real), and the uniformity form assumes the batch
holds at least one same-group pair (the JAX form returns 0 without one; a P x K batch always has
pairs).

Shape legend: B batch, C classes, D embedding dimension, K clusters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12  # as cure_jax.losses.common.NORM_EPS
TERMS = ("pl", "cosf", "con", "cosr", "fm", "fd")


def l2_normalize(x_BxD: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(sum x^2 + eps)``, the package's normalisation (not `F.normalize`'s max)."""
    return x_BxD * torch.rsqrt(x_BxD.square().sum(-1, keepdim=True) + NORM_EPS)


def cosine(a_BxD: torch.Tensor, b_BxD: torch.Tensor) -> torch.Tensor:
    return (l2_normalize(a_BxD) * l2_normalize(b_BxD)).sum(-1)


def margin_logits(cos_BxC: torch.Tensor, labels_B: torch.Tensor, *, kind: str, scale: float,
                  margin: float, straight_through: bool = True) -> torch.Tensor:
    """CosFace ``s (cos - m)`` or ArcFace ``s cos(theta + m)`` on the target class."""
    one_hot = F.one_hot(labels_B, cos_BxC.shape[-1]).to(cos_BxC.dtype)
    if kind == "cosface":
        return scale * (cos_BxC - margin * one_hot)
    if kind != "arcface":
        raise ValueError(f"unknown margin head {kind!r}; valid: arcface, cosface")
    cos_t = (cos_BxC * one_hot).sum(-1)
    sin_t = torch.sqrt(torch.clamp(1.0 - cos_t.square(), 1e-7, 1.0))
    cos_tm = cos_t * math.cos(margin) - sin_t * math.sin(margin)
    cos_tm = torch.where(cos_t > math.cos(math.pi - margin), cos_tm,
                         cos_t - math.sin(math.pi - margin) * margin)
    delta = cos_tm - cos_t
    if straight_through:
        delta = delta.detach()
    return scale * (cos_BxC + one_hot * delta[:, None])


def margin_loss(cos_BxC: torch.Tensor, labels_B: torch.Tensor, **margin_kwargs) -> torch.Tensor:
    """Mean softmax cross-entropy of the margin logits."""
    return F.cross_entropy(margin_logits(cos_BxC, labels_B, **margin_kwargs), labels_B)


def cure_terms(*, student_forget, teacher_forget, head_logits, pseudo_labels, student_retain,
               teacher_retain, retain_centroids, temperature_pl: float, temperature_fd: float,
               margin: float, retain_mode: str, feature_match_on: str) -> dict:
    """The six unweighted CURE terms as callables {name: () -> scalar}, as `cure_loss` builds
    them (SPEC section 2)."""

    def contrastive():
        z_s = l2_normalize(student_forget)
        cos_t = (z_s * l2_normalize(teacher_forget)).sum(-1)
        cos_r = z_s @ l2_normalize(retain_centroids).T
        cos_r = cos_r.amax(-1) if retain_mode == "nearest" else cos_r.mean(-1)
        return (F.relu(cos_t - margin) + F.relu(cos_r - margin)).mean()

    def feature_matching():
        s, t = student_retain, teacher_retain
        if feature_match_on == "unit":
            s, t = l2_normalize(s), l2_normalize(t)
        return (s - t).square().mean(-1).mean()

    def feature_distribution():
        logp_t = F.log_softmax(l2_normalize(teacher_retain) / temperature_fd, dim=-1)
        logp_s = F.log_softmax(l2_normalize(student_retain) / temperature_fd, dim=-1)
        return temperature_fd**2 * (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean()

    return {
        "pl": lambda: F.cross_entropy(head_logits / temperature_pl, pseudo_labels),
        "cosf": lambda: cosine(student_forget, teacher_forget).mean(),
        "con": contrastive,
        "cosr": lambda: (1.0 - cosine(student_retain, teacher_retain)).mean(),
        "fm": feature_matching,
        "fd": feature_distribution,
    }


def cure_loss(weights: dict[str, float], **inputs) -> tuple[torch.Tensor, dict]:
    """``sum_k w_k L_k`` over the six terms; a weight of exactly 0 removes its term (not computed,
    reported as 0), as in `cure_jax.losses.cure.cure_loss`."""
    compute = cure_terms(**inputs)
    total = inputs["student_forget"].new_zeros(())
    terms = {}
    for name in TERMS:
        if weights[name] == 0.0:
            terms[name] = total.new_zeros(())
            continue
        terms[name] = compute[name]()
        total = total + weights[name] * terms[name]
    return total, terms


def dispersion_loss(emb_BxD: torch.Tensor, groups_B: torch.Tensor, *, kind: str,
                    t: float = 2.0) -> torch.Tensor:
    """Mean, hardest-positive or uniformity dispersion over the same-group pairs i != j
    (SPEC section 3). The batch must hold at least one pair."""
    z = l2_normalize(emb_BxD)
    cos = z @ z.T
    eye = torch.eye(len(groups_B), dtype=torch.bool, device=emb_BxD.device)
    pairs = (groups_B[:, None] == groups_B[None, :]) & ~eye
    count = pairs.sum()
    if kind == "mean":
        return torch.where(pairs, cos, 0.0).sum() / count.clamp(min=1)
    if kind == "hard":
        hardest = torch.where(pairs, cos, -2.0).amax(-1)
        has_pos = pairs.any(-1)
        return torch.where(has_pos, hardest, 0.0).sum() / has_pos.sum().clamp(min=1)
    if kind == "uniformity":
        logits = (2.0 * t * (cos - 1.0)).masked_fill(~pairs, float("-inf"))
        # log mean exp over the pairs: logsumexp shifts by the largest pair itself.
        return torch.logsumexp(logits.flatten(), 0) - torch.log(count.to(logits.dtype))
    raise ValueError(f"unknown dispersion kind {kind!r}; valid: mean, hard, uniformity")
