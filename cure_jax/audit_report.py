"""The audit of one served forget request: its figures (`request_metrics`, kept as
metrics.json) and its report (`write_report`: report.md, a self-contained report.html, and
neighbours.png).

Three models are compared: the teacher, the model the request started from ("before": the
teacher, or the student of the request before) and the request's student ("after").
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from cure_jax import audit, documents, ledger
from cure_jax.evaluation import (
    evaluate_unlearning,
    others_pairs,
    unit,
    verification_metrics,
    verification_sets,
    verification_subset,
)
from cure_jax.search import flip_unit
from data_pipelines.splits import RequestSplit

NEIGHBOURS = 6  # training neighbours shown per photo


def person_label(data, found_records) -> int:
    """The identity most of a request's found images carry (the evaluator's view)."""
    return audit.search_quality(data.records.labels[np.asarray(found_records)],
                                data.records.labels[data.train_indices]).identity


def _pool(data, embeddings) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of every image of the training identities (training and held-out, no
    flip test, as `evaluate_unlearning`'s retrieval pool) and their labels."""
    records = np.concatenate([data.train_indices, data.holdout_indices])
    return (unit(np.concatenate([embeddings.train, embeddings.holdout])),
            data.records.labels[records])


def _photo_figures(search, photos_after, model, student_emb, data, config) -> dict:
    """Each photo's rank and AP against the found images, before and after, and its nearest
    training neighbours."""
    found = np.isin(data.train_indices, search.found)
    out = {}
    for when, photos, emb in (("before", search.photos, model.embeddings),
                              ("after", photos_after, student_emb)):
        train = flip_unit(emb.train, emb.train_flipped if config.eval.flip else None)
        ranks, aps = audit.photo_ranks(photos, train, found)
        out[when] = {"ranks": ranks.tolist(), "aps": aps.tolist(),
                     "neighbours": audit.nearest_neighbours(photos, train, NEIGHBOURS).tolist(),
                     "cs": audit.compactness(unit(emb.train[found]))}
    return out


def _verification(data, runs: dict, forgotten_names: list[str]) -> dict:
    """{set: {model: {accuracy, tar_at_far_1e-3, pairs}}} on every verification set: on the
    pairs that show none of `forgotten_names` where the set names its people, else on all."""
    out = {}
    for suffix, (name, verification) in verification_sets(data).items():
        keep = others_pairs(verification, forgotten_names)
        if keep is not None:
            verification = verification_subset(verification, keep)
        out[name + suffix] = {
            when: {k: v for k, v in verification_metrics(*emb.sets[name], verification).items()
                   if k in ("verification_accuracy", "tar_at_far_1e-3", "verification_pairs")}
            for when, emb in runs.items()}
    return out


def _people(data, entries, runs: dict) -> list[dict]:
    """Every person forgotten so far (one per request): retrieval under each model."""
    labels = [person_label(data, entry["found"]) for entry in entries]
    rows = [{"request": entry["number"], "identity": label, "name": data.identity_names[label]}
            for entry, label in zip(entries, labels, strict=True)]
    for when, emb in runs.items():
        pool, pool_labels = _pool(data, emb)
        measured = audit.person_retrieval(pool, pool_labels, labels)
        for row in rows:
            row[f"map_{when}"], row[f"r1_{when}"] = measured.get(row["identity"], (None, None))
    return rows


