"""The audit report of a forget request, from its figures: every key figure reaches the page."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cure_jax import audit_report, documents
from data_pipelines.datasets import Verification
from data_pipelines.pipelines import ArraySource


def _metrics(number=2, cumulative=True):
    people = [{"request": j, "identity": 10 + j, "name": f"person_{j}", "map_teacher": 0.8,
               "r1_teacher": 0.9, "map_before": 0.7, "r1_before": 0.85, "map_after": 0.05 * j,
               "r1_after": 0.1 * j} for j in range(1, number + 1)]
    ver = {"teacher": {"verification_accuracy": 0.9517, "tar_at_far_1e-3": 0.6167},
           "before": {"verification_accuracy": 0.95, "tar_at_far_1e-3": 0.60},
           "after": {"verification_accuracy": 0.9433, "tar_at_far_1e-3": 0.55}}
    m = {"request": number, "method": "cure", "from": f"request {number - 1}",
         "photos": [{"file": f"p{i}.png", "sha256": f"{i}" * 64} for i in range(3)],
         "search": {"threshold": 0.4321, "far": 1e-3, "measured_far": 9.9e-4, "tar": 0.77,
                    "impostors": 3_960_000, "templates": 4000, "people": 100,
                    "template_size": 3, "statistic": "mean", "found": 31, "candidates": 6368,
                    "expected_chance_matches": 6.4, "forgotten_before": 32,
                    "groups": [[0, 1, 2]], "photo_matches": [14, 9, 21],
                    "photo_threshold": 0.7612, "confirm_threshold": 0.8765,
                    "confirm_far": 1e-4, "confirmed": 29},
         "labels": {"identity": 12, "name": "person_2", "precision": 1.0, "recall": 0.96875,
                    "others": 0, "missed": 1},
         "photo_figures": {when: {"ranks": [1, 1, 2], "aps": [0.9, 0.8, 0.7],
                                  "neighbours": [[0] * 6] * 3, "cs": 0.72}
                           for when in ("before", "after")},
         "people": people, "verification": {"verification": ver}}
    if cumulative:
        m["cumulative"] = {"retain_map_before": 0.73, "retain_map_after": 0.70,
                           "retain_r1_before": 0.93, "retain_r1_after": 0.92,
                           "retain_acc_before": 0.95, "retain_acc_after": 0.90,
                           "mia_before": 0.5375, "mia_after": 0.5125}
    return m


ENTRY = {"command": "python -m cure_jax.forget --photos req", "photos_folder": "/req",
         "photos_key": "k" * 64, "started": "2026-11-30T10:00:00Z",
         "finished": "2026-11-30T10:05:00Z", "student": "requests/0002/student",
         "provenance": {"teacher_checkpoint": "teacher/checkpoints/800",
                        "teacher_checkpoint_sha256": "a" * 64, "teacher_weights_sha256": "b" * 64,
                        "student_checkpoint_sha256": "c" * 64, "student_weights_sha256": "d" * 64,
                        "config": "requests/0002/config.json", "config_sha256": "e" * 64}}


@pytest.mark.parametrize("cumulative", [True, False])
def test_the_page_holds_the_key_figures(tmp_path, cumulative):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "neighbours.png")
    earlier = [_metrics(1)]
    blocks = audit_report.report_blocks(_metrics(2, cumulative), ENTRY, earlier, '{"a": 1}')
    documents.write(blocks, tmp_path, "report", title="T")
    page = (tmp_path / "report.html").read_text()
    for figure in ("<strong>31</strong>", "0.4321", "96.88%", "100.00%", "95.17", "61.67",
                   "94.33", "person_1", "person_2", "after 1", "after 2", "5.00 / 10.00",
                   "10.00 / 20.00", "a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64,
                   "2026-11-30T10:05:00Z", "0.761", "0.8765",
                   "python -m cure_jax.forget --photos req",
                   "data:image/png;base64,"):
        assert figure in page, figure
    assert ("Membership inference" in page) == cumulative
    if cumulative:
        assert "53.75" in page and "51.25" in page


def test_everyone_else_is_scored_on_the_pairs_without_the_forgotten_people():
    # Ten people, two images each; each person's own pair, and each with the next one.
    people = 10
    source = ArraySource(np.zeros((2 * people, 1, 1, 3), np.uint8), np.repeat(np.arange(people), 2))
    first = 2 * np.arange(people)
    verification = Verification(
        source, np.concatenate([first, first]),
        np.concatenate([first + 1, (first + 2) % (2 * people)]),
        np.arange(2 * people) < people, np.arange(2 * people) % 2,
        names=tuple(f"p{i}" for i in range(people)))
    emb = np.random.default_rng(0).normal(size=(2 * people, 8)).astype(np.float32)
    runs = {"after": SimpleNamespace(sets={"verification": (emb, None)})}

    def pairs(data, forgotten):
        return audit_report._verification(data, runs, forgotten)["verification"]["after"][
            "verification_pairs"]

    data = SimpleNamespace(verification=verification, bin_verifications={})
    assert pairs(data, ["p3"]) == 17  # p3's own pair and its two pairs across left out
    assert pairs(data, []) == 20
    unnamed = SimpleNamespace(verification=dataclasses.replace(verification, names=None),
                              bin_verifications={})
    assert pairs(unnamed, ["p3"]) == 20  # people not named: every pair counts
