"""Readers on tiny hand-written files: parsing, id mapping, format detection and every bad input."""

from pathlib import Path

import numpy as np
import pytest

from tinykg.data import DataError, detect_format, load_dataset, read_kgcn, read_lastfm_raw, read_recbole

KG_FINAL = "0\t0\t3\n1\t1\t3\n2\t0\t4\n"
RATINGS_FINAL = "0\t0\t1\n0\t1\t0\n1\t1\t1\n1\t2\t0\n"
KGAT_TRAIN = "0 0 1\n1 2\n2\n"
KGAT_TEST = "0 2\n1 0 1\n"
RECBOLE_INTER = (
    "item_id:token\tuser_id:token\trating:float\ttimestamp:float\n"
    "i1\tuA\t5\t1\n"
    "i2\tuA\t2\t2\n"
    "i3\tuB\t4\t3\n"
    "i1\tuB\t1\t4\n"
    "i4\tuC\t1\t5\n"
)
RECBOLE_LINK = "item_id:token\tentity_id:token\ni1\te1\ni3\te3\ni5\te5\n"
RECBOLE_KG = "head_id:token\trelation_id:token\ttail_id:token\ne1\tr1\tx\nx\tr2\te3\ne5\tr1\ty\n"
LASTFM_MAPPING = "10\t0\r\n20\t1\r\n30\t2\r\n40\t3\r\n"
LASTFM_RATINGS = "userID\tartistID\tweight\n7\t20\t100\n7\t99\t5\n5\t10\t3\n7\t30\t1\n5\t40\t2\n"
LASTFM_KG = "0\tr.a\tfoo\r\n2\tr.b\t0\r\nfoo\tr.a\tbar\r\n"


def make_dir(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_bytes(content.encode("utf-8"))
    return root


def kgcn_files(**override) -> dict:
    return {"kg_final.txt": KG_FINAL, "ratings_final.txt": RATINGS_FINAL, **override}


def kgat_files(**override) -> dict:
    return {"kg_final.txt": KG_FINAL, "train.txt": KGAT_TRAIN, "test.txt": KGAT_TEST, **override}


def recbole_files(**override) -> dict:
    return {"test.inter": RECBOLE_INTER, "test.link": RECBOLE_LINK, "test.kg": RECBOLE_KG, **override}


def lastfm_files(**override) -> dict:
    return {
        "item_index2entity_id.txt": LASTFM_MAPPING, "user_artists.dat": LASTFM_RATINGS, "kg.txt": LASTFM_KG,
        **override,
    }


def npy_bytes(tmp_path: Path, array: np.ndarray, allow_pickle: bool = False) -> bytes:
    path = tmp_path / "scratch.npy"
    np.save(path, array, allow_pickle=allow_pickle)
    return path.read_bytes()


# --------------------------------------------------------------------------------------------
# Good input
# --------------------------------------------------------------------------------------------


def test_read_kgcn_parses_tiny_text_files(tmp_path):
    dataset = read_kgcn(make_dir(tmp_path / "tiny", kgcn_files()))
    assert dataset.name == "tiny"
    assert dataset.info() == {
        "users": 2, "items": 3, "interactions": 4, "positives": 2, "entities": 5, "relations": 2, "triples": 3,
    }
    np.testing.assert_array_equal(dataset.interactions.item_index, [0, 1, 1, 2])
    np.testing.assert_array_equal(dataset.interactions.label, [1, 0, 1, 0])
    np.testing.assert_array_equal(dataset.kg.triples(), [[0, 0, 3], [1, 1, 3], [2, 0, 4]])


def test_read_kgcn_npy_matches_text(tmp_path):
    text = read_kgcn(make_dir(tmp_path / "text", kgcn_files()))
    table = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 1], [1, 2, 0]], np.int32)
    files = {"kg_final.txt": KG_FINAL, "ratings_final.npy": npy_bytes(tmp_path, table)}
    binary = read_kgcn(make_dir(tmp_path / "npy", files))
    for name in ("user_index", "item_index", "label"):
        np.testing.assert_array_equal(getattr(binary.interactions, name), getattr(text.interactions, name))