def request_metrics(*, config, data, teacher_run, model, student, student_emb, search,
                    photos_after, photos, entries, centres) -> dict:
    """Everything the report shows, as JSON-able values.

    Args:
      model: the `forget_stage.Model` the request started from; student: its student
        (`Backbone`); student_emb: the student's `EvalEmbeddings`.
      search: the `forget_stage.Search`; photos_after: the photos' unit embeddings under the
        student; photos: the `RequestPhotos`.
      entries: the ledger up to and including this request.
      centres: the teacher's class centres, or None (a teacher without an identity head).
    """
    candidates = data.records.labels[search.candidates]
    quality = audit.search_quality(data.records.labels[search.found], candidates)
    photo_figures = _photo_figures(search, photos_after, model, student_emb, data, config)
    runs = {"teacher": teacher_run.embeddings, "before": model.embeddings, "after": student_emb}
    calibration = search.calibration._asdict()
    metrics = {
        "request": entries[-1]["number"], "method": config.unlearn.method, "from": model.name,
        "photos": [{"file": f, "sha256": h} for f, h in zip(photos.files, photos.sha256,
                                                             strict=True)],
        "search": {**calibration, "found": len(search.found),
                   "candidates": len(search.candidates),
                   "expected_chance_matches": config.forget.far * len(search.candidates),
                   "forgotten_before": len(data.train_indices) - len(search.candidates),
                   "groups": search.groups,
                   "photo_matches": search.photo_matches.tolist(),
                   "photo_threshold": search.thresholds.photo.threshold,
                   "confirm_threshold": search.thresholds.confirm.threshold,
                   "confirm_far": search.thresholds.confirm.far,
                   "confirmed": search.confirmed},
        "labels": {**quality._asdict(), "name": data.identity_names[quality.identity]},
        "photo_figures": photo_figures,
        "people": _people(data, entries, runs),
    }
    metrics["verification"] = _verification(data, runs,
                                            [row["name"] for row in metrics["people"]])
    if centres is not None:
        forget_ids = np.unique([row["identity"] for row in metrics["people"]])
        split = RequestSplit.of(data.records.labels, data.train_indices, data.holdout_indices,
                                forget_ids)
        cumulative = evaluate_unlearning(
            teacher=teacher_run.embeddings, student=student_emb,
            teacher_params=teacher_run.backbone.params, student_params=student.params,
            centres_CxD=centres, split=split, data=data, config=config)
        metrics["cumulative"] = cumulative.metrics
    return metrics


