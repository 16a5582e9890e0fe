"""Markdown tables of an unlearning run, in the layout of the CURE paper's Tables 1 and 2."""

from __future__ import annotations

import math

import numpy as np

from cure_jax.seeds import Spread, mean_of, std_of


def _one_seed(value):
    """A `Spread` over a single seed as its plain value: one run has no spread to show."""
    return value.mean if isinstance(value, Spread) and len(value.values) == 1 else value


def pct_cell(value) -> str:
    """A fraction as a table cell in %; a `Spread` over seeds as `mean ± std` (over one seed,
    the value); "-" for none."""
    value = _one_seed(value)
    if isinstance(value, Spread):
        return "-" if math.isnan(value.mean) else f"{_pct(value.mean)} ± {_pct(value.std)}"
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{100 * value:.2f}")


def num_cell(value, digits: int = 4) -> str:
    """A number as a table cell; a `Spread` over seeds as `mean ± std` (over one seed, the
    value); "-" for none."""
    value = _one_seed(value)
    if isinstance(value, Spread):
        return ("-" if math.isnan(value.mean) else
                f"{_num(value.mean, digits)} ± {_num(value.std, digits)}")
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.{digits}f}")


_pct, _num = pct_cell, num_cell


OWN_SPACE_NOTE = (
    " This model does not descend from the teacher: its embedding space is its own, so the "
    "values read through the teacher's class centres (accuracies after, UES, Table 2, "
    "membership inference) are left out ('-'); its verification and retrieval stand.")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_table(m: dict, method: str) -> str:
    """Table 1: forget / retain accuracy, UES, verification, before and after."""
    others = "verification_others_before" in m  # pairs without the forgotten people
    header = ["model", "forget acc", "retain acc", "UES", "verification",
              *(["verification, others"] if others else []), "TAR@FAR=1e-3",
              "forget held-out acc", "retain held-out acc"]

    def row(label, when, ues):
        return [label, _pct(m.get(f"forget_acc_{when}")), _pct(m.get(f"retain_acc_{when}")), ues,
                _pct(m.get(f"verification_{when}")),
                *([_pct(m.get(f"verification_others_{when}"))] if others else []),
                _pct(m.get(f"tar_at_far_{when}")), _pct(m.get(f"forget_holdout_acc_{when}")),
                _pct(m.get(f"retain_holdout_acc_{when}"))]

    return table(header, [row("teacher (before)", "before", "-"),
                          row(f"{method} (after)", "after", _num(m.get("ues")))])


def behaviour_table(m: dict, method: str) -> str:
    """Table 2: confidence drop, entropy increase, distances, completeness, membership recall."""
    header = ["method", "conf drop (forget)", "conf drop (retain)", "entropy inc (forget)",
              "entropy inc (retain)", "activation dist", "layer dist", "completeness",
              "membership recall (before -> after)", "MIA accuracy (before -> after)"]
    row = [method, _num(m.get("conf_drop_forget")), _num(m.get("conf_drop_retain")),
           _num(m.get("entropy_increase_forget")), _num(m.get("entropy_increase_retain")),
           _num(m.get("activation_distance")), _num(m.get("layer_distance")),
           _num(m.get("completeness")),
           f"{_pct(m.get('membership_recall_before'))} -> {_pct(m.get('membership_recall_after'))}",
           f"{_pct(m.get('mia_before'))} -> {_pct(m.get('mia_after'))}"]
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
        "the run's verification pairs (`data.pairs`, e.g. LFW's pairs.txt). UES with alpha = "
        f"{m.get('ues_alpha', 0.5)}." + ("" if m.get("head_scored", 1.0) else OWN_SPACE_NOTE),
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
    if "student_sha256" in m:
        parts += ["## Model files", "", files_table(m), ""]
    return "\n".join(parts)


def files_table(m: dict) -> str:
    """The pretrained file (when the teacher came from one), the exported teacher and student:
    path, sha256 and the export check."""
    rows = []
    if "pretrained_sha256" in m:
        rows.append(["pretrained (before fine-tuning)", f"`{m['pretrained_file']}`",
                     f"`{m['pretrained_sha256']}`",
                     f"verification {_pct(m.get('pretrained_verification_accuracy'))}"])
    for who in ("teacher", "student"):
        if f"{who}_sha256" in m:
            rows.append([who, f"`{m[f'{who}_file']}`", f"`{m[f'{who}_sha256']}`",
                         f"unit embeddings within {m[f'{who}_export_max_abs_diff']:.2g} "
                         f"({m[f'{who}_export_checked_with']})"])
    return table(["model", "file", "sha256", "check"], rows)


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


def _rows(results: dict, cells) -> list[list[str]]:
    """A "teacher (before)" row from the first method's before-values, then one row per method."""
    first = next(iter(results.values()))
    rows = [["teacher (before)", *cells(first, "before", None)]]
    rows += [[name, *cells(m, "after", name)] for name, m in results.items()]
    return rows


