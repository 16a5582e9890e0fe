"""Markdown tables of an unlearning run, in the layout of the CURE paper's Tables 1 and 2."""

from __future__ import annotations

import math

import numpy as np


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{100 * value:.2f}")


def _num(value, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.{digits}f}")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_table(m: dict, method: str) -> str:
    """Table 1: forget / retain accuracy, UES, verification, before and after."""
    header = ["model", "forget acc", "retain acc", "UES", "verification", "TAR@FAR=1e-3",
              "forget held-out acc", "retain held-out acc"]
    before = ["teacher (before)", _pct(m.get("forget_acc_before")),
              _pct(m.get("retain_acc_before")), "-", _pct(m.get("verification_before")),
              _pct(m.get("tar_at_far_before")), _pct(m.get("forget_holdout_acc_before")),
              _pct(m.get("retain_holdout_acc_before"))]
    after = [f"{method} (after)", _pct(m.get("forget_acc_after")),
             _pct(m.get("retain_acc_after")), _num(m.get("ues")),
             _pct(m.get("verification_after")), _pct(m.get("tar_at_far_after")),
             _pct(m.get("forget_holdout_acc_after")), _pct(m.get("retain_holdout_acc_after"))]
    return table(header, [before, after])


def behaviour_table(m: dict, method: str) -> str:
    """Table 2: confidence drop, entropy increase, distances, completeness, membership recall."""
    header = ["method", "conf drop (forget)", "conf drop (retain)", "entropy inc (forget)",
              "entropy inc (retain)", "activation dist", "layer dist", "completeness",
              "membership recall (before -> after)"]
    row = [method, _num(m.get("conf_drop_forget")), _num(m.get("conf_drop_retain")),
           _num(m.get("entropy_increase_forget")), _num(m.get("entropy_increase_retain")),
           _num(m.get("activation_distance")), _num(m.get("layer_distance")),
           _num(m.get("completeness")),
           f"{_pct(m.get('membership_recall_before'))} -> {_pct(m.get('membership_recall_after'))}"]
    return table(header, [row])


def unlearning_report(m: dict, *, method: str, title: str) -> str:
    """The whole report.md of one unlearning run."""
    parts = [
        f"# {title}",
        "",
        f"{m.get('forget_identities', '?')} identities forgotten ({m.get('forget_images', '?')} "
        f"training images); {m.get('retain_images', '?')} retained training images. "
        "Accuracies in %: identity classification against the teacher's frozen class centres "
        "on the training images of each set, and on their held-out images; verification on "
        "pairs of people never trained on. UES with alpha = "
        f"{m.get('ues_alpha', 0.5)}.",
        "",
        "## Accuracy (the paper's Table 1)",
        "",
        accuracy_table(m, method),
        "",
        "## Behaviour (the paper's Table 2)",
        "",
        behaviour_table(m, method),
        "",
        "## Retrieval",
        "",
        "Leave-one-out over every image of the training identities (training and held-out); "
        "queries of forget identities and of retained identities. CS: mean intra-identity "
        "cosine.",
        "",
        retrieval_table(m, method),
        "",
        "![embeddings before and after](embeddings.png)",
        "",
    ]
    if "unlearn_seconds" in m:
        parts += [f"Unlearning took {m['unlearn_seconds']:.1f} s.", ""]
    return "\n".join(parts)


def retrieval_table(m: dict, method: str) -> str:
    """Forget and retain identities x R@1, R@5, mAP, CS, before and after."""
    header = ["identities", "model", "R@1", "R@5", "mAP", "CS"]
    rows = []
    for side in ("forget", "retain"):
        for when, name in (("before", "teacher (before)"), ("after", f"{method} (after)")):
            rows.append([side, name, _pct(m.get(f"{side}_r1_{when}")),
                         _pct(m.get(f"{side}_r5_{when}")), _pct(m.get(f"{side}_map_{when}")),
                         _num(m.get(f"{side}_cs_{when}"))])
    return table(header, rows)


def _project_2d(unit_NxD: np.ndarray) -> np.ndarray:
    """The first two principal components."""
    centred = unit_NxD - unit_NxD.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_embeddings(evaluation, path, *, title: str, max_retain: int = 1500, seed: int = 0):
    """Saves a figure: 2-D projections (PCA) of the embeddings before and after, one colour per
    forget identity over the retained ones in grey, and the distributions of per-identity
    compactness (mean intra-identity cosine) before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cure_jax.metrics.retrieval import per_identity_compactness

    labels, is_forget = evaluation.labels, evaluation.is_forget
    rng = np.random.default_rng(seed)
    retain_rows = np.flatnonzero(~is_forget)
    retain_rows = rng.choice(retain_rows, min(max_retain, len(retain_rows)), replace=False)
    rows = np.concatenate([retain_rows, np.flatnonzero(is_forget)])
    forget_ids = np.unique(labels[is_forget])
    colours = plt.get_cmap("tab20")(np.arange(len(forget_ids)) % 20)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, when in zip(axes[:2], ("before", "after"), strict=True):
        xy = _project_2d(getattr(evaluation, when)[rows])
        n = len(retain_rows)
        ax.scatter(xy[:n, 0], xy[:n, 1], s=3, c="0.8", label="retained identities")
        forget_labels = labels[rows[n:]]
        for colour, identity in zip(colours, forget_ids, strict=True):
            mine = forget_labels == identity
            ax.scatter(xy[n:][mine, 0], xy[n:][mine, 1], s=8, color=colour)
        ax.set_title(f"{'teacher (before)' if when == 'before' else 'student (after)'}: "
                     "PCA of unit embeddings")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="lower left", fontsize=8, markerscale=3)
    bins = np.linspace(-0.2, 1.0, 49)
    for when, style in (("before", "-"), ("after", "--")):
        emb = getattr(evaluation, when)
        for side, mask, colour in (("forget", is_forget, "tab:red"),
                                   ("retain", ~is_forget, "tab:blue")):
            _, cs, _ = per_identity_compactness(emb, labels, label_mask=mask)
            axes[2].hist(cs, bins=bins, histtype="step", linestyle=style, color=colour,
                         density=True, label=f"{side}, {when}")
    axes[2].set_xlabel("per-identity compactness (mean intra-identity cosine)")
    axes[2].set_ylabel("density")
    axes[2].legend(fontsize=8)
    axes[2].set_title("cluster compactness")
    fig.suptitle(f"{title}: forget identities in colour")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
