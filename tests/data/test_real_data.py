"""The three real datasets in $TINYKG_DATA_DIR: statistics, load time, exact Last.FM preprocessing."""

import time

import numpy as np
import pytest

from tinykg.data import detect_format, load_dataset

pytestmark = pytest.mark.data

LASTFM_STATS = {
    "users": 1872, "items": 3846, "interactions": 42346, "positives": 21173,
    "entities": 9366, "relations": 60, "triples": 15518,
}


def test_lastfm_reference_has_published_statistics(lastfm_reference):
    assert lastfm_reference.info() == LASTFM_STATS


def test_lastfm_raw_preprocessing_matches_kgcn_output_exactly(data_dir, lastfm_reference):
    directory = data_dir / "lastfm-kgcn"
    assert detect_format(directory) == "lastfm-raw"
    dataset = load_dataset(directory)
    assert dataset.info() == LASTFM_STATS
    reference = lastfm_reference.interactions
    # Row for row, in file order: same users, items, labels and the same sampled negatives.
    np.testing.assert_array_equal(dataset.interactions.user_index, reference.user_index)
    np.testing.assert_array_equal(dataset.interactions.item_index, reference.item_index)
    np.testing.assert_array_equal(dataset.interactions.label, reference.label)
    np.testing.assert_array_equal(dataset.kg.triples(), lastfm_reference.kg.triples())


def test_lastfm_raw_preprocessing_depends_on_seed(data_dir):
    other = load_dataset(data_dir / "lastfm-kgcn", seed=7)
    reference = load_dataset(data_dir / "lastfm-kgcn")
    np.testing.assert_array_equal(other.interactions.label, reference.interactions.label)
    assert not np.array_equal(other.interactions.item_index, reference.interactions.item_index)


def test_book_crossing_has_published_statistics(book_crossing):
    assert book_crossing.info() == {
        "users": 17860, "items": 14967, "interactions": 139746, "positives": 69873,
        "entities": 77903, "relations": 25, "triples": 151500,
    }


def test_recbole_test_kg_statistics(data_dir):
    directory = data_dir / "recbole-test-kg"
    assert detect_format(directory) == "recbole"
    dataset = load_dataset(directory)
    info = dataset.info()
    # 171 users, 200 items, 24 relations and 11,338 triples as published; 6,035 entities are
    # the KG's 6,033 plus 2 interacted items without a .link entry. Of the 6,017 rows, 4,090 have
    # rating >= 4; negatives fall 142 short of 4,090 because user "1" rated every item and user
    # "59" has 81 unrated items for 100 positives.
    assert info == {
        "users": 171, "items": 200, "interactions": 8038, "positives": 4090,
        "entities": 6035, "relations": 24, "triples": 11338,
    }
    all_rows = load_dataset(directory, rating_threshold=None)
    assert all_rows.interactions.num_positives == 6017


@pytest.mark.parametrize("name, limit_s", [("book-crossing-ripplenet", 2.0), ("lastfm-kgcn", 3.0), ("recbole-test-kg", 2.0)])
def test_real_datasets_load_fast(data_dir, name, limit_s):
    # Process CPU time: a busy machine must not fail the test, a slow reader must.
    start = time.process_time()
    load_dataset(data_dir / name)
    assert time.process_time() - start < limit_s