def comparison_report(results: dict, *, title: str, note: str = "") -> str:
    """comparison.md: the papers' Tables 1 and 2, retrieval and membership inference, with the
    wall time of each method. `results` maps method name to its metrics.json, or to the
    `seeds.aggregate` of several (each value then reads `mean ± std`); `note` follows the
    opening paragraph."""
    retrain = results.get("retrain")
    # Where the verification pairs name their people: verification without the forgotten
    # people's pairs, which a student that forgets them should fail.
    others = any("verification_others_before" in m for m in results.values())

    def table1(m, when, name):
        return [_pct(m.get(f"forget_acc_{when}")), _pct(m.get(f"retain_acc_{when}")),
                "-" if name is None else _num(m.get("ues")),
                _pct(m.get(f"verification_{when}")),
                *([_pct(m.get(f"verification_others_{when}"))] if others else []),
                _pct(m.get(f"tar_at_far_{when}")),
                _pct(m.get(f"forget_holdout_acc_{when}")),
                "-" if name is None else _num(m.get("unlearn_seconds"), 0)]

    def table2(m, when, name):
        if name is None:
            return ["-"] * 6 + [_pct(m.get("membership_recall_before"))]
        return [_num(m.get("conf_drop_forget")), _num(m.get("entropy_increase_forget")),
                _num(m.get("conf_drop_retain")), _num(m.get("activation_distance")),
                _num(m.get("layer_distance")), _num(m.get("completeness")),
                _pct(m.get("membership_recall_after"))]

    def table3(m, when, name):
        return [_pct(m.get(f"forget_r1_{when}")), _pct(m.get(f"forget_map_{when}")),
                _num(m.get(f"forget_cs_{when}")), _pct(m.get(f"retain_r1_{when}")),
                _pct(m.get(f"retain_map_{when}")), _num(m.get(f"retain_cs_{when}"))]

    mia_reference = None if retrain is None else retrain.get("mia_after")

    def table4(m, when, name):
        value = m.get(f"mia_{when}")
        if mia_reference is None:
            return [_pct(value)]
        gap = ("-" if value is None or name is None else
               f"{100 * (mean_of(value) - mean_of(mia_reference)):+.2f}")
        return [_pct(value), gap]

    own_space = [name for name, m in results.items() if not m.get("head_scored", 1.0)]

    first = next(iter(results.values()))
    parts = [
        f"# {title}",
        "",
        f"{first.get('forget_identities', '?')} identities forgotten "
        f"({first.get('forget_images', '?')} training images), "
        f"{first.get('retain_images', '?')} retained training images; one teacher for all "
        "methods. Accuracies in %. UES with alpha = "
        f"{first.get('ues_alpha', 0.5)}." + (
            f" {', '.join(own_space)}: its own embedding space, so the values read through the "
            "teacher's class centres are left out ('-'); its verification and retrieval stand."
            if own_space else "") + (f" {note}" if note else ""),
        "",
        "## Table 1: accuracy",
        "",
        *([f"Verification, others: the {_num(first.get('verification_others_pairs'), 0)} "
           "verification pairs that show none of the forgotten people.", ""] if others else []),
        table(["method", "forget acc", "retain acc", "UES", "verification",
               *(["verification, others"] if others else []), "TAR@FAR=1e-3",
               "forget held-out acc", "seconds"], _rows(results, table1)),
        "",
        "## Table 2: behaviour",
        "",
        table(["method", "conf drop (forget)", "entropy inc (forget)", "conf drop (retain)",
               "activation dist", "layer dist", "completeness", "membership recall"],
              _rows(results, table2)),
        "",
        "## Retrieval",
        "",
        table(["method", "forget R@1", "forget mAP", "forget CS", "retain R@1", "retain mAP",
               "retain CS"], _rows(results, table3)),
        "",
        "## Membership inference",
        "",
        "Logistic-regression attack on loss, confidence and entropy: forget training images "
        "against held-out images of the same people, balanced, 5-fold cross-validated (50% = "
        "cannot tell)." + ("" if mia_reference is None else
                           " Gap: points above the model retrained without the forget set."),
        "",
        table(["method", "attack accuracy", *([] if mia_reference is None else ["gap to retrain"])],
              _rows(results, table4)),
        "",
    ]
    if "student_sha256" in first:
        parts += ["## Model files", "", _files_rows(results), ""]
    parts += [
        "![forget against retain accuracy and retrieval mAP](comparison.png)",
        "",
    ]
    return "\n".join(parts)


