import numpy as np
import pytest

from tinykg.data import Interactions, SyntheticConfig, ctr_split, make_synthetic, topk_split


@pytest.fixture(scope="module")
def labelled() -> Interactions:
    return make_synthetic(SyntheticConfig.toy(), seed=0).interactions


def row_keys(interactions: Interactions) -> np.ndarray:
    return (interactions.user_index * interactions.num_items + interactions.item_index) * 2 + interactions.label


def test_ctr_split_partitions_rows_with_kgcn_sizes(labelled):
    train, valid, test = ctr_split(labelled, seed=1)
    num_rows = labelled.num_interactions
    assert len(valid) == int(num_rows * 0.2) and len(test) == int(num_rows * 0.2)
    assert len(train) + len(valid) + len(test) == num_rows
    # Every (user, item) pair is unique in the input, so the key multisets must partition it.
    together = np.sort(np.concatenate([row_keys(train), row_keys(valid), row_keys(test)]))
    np.testing.assert_array_equal(together, np.sort(row_keys(labelled)))
    assert len(np.intersect1d(row_keys(train), row_keys(test))) == 0
    assert all((part.num_users, part.num_items) == (labelled.num_users, labelled.num_items) for part in (train, valid, test))


def test_ctr_split_is_deterministic_per_seed(labelled):
    first, second, other = ctr_split(labelled, seed=5), ctr_split(labelled, seed=5), ctr_split(labelled, seed=6)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(row_keys(a), row_keys(b))
    assert not np.array_equal(row_keys(first[2]), row_keys(other[2]))


def test_ctr_split_rejects_bad_ratios(labelled):
    with pytest.raises(ValueError, match="ratios"):
        ctr_split(labelled, (0.5, 0.2, 0.2), seed=0)


def test_topk_split_is_per_user_and_keeps_a_training_positive():
    positives = make_synthetic(SyntheticConfig.toy(), seed=2).interactions.positives()
    train, valid, test = topk_split(positives, test_ratio=0.2, valid_ratio=0.1, seed=0)
    assert len(train) + len(valid) + len(test) == len(positives)
    assert len(np.intersect1d(row_keys(train), row_keys(test))) == 0
    assert len(np.intersect1d(row_keys(train), row_keys(valid))) == 0
    count = np.bincount(positives.user_index, minlength=positives.num_users)
    num_test = np.bincount(test.user_index, minlength=positives.num_users)
    num_train = np.bincount(train.user_index, minlength=positives.num_users)
    expected_test = np.minimum(np.rint(0.2 * count), np.maximum(count - 1, 0))
    np.testing.assert_array_equal(num_test, expected_test)
    assert (num_train[count > 0] >= 1).all()


def test_topk_split_is_deterministic_and_needs_positives():
    interactions = make_synthetic(SyntheticConfig.toy(), seed=2).interactions
    positives = interactions.positives()
    first, second = topk_split(positives, seed=3), topk_split(positives, seed=3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(row_keys(a), row_keys(b))
    with pytest.raises(ValueError, match="positives"):
        topk_split(interactions, seed=0)


def test_topk_split_leaves_single_positive_users_in_train():
    positives = Interactions.from_positives([0, 1, 1, 1, 1, 1], [0, 0, 1, 2, 3, 4], num_users=2, num_items=5)
    train, valid, test = topk_split(positives, test_ratio=0.2, valid_ratio=0.25, seed=0)
    assert (test.user_index == 1).sum() == 1 and (valid.user_index == 1).sum() == 1
    assert list(train.user_index).count(0) == 1
