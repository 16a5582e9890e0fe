"""How well the forget command's search finds people, over many requests, without unlearning.

    python tools/search_check.py --config default --workdir runs/default
    python tools/search_check.py --config lfw --workdir runs/lfw --identities 40 --unseen 40

For every training identity (or the first `--identities`) a request of `--count` of its held-out
images (as `tools/make_request.py --identity` writes them) is searched exactly as
`python -m cure_jax.forget` searches (same calibration, same agreement check, same refusals),
and the images found are compared with the identity's training images: recall, and the share
of the images found that belong to someone else. `--unseen` requests of people outside the
training set (fresh synthetic renders, or person folders the training set leaves out) should
all be refused with "no training image matches"; one that is served lists whose training images
it found. Prints a summary and writes `--output` JSON.

Beside what the calibrated search finds, two ceilings that no threshold can pass, read with the
labels: `any_threshold` counts the requests for which some threshold on the request's own
scores would reach the target (recall >= 95% with at most 1% of the images found someone
else's), and `true_centroid` the identities for which some threshold on the similarity to the
mean of the identity's own training embeddings would. They tell a miscalibrated threshold
(the search far below `any_threshold`) from an embedding that mixes people (both low).
`nearest_centroid_same_person` is the share of training images nearer their own person's
centroid than any other's, and `nearest_neighbour_same_person` the share whose nearest other
training image shows the same person: what a search that grows through neighbours (a graph,
query expansion) could at best build on where a centroid fails.
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import cure_jax  # noqa: E402, F401  (XLA flags)
from cure_jax import cli, forget_stage, search, stages  # noqa: E402
from cure_jax.request_photos import holdout_records, unseen_synthetic_faces  # noqa: E402
from data_pipelines.sources.image_folder import decode_image, scan_image_folder  # noqa: E402


def unseen_requests(config, data, number: int, count: int) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 [count, S, S, 3]) of `number` people outside the training set."""
    if config.data.source == "synthetic":
        return [(f"unseen_{u}", unseen_synthetic_faces(config.data, u, count))
                for u in range(number)]
    folders = scan_image_folder(config.data.root)
    names = [n for n, files in folders.items()
             if n not in data.identity_names and len(files) >= count][:number]
    return [(n, np.stack([decode_image(f, crop_box=tuple(config.data.crop_box) or None,
                                       image_size=config.data.image_size)
                          for f in folders[n][:count]])) for n in names]


TARGET_RECALL, TARGET_CONTAMINATION = 0.95, 0.01


def reachable(scores_N: np.ndarray, own_N: np.ndarray) -> bool:
    """Whether some threshold on `scores_N` finds at least TARGET_RECALL of the `own_N` images
    with at most TARGET_CONTAMINATION of the images found belonging to others."""
    own_scores = np.sort(scores_N[own_N])[::-1]
    threshold = own_scores[int(np.ceil(TARGET_RECALL * len(own_scores))) - 1]
    found = scores_N >= threshold  # the highest threshold that reaches the recall
    return int(np.sum(found & ~own_N)) <= TARGET_CONTAMINATION * int(np.sum(found))


def ceilings(train_NxD: np.ndarray, train_labels_N: np.ndarray, requests, statistic: str) -> dict:
    """Requests whose target some threshold could reach: on the request's own scores, and on
    the similarity to the identity's true training centroid (module docstring)."""
    any_threshold = true_centroid = 0
    for label, photos_PxD in requests:
        own = train_labels_N == label
        any_threshold += reachable(search.scores(photos_PxD, train_NxD, statistic=statistic), own)
        centroid = train_NxD[own].sum(axis=0)
        true_centroid += reachable(train_NxD @ (centroid / np.linalg.norm(centroid)), own)
    return {"any_threshold": any_threshold, "true_centroid": true_centroid}


def nearest_neighbour_agreement(train_NxD: np.ndarray, labels_N: np.ndarray,
                                chunk: int = 2048) -> float:
    """Share of the images whose nearest other image (cosine) has the same label."""
    same = 0
    for lo in range(0, len(train_NxD), chunk):
        sims = train_NxD[lo:lo + chunk] @ train_NxD.T
        sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -np.inf  # not itself
        same += int(np.sum(labels_N[sims.argmax(axis=1)] == labels_N[lo:lo + chunk]))
    return same / len(train_NxD)


def nearest_centroid_agreement(train_NxD: np.ndarray, labels_N: np.ndarray) -> float:
    """Share of the images whose most similar label centroid (normalised mean) is their own."""
    people = np.unique(labels_N)
    centroids = np.stack([train_NxD[labels_N == person].sum(axis=0) for person in people])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return float(np.mean(people[(train_NxD @ centroids.T).argmax(axis=1)] == labels_N))