def _files_rows(results: dict) -> str:
    """The teacher's files (from the first method's record), then each method's student."""
    first = next(iter(results.values()))
    rows = []
    if "pretrained_sha256" in first:
        rows.append(["pretrained (before fine-tuning)", _pct(
            first.get("pretrained_verification_accuracy")), f"`{first['pretrained_file']}`",
            f"`{first['pretrained_sha256']}`"])
    rows.append(["teacher", _pct(first.get("verification_before")), f"`{first['teacher_file']}`",
                 f"`{first['teacher_sha256']}`"])
    rows += [[name, _pct(m.get("verification_after")), _code(m.get("student_file", "-")),
              _code(m.get("student_sha256", "-"))] for name, m in results.items()]
    return table(["model", "verification", "file", "sha256"], rows)


def _code(value) -> str:
    """A value as code in a table cell; a list (one per seed) as one code span each."""
    return "<br>".join(f"`{v}`" for v in value) if isinstance(value, list) else f"`{value}`"


def axis_limits(centres, errors=None, *, pad: float = 0.08, low: float = 0.0,
                high: float = 100.0, min_span: float = 4.0) -> tuple[float, float]:
    """Axis limits that show every point with its error bar, whatever the scale of the data.

    Args:
      centres: the points' coordinates on this axis.
      errors: their error-bar half-widths (default none).
      pad: the margin on each side, as a fraction of the span.
      low, high: the range the quantity can take; the limits stay within it, pad included.
      min_span: the smallest span shown (points that coincide still get an axis).

    Returns:
      (lower, upper).
    """
    centres = np.asarray(centres, np.float64)
    errors = np.zeros_like(centres) if errors is None else np.asarray(errors, np.float64)
    lo, hi = float(np.min(centres - errors)), float(np.max(centres + errors))
    if hi - lo < min_span:
        middle = (lo + hi) / 2
        lo, hi = middle - min_span / 2, middle + min_span / 2
    margin = pad * (hi - lo)
    return max(low - margin / 2, lo - margin), min(high + margin / 2, hi + margin)


def plot_comparison(results: dict, path, *, title: str) -> None:
    """Two panels for every method: forget against retain accuracy with UES contour lines (the
    methods scored through the teacher's centres), and forget against retain retrieval mAP (all
    methods, retraining included). Each panel's axes fit its points; over several seeds
    (`seeds.Spread` values) each point is the mean with a standard-deviation error bar each way,
    and the contours use the mean accuracies before."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(results.values()))
    f0, r0 = mean_of(first["forget_acc_before"]), mean_of(first["retain_acc_before"])
    alpha = first.get("ues_alpha", 0.5)
    fig, (ax_acc, ax_map) = plt.subplots(1, 2, figsize=(13, 6))
    panels = ((ax_acc, "forget_acc", "retain_acc", "accuracy"),
              (ax_map, "forget_map", "retain_map", "retrieval mAP"))
    # One colour per method in both panels.
    colours = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(results)}
    for ax, forget_key, retain_key, what in panels:
        points = {"teacher": (first[f"{forget_key}_before"], first[f"{retain_key}_before"])}
        points.update({name: (m[f"{forget_key}_after"], m[f"{retain_key}_after"])
                       for name, m in results.items() if f"{forget_key}_after" in m})
        xs, ys = ([100 * mean_of(p[i]) for p in points.values()] for i in (0, 1))
        dxs, dys = ([100 * std_of(p[i]) for p in points.values()] for i in (0, 1))
        for (name, _), x, y, dx, dy in zip(points.items(), xs, ys, dxs, dys, strict=True):
            teacher = name == "teacher"
            ax.errorbar(x, y, xerr=dx or None, yerr=dy or None, fmt="*" if teacher else "o",
                        markersize=13 if teacher else 6, capsize=3, zorder=3,
                        color="black" if teacher else colours[name])
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
        ax.set_xlim(*axis_limits(xs, dxs))
        ax.set_ylim(*axis_limits(ys, dys))
        ax.set_xlabel(f"forget {what} (%)  (lower is better)")
        ax.set_ylabel(f"retain {what} (%)  (higher is better)")
    # UES over the visible part of the accuracy panel; the levels fit what is in view.
    limits = ax_acc.get_xlim(), ax_acc.get_ylim()
    grid_f, grid_r = np.meshgrid(np.linspace(*limits[0], 201) / 100,
                                 np.linspace(*limits[1], 201) / 100)
    ues = alpha * (f0 - grid_f) / f0 - (1 - alpha) * (r0 - grid_r) / r0
    contours = ax_acc.contour(100 * grid_f, 100 * grid_r, ues, levels=8, colors="0.7",
                              linewidths=0.8)
    ax_acc.clabel(contours, fmt="UES %.2f", fontsize=7)
    ax_acc.set_xlim(*limits[0])  # contour() widens the view to its grid's margins
    ax_acc.set_ylim(*limits[1])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
