import numpy as np
import pytest

from tinykg.data import DataError, Dataset, Interactions, KnowledgeGraph


def small_kg() -> KnowledgeGraph:
    return KnowledgeGraph(np.array([0, 1, 2]), np.array([0, 1, 0]), np.array([3, 3, 4]), num_entities=5, num_relations=2)


def small_interactions() -> Interactions:
    return Interactions(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 2]), np.array([1, 0, 1, 0]), num_users=2, num_items=3)


def test_knowledge_graph_coerces_to_int64_and_counts_triples():
    kg = KnowledgeGraph(np.array([0, 1], np.int32), np.array([0, 0], np.uint8), [1, 2], num_entities=3, num_relations=1)
    assert kg.num_triples == 2
    assert all(array.dtype == np.int64 for array in (kg.head_index, kg.rel_type, kg.tail_index))
    np.testing.assert_array_equal(kg.triples(), [[0, 0, 1], [1, 0, 2]])


@pytest.mark.parametrize(
    "head, rel, tail, num_entities, num_relations, match",
    [
        ([0, 1], [0], [1, 2], 3, 1, "same length"),
        ([0, 3], [0, 0], [1, 2], 3, 1, "num_entities"),
        ([0, -1], [0, 0], [1, 2], 3, 1, "negative"),
        ([0, 1], [0, 1], [1, 2], 3, 1, "num_relations"),
        ([0.0, 1.0], [0, 0], [1, 2], 3, 1, "integers"),
        ([[0, 1]], [0], [1], 3, 1, "1-D"),
    ],
)
def test_knowledge_graph_rejects_inconsistent_arrays(head, rel, tail, num_entities, num_relations, match):
    with pytest.raises(ValueError, match=match):
        KnowledgeGraph(np.array(head), np.array(rel), np.array(tail), num_entities, num_relations)


def test_interactions_stores_int8_labels_and_counts():
    interactions = small_interactions()
    assert interactions.label.dtype == np.int8
    assert interactions.num_interactions == len(interactions) == 4
    assert interactions.num_positives == 2
    positives = interactions.positives()
    np.testing.assert_array_equal(positives.item_index, [0, 1])
    assert (positives.num_users, positives.num_items) == (2, 3)


def test_interactions_from_positives_labels_everything_one():
    interactions = Interactions.from_positives([0, 1], [2, 0], num_users=2, num_items=3)
    np.testing.assert_array_equal(interactions.label, [1, 1])


@pytest.mark.parametrize(
    "user, item, label, match",
    [
        ([0, 2], [0, 1], [1, 0], "num_users"),
        ([0, 1], [0, 3], [1, 0], "num_items"),
        ([0, 1], [0, 1], [1, 2], "0 and 1"),
        ([0, 1], [0, 1], [1], "same length"),
    ],
)
def test_interactions_rejects_inconsistent_arrays(user, item, label, match):
    with pytest.raises(ValueError, match=match):
        Interactions(np.array(user), np.array(item), np.array(label), num_users=2, num_items=3)


def test_dataset_info_reports_all_counts():
    info = Dataset("tiny", small_interactions(), small_kg()).info()
    assert info == {
        "users": 2, "items": 3, "interactions": 4, "positives": 2,
        "entities": 5, "relations": 2, "triples": 3,
    }


def test_dataset_requires_items_to_be_entities():
    interactions = Interactions.from_positives([0], [5], num_users=1, num_items=6)
    with pytest.raises(ValueError, match="items must be entities"):
        Dataset("bad", interactions, small_kg())


def test_dataset_test_interactions_must_share_sizes():
    test = Interactions.from_positives([0], [1], num_users=3, num_items=3)
    with pytest.raises(ValueError, match="test_interactions"):
        Dataset("bad", small_interactions(), small_kg(), test_interactions=test)
    ok = Interactions.from_positives([0], [1], num_users=2, num_items=3)
    assert Dataset("ok", small_interactions(), small_kg(), test_interactions=ok).info()["test_interactions"] == 1


def test_data_error_is_one_line_with_file_and_line():
    error = DataError("expected 3 integer columns,\ngot 2", "kg_final.txt", 17)
    assert str(error) == "kg_final.txt:17: expected 3 integer columns, got 2"
    assert (error.path, error.line) == ("kg_final.txt", 17)
    assert str(DataError("file is empty", "a.txt")) == "a.txt: file is empty"
    assert str(DataError("no file")) == "no file"


def test_interactions_take_a_bool_label_mask():
    rows = Interactions([0, 1, 1], [2, 0, 1], np.array([True, False, True]), num_users=2, num_items=3)
    assert rows.label.dtype == np.int8 and rows.label.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="label must hold integers"):
        Interactions([0], [0], np.array([0.7]), num_users=1, num_items=1)