def outcome(config, data, model, photos, calibrated, label=None) -> dict:
    """One request searched (`photos`: its unit embeddings): what was found (with `label`,
    recall and contamination; without, whose training images they are) or why it was
    refused."""
    try:
        found = forget_stage.search(config, data, model, photos, [], calibrated=calibrated)
    except forget_stage.RequestRefused as refusal:
        reason = str(refusal).split(":")[0].split(" at ")[0]
        return {"refused": reason}
    result = {"found": len(found.found)}
    labels = data.records.labels
    if label is None:  # someone outside the training set, served: whose images were found
        people = collections.Counter(data.identity_names[k] for k in labels[found.found])
        result["people_found"] = dict(people.most_common())
    else:
        hits = int(np.sum(labels[found.found] == label))
        result.update(recall=hits / int(np.sum(labels[data.train_indices] == label)),
                      others=len(found.found) - hits,
                      contamination=(len(found.found) - hits) / len(found.found))
    return result


def summarise(results: list[dict], unseen: list[dict]) -> dict:
    served = [r for r in results if "found" in r]
    good = [r for r in served
            if r["recall"] >= TARGET_RECALL and r["contamination"] <= TARGET_CONTAMINATION]
    summary = {
        "requests": len(results), "served": len(served),
        "recall>=95%_and_contamination<=1%": len(good),
        "refused": dict(collections.Counter(r["refused"] for r in results if "refused" in r)),
        "unseen_requests": len(unseen),
        "unseen_refused_no_match": sum(r.get("refused", "").startswith("no training image")
                                       for r in unseen),
        "unseen_served": sum("found" in r for r in unseen),
    }
    if served:
        for key in ("recall", "contamination"):
            values = np.array([r[key] for r in served])
            summary[key] = {"mean": float(values.mean()), "min": float(values.min()),
                            "median": float(np.median(values)), "max": float(values.max())}
        summary["others_found_total"] = int(sum(r["others"] for r in served))
        summary["found_total"] = int(sum(r["found"] for r in served))
    return summary


def main(argv=None) -> int:
    parser = cli.run_parser("python tools/search_check.py", __doc__)
    parser.add_argument("--identities", type=int, default=0, help="first N identities (0: all)")
    parser.add_argument("--count", type=int, default=5, help="photos per request")
    parser.add_argument("--unseen", type=int, default=20, help="requests of unseen people")
    parser.add_argument("--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    config, workdir = cli.load_run_config(args)
    mesh, data = forget_stage.open_run(config, workdir)
    teacher_run = stages.teacher_stage(config, workdir, mesh, data)
    model = forget_stage.starting_model(workdir, 1, teacher_run)
    calibrated = forget_stage.calibrations(config, data, model, args.count)
    print(f"threshold {calibrated.search.threshold:.4f} ({config.forget.statistic}, "
          f"{args.count} photos, FAR {config.forget.far:g}; TAR on unseen verification people "
          f"{calibrated.search.tar:.4f}; confirmation threshold "
          f"{calibrated.confirm.threshold:.4f} at {calibrated.confirm.far:g}; agreement "
          f"threshold {calibrated.photo.threshold:.4f})")
    requests = []  # (label or None, name, images)
    for label in range(args.identities or data.num_classes):
        try:
            records = holdout_records(data, label, args.count)
        except ValueError:
            continue  # too few held-out images for a request of this size
        requests.append((label, data.identity_names[label], data.records.images[records]))
    requests += [(None, name, images)
                 for name, images in unseen_requests(config, data, args.unseen, args.count)]
    # One embedding pass over every request's photos.
    units = forget_stage.embed_photos(np.concatenate([r[2] for r in requests]), model.backbone,
                                      teacher_run, config, mesh)
    results, unseen = [], []
    for i, (label, name, _) in enumerate(requests):
        photos = units[i * args.count:(i + 1) * args.count]
        result = outcome(config, data, model, photos, calibrated, label)
        if label is None:
            unseen.append({"person": name, **result})
        else:
            results.append({"identity": name, **result})
    summary = summarise(results, unseen)
    train_NxD, _ = forget_stage.unit_sets(model.embeddings, config)
    labelled = [(label, units[i * args.count:(i + 1) * args.count])
                for i, (label, _, _) in enumerate(requests) if label is not None]
    train_labels = data.records.labels[data.train_indices]
    summary["ceilings"] = ceilings(train_NxD, train_labels, labelled, config.forget.statistic)
    summary["ceilings"]["nearest_centroid_same_person"] = nearest_centroid_agreement(
        train_NxD, train_labels)
    summary["ceilings"]["nearest_neighbour_same_person"] = nearest_neighbour_agreement(
        train_NxD, train_labels)
    print(json.dumps(summary, indent=1))
    if args.output:
        args.output.write_text(json.dumps(
            {"summary": summary, "threshold": calibrated.search._asdict(),
             "confirmation": calibrated.confirm._asdict(), "requests": results,
             "unseen": unseen}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