def neighbours_figure(path: pathlib.Path, photo_images, train_images, figures: dict,
                      found_N: np.ndarray) -> None:
    """Each photo (rows) beside its nearest training images before and after unlearning; a red
    frame marks an image the search found (the person's, now forgotten)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(photo_images), 3 + 2 * NEIGHBOURS  # photo, gap, before, gap, after
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.0 + 0.5), squeeze=False)
    for r in range(rows):
        cells = {0: (photo_images[r], None)}
        for offset, when in ((2, "before"), (3 + NEIGHBOURS, "after")):
            for i, n in enumerate(figures[when]["neighbours"][r]):
                cells[offset + i] = (train_images[n], bool(found_N[n]))
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c not in cells:
                ax.axis("off")
                continue
            image, is_found = cells[c]
            ax.imshow(image)
            for spine in ax.spines.values():
                spine.set_edgecolor("red" if is_found else "0.7")
                spine.set_linewidth(3 if is_found else 1)
    axes[0, 0].set_title("photo", fontsize=9)
    axes[0, 2 + NEIGHBOURS // 2].set_title("nearest before", fontsize=9)
    axes[0, 3 + NEIGHBOURS + NEIGHBOURS // 2].set_title("nearest after", fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def history(workdir: pathlib.Path, number: int) -> list[dict]:
    """The metrics.json of requests 1 .. number - 1."""
    out = []
    for earlier in range(1, number):
        path = ledger.request_folder(workdir, earlier) / "metrics.json"
        out.append(json.loads(path.read_text()))
    return out


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else (
        f"{value:.{digits}f}")


def _search_blocks(m: dict) -> list[tuple]:
    s, lab = m["search"], m["labels"]
    how = ("the cosine between its flip-test unit embedding and the template, the normalised "
           "mean of the photos' flip-test unit embeddings" if s["statistic"] == "mean" else
           "the highest cosine between its flip-test unit embedding and any photo's")
    return [
        ("h2", "Search"),
        ("p", f"A training image's score is {how}. The threshold is calibrated on the model's "
              f"verification people: {s['templates']} templates of {s['template_size']} "
              f"image(s) of one person ({s['people']} people) scored against every image of "
              f"every other person, {s['impostors']:,} impostor comparisons; at most "
              f"{s['far']:g} of them score above it. Images forgotten by earlier requests are "
              "not searched. No identity label is read by the search."),
        ("table", ["figure", "value"], [
            ["photos", str(len(m["photos"]))],
            ["false-accept rate (target / measured on the calibration)",
             f"{s['far']:g} / {s['measured_far']:.2e}"],
            ["threshold", f"{s['threshold']:.4f}"],
            ["an unseen person's other images found at it (TAR)", _pct(s["tar"]) + "%"],
            ["training images searched", str(s["candidates"])],
            ["forgotten by earlier requests (not searched)", str(s["forgotten_before"])],
            ["expected chance matches (FAR x images searched)",
             f"{s['expected_chance_matches']:.1f}"],
            ["**images found (the forget set)**", f"**{s['found']}**"],
            [f"of them above the confirmation threshold {s['confirm_threshold']:.4f} "
             f"(false-accept rate {s['confirm_far']:g}; the person is in the training set)",
             str(s["confirmed"])]]),
        ("p", f"With the identity labels (the evaluator's view): {lab['precision'] * 100:.2f}% "
              f"of the images found are of `{lab['name']}` (precision), and they are "
              f"{lab['recall'] * 100:.2f}% of that identity's training images (recall); "
              f"{lab['others']} image(s) of other people were found and {lab['missed']} of "
              f"`{lab['name']}`'s were missed."),
    ]


def _photo_blocks(m: dict) -> list[tuple]:
    s, fig = m["search"], m["photo_figures"]
    rows = []
    for i, photo in enumerate(m["photos"]):
        rows.append([str(i + 1), f"`{photo['file']}`", f"`{photo['sha256'][:16]}`",
                     str(s["photo_matches"][i]),
                     f"{fig['before']['ranks'][i]} -> {fig['after']['ranks'][i]}",
                     f"{_pct(fig['before']['aps'][i])} -> {_pct(fig['after']['aps'][i])}"])
    limit = (f" Matches alone: the images found that the photo matches by itself (the "
             f"one-photo threshold {s['photo_threshold']:.3f}); the photos that match any fall "
             f"into {len(s['groups'])} group(s) sharing images: one person.")
    return [
        ("h2", "The photos"),
        ("p", "Rank: where the best-ranked image found stands when the photo queries every "
              "training image (1 = nearest), before and after; AP: the photo's average precision "
              "over the images found, in %." + limit),
        ("table", ["photo", "file", "sha256 (first 16)", "matches alone", "rank", "AP"], rows),
        ("img", "neighbours.png",
         "Each photo and its nearest training images before (left) and after (right) "
         "unlearning; red frames: images the search found (forgotten)."),
    ]


def _person_blocks(m: dict) -> list[tuple]:
    person = m["people"][-1]
    fig = m["photo_figures"]
    rows = [[name, _num(fig[when]["cs"]) if when in fig else "-",
             _pct(person.get(f"map_{when}")), _pct(person.get(f"r1_{when}"))]
            for when, name in (("teacher", "teacher"), ("before", f"before ({m['from']})"),
                               ("after", "after (this request's student)"))]
    return [
        ("h2", f"The person (`{person['name']}`)"),
        ("p", "Compactness: mean pairwise cosine of the images found. mAP and R@1 (in %): "
              "leave-one-out retrieval of the person's images (training and held-out) among "
              "every image of the training identities, by identity label."),
        ("table", ["model", "compactness", "mAP", "R@1"], rows),
    ]


def _everyone_else_blocks(m: dict) -> list[tuple]:
    rows = [[name, when, _pct(v["verification_accuracy"]), _pct(v["tar_at_far_1e-3"]),
             str(v.get("verification_pairs", "-"))]
            for name, per_model in m["verification"].items()
            for when, v in per_model.items()]
    blocks = [("h2", "Everyone else"),
              ("p", "Verification on the pairs of the verification set (flip test, 10 folds), "
                    "in %; where the set names its people, on the pairs that show none of the "
                    "people forgotten so far."),
              ("table", ["set", "model", "accuracy", "TAR@FAR=1e-3", "pairs"], rows)]
    c = m.get("cumulative")
    if c:
        blocks += [
            ("p", "Retained identities (every training identity not forgotten so far), "
                  "teacher -> this student, in %: retrieval mAP "
                  f"{_pct(c['retain_map_before'])} -> {_pct(c['retain_map_after'])}, R@1 "
                  f"{_pct(c['retain_r1_before'])} -> {_pct(c['retain_r1_after'])}; accuracy "
                  "against the teacher's class centres "
                  f"{_pct(c['retain_acc_before'])} -> {_pct(c['retain_acc_after'])}."),
            ("h2", "Membership inference"),
            ("p", "Logistic-regression attack on loss, confidence and entropy under the "
                  "teacher's identity head: the training images of every person forgotten so "
                  "far against their held-out images, balanced, 5-fold cross-validated (50% = "
                  "cannot tell)."),
            ("table", ["model", "attack accuracy"],
             [["teacher", _pct(c.get("mia_before"))], ["this student", _pct(c.get("mia_after"))]]),
        ]
    return blocks


def _tracking_blocks(m: dict, earlier: list[dict]) -> list[tuple]:
    """Every forgotten person's retrieval, and the retained verification, after each request."""
    states = [*earlier, m]
    header = ["person (request)", "teacher"] + [f"after {s['request']}" for s in states]
    rows = []
    for person in m["people"]:
        cells = [f"`{person['name']}` ({person['request']})",
                 f"{_pct(person['map_teacher'])} / {_pct(person['r1_teacher'])}"]
        for state in states:
            match = [p for p in state["people"] if p["request"] == person["request"]]
            cells.append("-" if not match else
                         f"{_pct(match[0]['map_after'])} / {_pct(match[0]['r1_after'])}")
        rows.append(cells)
    for name in m["verification"]:
        cells = [f"verification `{name}`",
                 _pct(m["verification"][name]["teacher"]["verification_accuracy"])]
        cells += [_pct(s["verification"][name]["after"]["verification_accuracy"])
                  for s in states]
        rows.append(cells)
    return [("h2", "Every person forgotten so far"),
            ("p", "Retrieval mAP / R@1 (in %) of each forgotten person under the teacher and "
                  "after each request, and the verification accuracy of everyone else."),
            ("table", header, rows)]


