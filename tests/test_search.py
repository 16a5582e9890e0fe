"""The search of a forget request: statistics, calibration at a false-accept rate, agreement."""

import numpy as np
import pytest

from cure_jax.search import calibrate, calibrate_rates, flip_unit, photo_groups, scores


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _people(num_people, per_person, dim=16, spread=0.3, seed=0):
    """Unit embeddings of `num_people` clusters around random centres, and their labels."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(num_people, dim)))
    labels = np.repeat(np.arange(num_people), per_person)
    emb = _unit(centres[labels] + spread * rng.normal(size=(len(labels), dim)))
    return emb.astype(np.float32), labels


def test_flip_unit_normalises_the_sum_of_both_views():
    rng = np.random.default_rng(0)
    plain, mirrored = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    np.testing.assert_allclose(flip_unit(plain, mirrored), _unit(plain + mirrored), atol=1e-6)
    np.testing.assert_allclose(flip_unit(plain, None), _unit(plain), atol=1e-6)


def test_mean_statistic_is_the_cosine_to_the_normalised_mean_of_the_photos():
    photos, _ = _people(1, 4, seed=1)
    gallery, _ = _people(3, 5, seed=2)
    template = _unit(photos.mean(axis=0))
    np.testing.assert_allclose(scores(photos, gallery, statistic="mean"), gallery @ template,
                               atol=1e-6)
    # The order of the photos does not matter.
    np.testing.assert_allclose(scores(photos[::-1], gallery, statistic="mean"),
                               gallery @ template, atol=1e-6)


def test_max_statistic_is_the_best_single_photo():
    photos, _ = _people(1, 3, seed=1)
    gallery, _ = _people(3, 5, seed=2)
    expected = np.max([[g @ p for p in photos] for g in gallery], axis=1)
    np.testing.assert_allclose(scores(photos, gallery, statistic="max"), expected, atol=1e-6)
    with pytest.raises(ValueError, match="statistic"):
        scores(photos, gallery, statistic="median")


@pytest.mark.parametrize("statistic", ["mean", "max"])
def test_calibrated_threshold_accepts_exactly_the_allowed_share_of_impostors(statistic):
    emb, labels = _people(30, 8, spread=0.1)
    far = 0.01
    result = calibrate(emb, labels, template_size=3, far=far, statistic=statistic,
                       templates=300, seed=0)
    # 10 templates per person, each against the 29 * 8 images of the other people.
    assert result.templates == 300 and result.people == 30
    assert result.impostors == 300 * 29 * 8
    # At most `far` of the impostors lie above; only ties (templates that share their best
    # photo under "max") leave fewer.
    assert 0.9 * far < result.measured_far <= far
    # Well separated people: their other images are found.
    assert result.tar > 0.9


def test_a_lower_false_accept_rate_raises_the_threshold():
    emb, labels = _people(30, 8, spread=0.8)
    loose = calibrate(emb, labels, template_size=2, far=0.05, statistic="mean", templates=300)
    strict = calibrate(emb, labels, template_size=2, far=0.005, statistic="mean", templates=300)
    assert strict.threshold > loose.threshold
    assert strict.tar <= loose.tar


def test_several_rates_from_one_set_of_comparisons_equal_one_calibration_each():
    emb, labels = _people(30, 8, spread=0.8)
    kwargs = dict(template_size=2, statistic="mean", templates=300, seed=3)
    both = calibrate_rates(emb, labels, fars=(0.01, 0.001), **kwargs)
    assert both == (calibrate(emb, labels, far=0.01, **kwargs),
                    calibrate(emb, labels, far=0.001, **kwargs))
    assert both[1].threshold > both[0].threshold


def test_calibration_refuses_a_rate_its_comparisons_cannot_resolve():
    emb, labels = _people(3, 4)
    with pytest.raises(ValueError, match="too few to calibrate"):
        calibrate(emb, labels, template_size=2, far=1e-3, statistic="mean", templates=30)


def test_calibration_needs_two_people_with_more_images_than_photos():
    emb, labels = _people(5, 3)
    with pytest.raises(ValueError, match="at least 4 images"):
        calibrate(emb, labels, template_size=3, far=0.1, statistic="mean")


def test_photos_are_grouped_by_the_training_images_they_match():
    gallery, labels = _people(4, 6, spread=0.1)
    photos, _ = _people(4, 6, spread=0.1)  # the same people (same seed): their own images
    person_0, person_2 = photos[labels == 0][:3], photos[labels == 2][:2]
    stranger = _unit(np.ones((1, 16), np.float32) - 2 * (np.arange(16) % 2))  # matches nobody
    groups, matches = photo_groups(np.concatenate([person_0, stranger]), gallery,
                                   threshold=0.8)
    assert groups == [[0, 1, 2]]  # one person; the stranger gives no evidence
    assert matches[3] == 0 and np.all(matches[:3] >= 1)
    groups, _ = photo_groups(np.concatenate([person_0[:1], person_2, person_0[1:]]), gallery,
                             threshold=0.8)
    assert groups == [[0, 3, 4], [1, 2]]  # two people