def test_read_kgcn_accepts_crlf_spaces_and_blank_lines(tmp_path):
    files = kgcn_files(**{"kg_final.txt": "0 0 3\r\n\r\n1  1\t3\r\n2 0 4", "ratings_final.txt": "\n" + RATINGS_FINAL + "\n\n"})
    dataset = read_kgcn(make_dir(tmp_path, files))
    assert dataset.kg.num_triples == 3
    assert dataset.interactions.num_interactions == 4


def test_read_kgat_keeps_test_split_apart(tmp_path):
    dataset = load_dataset(make_dir(tmp_path, kgat_files()))
    train, test = dataset.interactions, dataset.test_interactions
    np.testing.assert_array_equal(train.user_index, [0, 0, 1])
    np.testing.assert_array_equal(train.item_index, [0, 1, 2])
    np.testing.assert_array_equal(test.user_index, [0, 1, 1])
    np.testing.assert_array_equal(test.item_index, [2, 0, 1])
    assert (train.label == 1).all() and (test.label == 1).all()
    # User 2 has a line but no items: it still counts.
    assert (dataset.num_users, dataset.num_items, dataset.num_entities) == (3, 3, 5)
    assert dataset.info()["test_interactions"] == 3


def test_read_recbole_maps_tokens_by_header_name(tmp_path):
    dataset = read_recbole(make_dir(tmp_path, recbole_files()), seed=0)
    # Items: i1 i2 i3 i4 from .inter, then i5 from .link; linked entities take the item ids.
    assert (dataset.num_users, dataset.num_items) == (2, 5)  # uC has no rating >= 4
    assert (dataset.num_entities, dataset.num_relations) == (7, 2)
    np.testing.assert_array_equal(dataset.kg.triples(), [[0, 0, 5], [5, 1, 2], [4, 0, 6]])
    interactions = dataset.interactions
    positives = interactions.positives()
    np.testing.assert_array_equal(positives.user_index, [0, 1])
    np.testing.assert_array_equal(positives.item_index, [0, 2])
    negatives = interactions.select(interactions.label == 0)
    np.testing.assert_array_equal(negatives.user_index, [0, 1])
    # Low-rated items (uA: i2, uB: i1) are never sampled as negatives.
    assert negatives.item_index[0] in {2, 3, 4}
    assert negatives.item_index[1] in {1, 3, 4}


def test_read_recbole_without_rating_makes_every_row_positive(tmp_path):
    inter = "user_id:token\titem_id:token\nuA\ti1\nuA\ti2\nuB\ti3\n"
    dataset = read_recbole(make_dir(tmp_path, recbole_files(**{"test.inter": inter})), seed=0)
    assert dataset.interactions.num_positives == 3
    assert dataset.interactions.num_interactions == 6
    threshold_off = read_recbole(make_dir(tmp_path / "b", recbole_files()), rating_threshold=None, seed=0)
    assert threshold_off.num_users == 3 and threshold_off.interactions.num_positives == 5


def test_read_recbole_is_deterministic_per_seed(tmp_path):
    directory = make_dir(tmp_path, recbole_files())
    first, second = (read_recbole(directory, seed=3).interactions for _ in range(2))
    np.testing.assert_array_equal(first.item_index, second.item_index)


