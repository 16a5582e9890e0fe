"""The decisions of a forget request, on arrays: refusals, sizing, the method's split, resuming."""

import numpy as np
import pytest

from cure_jax import config as config_lib
from cure_jax import forget_stage, ledger, sharding
from cure_jax.forget_stage import RequestRefused, Search, Thresholds
from cure_jax.methods.dispersion import check_dispersion
from cure_jax.search import Calibration

SEARCH, CONFIRM = 0.5, 0.6


def _calibration(threshold, size, far=1e-3):
    return Calibration(threshold, far, far, 0.9, 10**6, 100, 50, size, "mean")


def _search(found_count, *, candidates=1000, groups=((0, 1, 2),), found_score=0.8,
            confirmed_count=None):
    """A search that finds the first `found_count` candidates at `found_score`, the first
    `confirmed_count` of them (default: all) above the confirmation threshold."""
    candidates_C = np.arange(candidates)
    scores = np.full(candidates, 0.1, np.float32)
    scores[:found_count] = found_score
    confirmed_count = found_count if confirmed_count is None else confirmed_count
    scores[:confirmed_count] = max(found_score, CONFIRM + 0.1)
    thresholds = Thresholds(_calibration(SEARCH, 3), _calibration(CONFIRM, 3, 1e-4),
                            _calibration(0.7, 1))
    confirmed = int(np.sum(scores[:found_count] > CONFIRM))
    return Search(candidates_C[:found_count], candidates_C, scores, np.zeros((3, 4)),
                  thresholds, confirmed, [list(g) for g in groups], np.array([5, 4, 6]))


@pytest.fixture
def config():
    return config_lib.load_config("default")


def test_a_person_with_many_images_is_served(config):
    forget_stage.refuse_unservable(_search(30), config)


def test_photos_of_several_people_are_refused(config):
    with pytest.raises(RequestRefused, match="do not show one person: photos 1, 2 and photos 3"):
        forget_stage.refuse_unservable(_search(30, groups=((0, 1), (2,))), config)


def test_a_person_who_matches_no_training_image_is_refused(config):
    with pytest.raises(RequestRefused, match="no training image matches.*best score is 0.100"):
        forget_stage.refuse_unservable(_search(0), config)


def test_a_person_with_a_single_training_image_is_refused(config):
    with pytest.raises(RequestRefused, match="only 1 training image"):
        forget_stage.refuse_unservable(_search(1), config)


def test_a_request_covering_most_of_the_training_set_is_refused(config):
    with pytest.raises(RequestRefused, match="600 of the 1000 training images"):
        forget_stage.refuse_unservable(_search(600), config)
    forget_stage.refuse_unservable(_search(500), config)  # at the limit: served


def test_a_look_alike_whose_images_barely_pass_the_search_is_refused(config):
    # Twenty images just above the search threshold, one above the confirmation threshold:
    # someone who resembles a training person, not that person.
    with pytest.raises(RequestRefused, match="closely enough: 20 image.*but 1 above the "
                                             "confirmation threshold 0.600"):
        forget_stage.refuse_unservable(_search(20, found_score=0.55, confirmed_count=1),
                                       config)
    # Two confirmed images are enough (forget.min_images).
    forget_stage.refuse_unservable(_search(20, found_score=0.55, confirmed_count=2), config)


def test_photos_that_match_nothing_alone_give_no_evidence_of_another_person(config):
    forget_stage.refuse_unservable(_search(30, groups=((0, 2),)), config)


def test_the_method_is_sized_to_the_request(config):
    mesh = sharding.make_mesh(1)
    sized = forget_stage.request_config(config, 32, mesh)
    # 32 images: batches of 32, one step an epoch, 200 steps; the schedule keeps its shape.
    assert sized.student.batch_size == 32
    assert sized.student.epochs == 200
    assert sized.student.milestones == pytest.approx((100.0, 150.0))
    assert sized.cure.refresh_every == pytest.approx(200.0)
    assert sized.cure.forget_clusters == 4
    small = forget_stage.request_config(config, 3, mesh)
    assert (small.student.batch_size, small.cure.forget_clusters) == (3, 1)
    assert small.student.epochs == 200
    big = forget_stage.request_config(config, 300, mesh)
    assert big.student.batch_size == 64 and big.student.epochs == 50  # 4 steps an epoch


@pytest.mark.parametrize("method", ["dispersion", "cure+dispersion"])
def test_a_method_of_p_x_k_batches_gets_whole_groups(config, method):
    mesh = sharding.make_mesh(1)
    config = config_lib.apply_overrides(config, [f"unlearn.method={method}"])
    # 47 images and groups of 4: batches of 44 = 11 groups x 4, 200 steps of dispersion.
    sized = forget_stage.request_config(config, 47, mesh)
    assert sized.student.batch_size == 44
    assert (sized.dispersion.groups_per_batch, sized.dispersion.images_per_group) == (11, 4)
    assert sized.dispersion.epochs == sized.student.epochs == 200
    check_dispersion(sized, 47, 1000)  # what refused such a request before
    # CURE's batches stay whole: 47.
    cure = forget_stage.request_config(
        config_lib.apply_overrides(config, ["unlearn.method=cure"]), 47, mesh)
    assert cure.student.batch_size == 47 and cure.dispersion == config.dispersion
    with pytest.raises(RequestRefused, match="multiple of 4"):
        forget_stage.request_config(config, 3, mesh)


def test_the_method_sees_the_images_found_and_keeps_everything_else_not_forgotten():
    class Data:
        train_indices = np.array([0, 2, 3, 5, 8, 9])

    split = forget_stage.request_split(Data, np.array([3, 8]), [9])
    np.testing.assert_array_equal(split.forget, [3, 8])
    np.testing.assert_array_equal(split.retain, [0, 2, 5])
    assert len(split.forget_identities) == 0  # no labels


def test_a_request_after_an_interrupted_one_is_refused():
    entries = [{"number": 1, "status": ledger.SERVED, "photos_key": "a"},
               {"number": 2, "status": ledger.STARTED, "photos_key": "b",
                "photos_folder": "/photos/b"}]
    assert forget_stage.plan(entries, "b") == (2, entries[1])  # resumes
    assert forget_stage.plan(entries[:1], "a") == (1, entries[0])  # served before
    assert forget_stage.plan(entries[:1], "c") == (2, None)  # the next one
    with pytest.raises(RequestRefused, match="request 2 .*/photos/b.* was interrupted"):
        forget_stage.plan(entries, "c")


@pytest.mark.parametrize("key", ["dispersion.groups=labels", "baselines.labels=true"])
def test_settings_that_read_labels_are_refused(config, key):
    with pytest.raises(config_lib.ConfigError, match="carries no labels"):
        forget_stage.check_config(config_lib.apply_overrides(config, [key]))