def _provenance_blocks(m: dict, entry: dict, config_text: str) -> list[tuple]:
    p = entry["provenance"]
    rows = [["command", f"`{entry['command']}`"],
            ["photos", f"`{entry['photos_folder']}` (request digest `{entry['photos_key']}`)"],
            ["started / finished (UTC)", f"{entry['started']} / {entry.get('finished') or '-'}"],
            ["started from", m["from"]],
            ["teacher checkpoint", f"`{p['teacher_checkpoint']}` sha256 "
                                   f"`{p['teacher_checkpoint_sha256']}`"],
            ["teacher weights sha256", f"`{p['teacher_weights_sha256']}`"],
            ["student checkpoint",
             f"`{entry['student']}` sha256 `{p['student_checkpoint_sha256']}`"],
            ["student weights sha256", f"`{p['student_weights_sha256']}`"],
            ["config", f"`{p['config']}` sha256 `{p['config_sha256']}`"]]
    return [("h2", "Provenance"),
            ("p", "Checkpoint digests: sha256 over the checkpoint folder's files (sorted relative "
                  "paths and contents); weights digests: sha256 over the model's arrays in tree "
                  "order, independent of the file format."),
            ("table", ["item", "value"], rows),
            ("h2", "Config"), ("pre", config_text)]


def report_blocks(m: dict, entry: dict, earlier: list[dict], config_text: str) -> list[tuple]:
    """The whole audit report of request `m["request"]`."""
    s = m["search"]
    summary = (f"{len(m['photos'])} photo(s) of one person from `{entry['photos_folder']}`. "
               f"The search found **{s['found']}** of the {s['candidates']} training images "
               f"searched at the false-accept rate {s['far']:g}, and `{m['method']}` made the "
               f"model forget them, starting from the {m['from']}. The student is saved in "
               f"`{entry['student']}`.")
    return ([("h1", f"Forget request {m['request']}"), ("p", summary)]
            + _search_blocks(m) + _photo_blocks(m) + _person_blocks(m)
            + _everyone_else_blocks(m) + _tracking_blocks(m, earlier)
            + _provenance_blocks(m, entry, config_text))


def write_report(folder: pathlib.Path, m: dict, entry: dict, earlier: list[dict], *, data,
                 photos) -> None:
    """neighbours.png, report.md and the self-contained report.html of one request."""
    found_N = np.isin(data.train_indices, np.asarray(entry["found"]))
    neighbours_figure(folder / "neighbours.png", photos.images,
                      data.records.images[data.train_indices], m["photo_figures"], found_N)
    blocks = report_blocks(m, entry, earlier, (folder / "config.json").read_text().strip())
    documents.write(blocks, folder, "report", title=f"Forget request {m['request']}")