def test_read_lastfm_raw_applies_kgcn_preprocessing(tmp_path):
    dataset = read_lastfm_raw(make_dir(tmp_path, lastfm_files()))
    # Items are the mapping file's lines; users are numbered by first appearance (7 -> 0, 5 -> 1);
    # the unmapped artist 99 is dropped.
    assert (dataset.num_users, dataset.num_items) == (2, 4)
    interactions = dataset.interactions
    for user, liked in ((0, {1, 2}), (1, {0, 3})):
        rows = interactions.user_index == user
        assert set(interactions.item_index[rows & (interactions.label == 1)]) == liked
        # Two positives, two negatives drawn from the two unplayed items: exactly those.
        assert set(interactions.item_index[rows & (interactions.label == 0)]) == {0, 1, 2, 3} - liked
    # KG: satori id "0" is item 0, "2" is item 2; new entities foo=4, bar=5 (head before tail).
    np.testing.assert_array_equal(dataset.kg.triples(), [[0, 0, 4], [2, 1, 0], [4, 0, 5]])
    assert (dataset.num_entities, dataset.num_relations) == (6, 2)


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files, expected",
    [
        (kgcn_files(), "kgcn"),
        (kgat_files(), "kgat"),
        (recbole_files(), "recbole"),
        (lastfm_files(), "lastfm-raw"),
        ({**lastfm_files(), **kgcn_files()}, "kgcn"),  # processed files win over raw ones
    ],
)
def test_detect_format_recognises_each_layout(tmp_path, files, expected):
    directory = make_dir(tmp_path, files)
    assert detect_format(directory) == expected
    assert load_dataset(directory).num_users >= 1


def test_detect_format_lists_expected_files_when_nothing_matches(tmp_path):
    directory = make_dir(tmp_path, {"notes.txt": "hello"})
    with pytest.raises(DataError) as excinfo:
        load_dataset(directory)
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in ("kgcn", "lastfm-raw", "kgat", "recbole", "kg_final.txt", "NAME.inter"):
        assert fragment in message


def test_load_dataset_rejects_unknown_format(tmp_path):
    with pytest.raises(DataError, match="unknown format 'csv'; allowed: kgcn, lastfm-raw, kgat, recbole"):
        load_dataset(make_dir(tmp_path, kgcn_files()), format="csv")


def test_load_dataset_rejects_missing_directory(tmp_path):
    with pytest.raises(DataError, match="directory not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="directory not found"):
        load_dataset(tmp_path / "nope", format="kgcn")


# --------------------------------------------------------------------------------------------
# Bad input: always a one-line DataError naming the file (and the line where one applies)
# --------------------------------------------------------------------------------------------

OBJECT_ARRAY = np.array([[0, 0, 1]], dtype=object)

BAD_INPUTS = [
    # id, format, files, file named, line (None: no line), words expected in the message
    ("kg-missing-column", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 3\n1 1\n"}), "kg_final.txt", 2, "expected 3 integer columns"),
    ("kg-extra-column", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 3 4\n"}), "kg_final.txt", 1, "got 4"),
    ("kg-word", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 3\n1 x 3\n"}), "kg_final.txt", 2, "expected an integer"),
    ("kg-float", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 3.5\n"}), "kg_final.txt", 1, "'3.5'"),
    ("kg-underscore", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 3\n0 0 1_0\n"}), "kg_final.txt", 2, "'1_0'"),
    ("kg-unicode-digit", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 \uff13\n"}), "kg_final.txt", 1, "integer"),
    ("kg-bad-sign", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 3\n0 0 3-\n"}), "kg_final.txt", 2, "'3-'"),
    ("kg-negative", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 3\n-1 0 3\n"}), "kg_final.txt", 2, "negative head -1"),
    ("kg-overflow", "kgcn", kgcn_files(**{"kg_final.txt": "0 0 99999999999999999999\n"}), "kg_final.txt", 1, "int64"),
    ("kg-empty", "kgcn", kgcn_files(**{"kg_final.txt": ""}), "kg_final.txt", None, "empty"),
    ("kg-blank", "kgcn", kgcn_files(**{"kg_final.txt": "\n  \r\n"}), "kg_final.txt", None, "empty"),
    ("kg-nul", "kgcn", kgcn_files(**{"kg_final.txt": b"0 0 3\n\x00\x01\x02\x03"}), "kg_final.txt", 2, "binary"),
    ("kg-undecodable", "kgcn", kgcn_files(**{"kg_final.txt": b"0 0 3\n1 1 3\n\xff\xfe 0 0\n"}), "kg_final.txt", 3, "UTF-8"),
    ("kg-missing", "kgcn", {"ratings_final.txt": RATINGS_FINAL}, "kg_final.txt", None, "file not found"),
    ("ratings-missing", "kgcn", {"kg_final.txt": KG_FINAL}, "ratings_final.txt", None, "file not found"),
    ("ratings-label", "kgcn", kgcn_files(**{"ratings_final.txt": "0 0 1\n0 1 2\n"}), "ratings_final.txt", 2, "label 2 is not 0 or 1"),
    ("ratings-negative-label", "kgcn", kgcn_files(**{"ratings_final.txt": "0 0 -1\n"}), "ratings_final.txt", 1, "negative label"),
    ("ratings-item-range", "kgcn", kgcn_files(**{"ratings_final.txt": "0 0 1\n0 4 1\n1 5 0\n"}), "ratings_final.txt", 3, "item 5 is not an entity"),
    ("ratings-columns", "kgcn", kgcn_files(**{"ratings_final.txt": "0 0\n"}), "ratings_final.txt", 1, "expected 3 integer columns"),
    ("ratings-empty", "kgcn", kgcn_files(**{"ratings_final.txt": ""}), "ratings_final.txt", None, "empty"),
    ("kgat-item-range", "kgat", kgat_files(**{"train.txt": "0 1\n1 2 9\n"}), "train.txt", 2, "item 9 is not an entity"),
    ("kgat-word", "kgat", kgat_files(**{"test.txt": "0 1\n1 a\n"}), "test.txt", 2, "expected an integer"),
    ("kgat-negative", "kgat", kgat_files(**{"test.txt": "0 1\n\n-1 2\n"}), "test.txt", 3, "negative id -1"),
    ("kgat-empty", "kgat", kgat_files(**{"train.txt": ""}), "train.txt", None, "empty"),
    ("kgat-kg-columns", "kgat", kgat_files(**{"kg_final.txt": "0 0 3\n0 0\n"}), "kg_final.txt", 2, "expected 3 integer columns"),
    ("recbole-header-no-type", "recbole", recbole_files(**{"test.inter": "user_id\titem_id:token\nuA\ti1\n"}), "test.inter", 1, "bad header field"),
    ("recbole-header-bad-type", "recbole", recbole_files(**{"test.inter": "user_id:int\titem_id:token\nuA\ti1\n"}), "test.inter", 1, "bad header field"),
    ("recbole-header-missing-column", "recbole", recbole_files(**{"test.link": "item_id:token\tentity:token\ni1\te1\n"}), "test.link", 1, "lacks column(s) entity_id"),
    ("recbole-header-wrong-type", "recbole", recbole_files(**{"test.inter": "user_id:token\titem_id:token\trating:token\nuA\ti1\t5\n"}), "test.inter", 1, "type token, expected float"),
    ("recbole-short-row", "recbole", recbole_files(**{"test.kg": "head_id:token\trelation_id:token\ttail_id:token\ne1\tr1\tx\ne1\tr1\n"}), "test.kg", 3, "expected 3 tab-separated columns, got 2"),
    ("recbole-empty-token", "recbole", recbole_files(**{"test.kg": "head_id:token\trelation_id:token\ttail_id:token\ne1\t\tx\n"}), "test.kg", 2, "empty"),
    ("recbole-bad-rating", "recbole", recbole_files(**{"test.inter": RECBOLE_INTER.replace("\t2\t2\n", "\tbad\t2\n")}), "test.inter", 3, "expected a number, got 'bad'"),
    ("recbole-nan-rating", "recbole", recbole_files(**{"test.inter": RECBOLE_INTER.replace("\t2\t2\n", "\tnan\t2\n")}), "test.inter", 3, "not finite"),
    ("recbole-link-twice", "recbole", recbole_files(**{"test.link": RECBOLE_LINK + "i1\te9\n"}), "test.link", 5, "linked twice"),
    ("recbole-header-only", "recbole", recbole_files(**{"test.kg": "head_id:token\trelation_id:token\ttail_id:token\n"}), "test.kg", None, "no data rows"),
    ("recbole-binary", "recbole", recbole_files(**{"test.inter": b"user_id:token\titem_id:token\n\x89PNG\r\n\x1a\n"}), "test.inter", 2, "UTF-8"),
    ("lastfm-no-header", "lastfm-raw", lastfm_files(**{"user_artists.dat": "7\t20\t100\n"}), "user_artists.dat", 1, "header"),
    ("lastfm-bad-weight", "lastfm-raw", lastfm_files(**{"user_artists.dat": LASTFM_RATINGS + "5\t20\tlots\n"}), "user_artists.dat", 7, "expected a number"),
    ("lastfm-bad-user", "lastfm-raw", lastfm_files(**{"user_artists.dat": LASTFM_RATINGS + "u5\t20\t3\n"}), "user_artists.dat", 7, "userID"),
    ("lastfm-kg-columns", "lastfm-raw", lastfm_files(**{"kg.txt": "0\tr.a\tfoo\n2\tr.b\n"}), "kg.txt", 2, "expected 3 tab-separated columns"),
    ("lastfm-mapping-twice", "lastfm-raw", lastfm_files(**{"item_index2entity_id.txt": "10\t0\n10\t1\n"}), "item_index2entity_id.txt", 2, "mapped twice"),
    ("lastfm-missing", "lastfm-raw", {"kg.txt": LASTFM_KG}, "item_index2entity_id.txt", None, "file not found"),
]


@pytest.mark.parametrize("format, files, file_name, line, words", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_readers_reject_bad_input_with_file_and_line(tmp_path, format, files, file_name, line, words):
    directory = make_dir(tmp_path / "dataset", files)
    with pytest.raises(DataError) as excinfo:
        load_dataset(directory, format=format)
    error = excinfo.value
    message = str(error)
    assert "\n" not in message and "\r" not in message
    assert Path(error.path).name == file_name
    assert error.line == line
    location = f"{file_name}:{line}: " if line is not None else f"{file_name}: "
    assert location in message
    assert words in message


BAD_NPY = [
    ("float-dtype", lambda tmp: npy_bytes(tmp, np.array([[0.0, 0.0, 1.0]])), "integer array"),
    ("two-columns", lambda tmp: npy_bytes(tmp, np.array([[0, 0]])), "3 columns"),
    ("one-dimensional", lambda tmp: npy_bytes(tmp, np.array([0, 0, 1])), "2-D"),
    ("three-dimensional", lambda tmp: npy_bytes(tmp, np.zeros((2, 3, 3), np.int64)), "2-D"),
    ("no-rows", lambda tmp: npy_bytes(tmp, np.zeros((0, 3), np.int64)), "empty"),
    ("pickled-objects", lambda tmp: npy_bytes(tmp, OBJECT_ARRAY, allow_pickle=True), "pickled Python objects"),
    ("garbage", lambda tmp: b"\x93NUMPY garbage that is not an array", "not a readable .npy"),
    ("truncated", lambda tmp: npy_bytes(tmp, np.zeros((100, 3), np.int64))[:200], "not a readable .npy"),
    ("text", lambda tmp: b"0 0 1\n", "not a .npy file"),
    ("npz", lambda tmp: b"PK\x03\x04 zipped archive", "not a .npy file"),
    ("label", lambda tmp: npy_bytes(tmp, np.array([[0, 0, 1], [0, 1, 3]], np.int32)), "row 1: label 3 is not 0 or 1"),
    ("negative", lambda tmp: npy_bytes(tmp, np.array([[0, 0, 1], [-2, 1, 0]], np.int32)), "row 1: negative user -2"),
    ("item-range", lambda tmp: npy_bytes(tmp, np.array([[0, 7, 1]], np.int64)), "row 0: item 7 is not an entity"),
]


@pytest.mark.parametrize("make, words", [case[1:] for case in BAD_NPY], ids=[case[0] for case in BAD_NPY])
def test_read_kgcn_rejects_bad_npy(tmp_path, make, words):
    files = {"kg_final.txt": KG_FINAL, "ratings_final.npy": make(tmp_path)}
    with pytest.raises(DataError) as excinfo:
        read_kgcn(make_dir(tmp_path / "dataset", files))
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "dataset" / "ratings_final.npy") + ": ")
    assert words in message


# --------------------------------------------------------------------------------------------
# Questionable input that is read, with a note, or refused (a user's own data)
# --------------------------------------------------------------------------------------------


def test_read_kgcn_drops_repeated_rows_with_a_note(tmp_path):
    # Repeated rows would land on both sides of the random split: the test set would be seen in training.
    directory = make_dir(tmp_path, kgcn_files(**{"ratings_final.txt": RATINGS_FINAL + RATINGS_FINAL + "0\t0\t1\n"}))
    dataset = read_kgcn(directory)
    assert dataset.interactions.num_interactions == 4
    assert dataset.interactions.label.tolist() == [1, 0, 1, 0]
    assert dataset.notes == ("ratings_final.txt: 5 repeated (user, item) rows dropped (the first of each pair is kept)",)
    single = read_kgcn(make_dir(tmp_path / "one", kgcn_files(**{"ratings_final.txt": RATINGS_FINAL + "0\t0\t1\n"})))
    assert single.notes == ("ratings_final.txt: 1 repeated (user, item) row dropped (the first of each pair is kept)",)
    assert read_kgcn(make_dir(tmp_path / "plain", kgcn_files())).notes == ()


def test_read_kgcn_refuses_a_pair_labelled_both_ways(tmp_path):
    directory = make_dir(tmp_path, kgcn_files(**{"ratings_final.txt": RATINGS_FINAL + "1\t2\t0\n1\t1\t0\n"}))
    with pytest.raises(DataError, match=r"ratings_final.txt:6: user 1, item 1 is given both labels 0 and 1"):
        read_kgcn(directory)


def test_read_kgat_counts_repeated_items_once_and_notes_test_pairs_seen_in_training(tmp_path):
    directory = make_dir(tmp_path, kgat_files(**{"train.txt": "0 0 1 1\n1 2\n2\n", "test.txt": "0 2 0\n1 0 1\n"}))
    dataset = load_dataset(directory)
    assert dataset.interactions.num_interactions == 3  # (0, 0), (0, 1), (1, 2)
    assert dataset.test_interactions.num_interactions == 4
    assert dataset.notes == (
        "train.txt: 1 repeated (user, item) pair counted once",
        "test.txt: 1 of 4 test pairs also in train.txt; evaluation masks training items, so they count as misses",
    )


def test_read_recbole_takes_positives_from_a_label_column(tmp_path):
    inter = "user_id:token\titem_id:token\tlabel:float\nuA\ti1\t1\nuA\ti2\t0\nuB\ti3\t1\nuC\ti1\t0\n"
    dataset = load_dataset(make_dir(tmp_path, recbole_files(**{"test.inter": inter})))
    positives = dataset.interactions.positives()
    assert positives.num_interactions == 2 and dataset.num_users == 2  # uC has no label-1 row
    bad = inter + "uB\ti1\t2\n"
    with pytest.raises(DataError, match=r"test.inter:6: label 2 is not 0 or 1"):
        load_dataset(make_dir(tmp_path / "bad", recbole_files(**{"test.inter": bad})))


def test_read_recbole_refuses_a_link_file_that_matches_no_interacted_item(tmp_path):
    link = "item_id:token\tentity_id:token\nx1\te1\nx3\te3\n"
    with pytest.raises(DataError, match=r"test.link: no item of test.inter has an entity here"):
        load_dataset(make_dir(tmp_path, recbole_files(**{"test.link": link})))


def test_read_recbole_notes_unlinked_and_interaction_free_items(tmp_path):
    dataset = load_dataset(make_dir(tmp_path, recbole_files()))
    assert dataset.notes == (
        "2 of 4 interacted items without an entity in test.link (entities without triples)",
        "1 item of test.link without interactions (the CTR models' negatives are drawn from them too, as in KGCN)",
    )


@pytest.mark.parametrize(
    "files, words",
    [
        ({k: v for k, v in recbole_files().items() if k != "test.link"}, "test.link: file not found"),
        ({**recbole_files(), "old.inter": RECBOLE_INTER}, "expected exactly one NAME.inter file, found old.inter, test.inter"),
    ],
)
def test_detect_format_says_what_incomplete_recbole_files_lack(tmp_path, files, words):
    with pytest.raises(DataError, match=words):
        load_dataset(make_dir(tmp_path, files))


@pytest.mark.parametrize(
    "header, words",
    [
        ("user_id:token\titem_id:token\t", "a tab at the end of the line"),
        ("user_id:token item_id:token", "tab-separated, not space-separated"),
    ],
)
def test_read_recbole_header_errors_name_the_likely_cause(tmp_path, header, words):
    inter = header + "\nuA\ti1\n"
    with pytest.raises(DataError, match=words):
        load_dataset(make_dir(tmp_path, recbole_files(**{"test.inter": inter})), format="recbole")


def test_read_lastfm_raw_refuses_a_header_in_the_mapping(tmp_path):
    mapping = "artistID\tentityID\n" + LASTFM_MAPPING
    with pytest.raises(DataError, match=r"item_index2entity_id.txt:1: .*no header line"):
        read_lastfm_raw(make_dir(tmp_path, lastfm_files(**{"item_index2entity_id.txt": mapping})))


def test_load_dataset_refuses_an_empty_path():
    with pytest.raises(DataError, match="empty dataset path"):
        load_dataset("")


def test_detection_notes_the_formats_it_did_not_choose(tmp_path):
    dataset = load_dataset(make_dir(tmp_path, {**kgat_files(), "ratings_final.txt": RATINGS_FINAL}))
    assert dataset.test_interactions is None  # read as kgcn, the preferred format
    assert dataset.notes == ("read as kgcn; the files of kgat are here too (--format chooses)",)
    assert load_dataset(tmp_path, format="kgat").notes == ()


def test_rating_threshold_for_other_scales(tmp_path):
    # 0-1 ratings: nothing reaches the default 4, and the error says how to change it.
    inter = "user_id:token\titem_id:token\trating:float\nuA\ti1\t0.9\nuA\ti2\t0.1\nuB\ti3\t0.8\n"
    directory = make_dir(tmp_path, recbole_files(**{"test.inter": inter}))
    with pytest.raises(DataError, match=r"no interaction has rating >= 4 \(--rating-threshold sets it\)"):
        load_dataset(directory)
    assert load_dataset(directory, rating_threshold=0.5).interactions.num_positives == 2


def test_read_kgcn_names_a_broken_ratings_link_with_or_without_detection(tmp_path):
    directory = make_dir(tmp_path, {"kg_final.txt": KG_FINAL})
    (directory / "ratings_final.txt").symlink_to(tmp_path / "gone.txt")
    for fmt in (None, "kgcn"):
        with pytest.raises(DataError, match="ratings_final.txt: broken symbolic link"):
            load_dataset(directory, format=fmt)
