import numpy as np
import pytest

from tinykg.data import (
    Interactions,
    KnowledgeGraph,
    SyntheticConfig,
    add_negatives,
    ckan_triple_sets,
    ctr_split,
    kgcn_neighbors,
    make_synthetic,
    ripple_sets,
)
from tinykg.data.sampling import _sample_indices


@pytest.fixture(scope="module")
def toy():
    return make_synthetic(SyntheticConfig.toy(), seed=0)


def undirected_edges(kg: KnowledgeGraph) -> set[tuple[int, int, int]]:
    forward = zip(kg.head_index.tolist(), kg.tail_index.tolist(), kg.rel_type.tolist())
    backward = zip(kg.tail_index.tolist(), kg.head_index.tolist(), kg.rel_type.tolist())
    return set(forward) | set(backward)


def directed_triples(kg: KnowledgeGraph) -> set[tuple[int, int, int]]:
    return set(zip(kg.head_index.tolist(), kg.rel_type.tolist(), kg.tail_index.tolist()))


def training_items(train: Interactions) -> list[set[int]]:
    items = [set() for _ in range(train.num_users)]
    for user, item, label in zip(train.user_index.tolist(), train.item_index.tolist(), train.label.tolist()):
        if label == 1:
            items[user].add(item)
    return items


# --------------------------------------------------------------------------------------------
# add_negatives
# --------------------------------------------------------------------------------------------


def test_add_negatives_draws_as_many_unseen_items_as_positives():
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(30, 40 * 30, 300))
    # User 0 likes 12 of 30 items, too many for rejection sampling: the exact path draws its negatives.
    keys = np.concatenate([np.arange(12), keys])
    positives = Interactions.from_positives(keys // 30, keys % 30, num_users=40, num_items=30)
    labelled = add_negatives(positives, seed=1)
    for user in range(40):
        rows = labelled.user_index == user
        liked = set(labelled.item_index[rows & (labelled.label == 1)])
        negatives = labelled.item_index[rows & (labelled.label == 0)]
        assert len(negatives) == len(liked)
        assert len(set(negatives)) == len(negatives)
        assert not set(negatives) & liked
        # Positives come first within each user, in their input order.
        assert (np.diff(labelled.label[rows]) <= 0).all()
    assert (np.diff(labelled.user_index) >= 0).all()


def test_add_negatives_respects_exclude_and_saturation():
    positives = Interactions.from_positives([0, 0, 0, 1], [0, 1, 2, 0], num_users=2, num_items=5)
    low_rated = Interactions.from_positives([0, 1], [3, 1], num_users=2, num_items=5)
    labelled = add_negatives(positives, seed=0, exclude=low_rated)
    negatives = labelled.select(labelled.label == 0)
    # User 0: 3 positives but only item 4 is left; user 1: candidates {2, 3, 4}.
    np.testing.assert_array_equal(negatives.item_index[negatives.user_index == 0], [4])
    assert set(negatives.item_index[negatives.user_index == 1]) <= {2, 3, 4}
    assert (negatives.user_index == 1).sum() == 1


def test_add_negatives_is_uniform_over_candidates():
    num_users = 20000
    positives = Interactions.from_positives(np.arange(num_users), np.zeros(num_users, np.int64), num_users, 5)
    labelled = add_negatives(positives, seed=3)
    share = np.bincount(labelled.item_index[labelled.label == 0], minlength=5) / num_users
    tolerance = 5 * np.sqrt(0.25 * 0.75 / num_users)
    np.testing.assert_allclose(share, [0, 0.25, 0.25, 0.25, 0.25], atol=tolerance)


def test_add_negatives_is_deterministic(toy):
    positives = toy.interactions.positives()
    first, second = add_negatives(positives, seed=9), add_negatives(positives, seed=9)
    np.testing.assert_array_equal(first.item_index, second.item_index)
    assert not np.array_equal(first.item_index, add_negatives(positives, seed=10).item_index)


# --------------------------------------------------------------------------------------------
# kgcn_neighbors
# --------------------------------------------------------------------------------------------


def check_neighbor_tables(kg: KnowledgeGraph, adj_entity: np.ndarray, adj_relation: np.ndarray, num_neighbors: int) -> None:
    assert adj_entity.shape == adj_relation.shape == (kg.num_entities, num_neighbors)
    assert adj_entity.dtype == adj_relation.dtype == np.int64
    edges = undirected_edges(kg)
    degree = np.bincount(np.concatenate([kg.head_index, kg.tail_index]), minlength=kg.num_entities)
    multiplicity: dict[tuple[int, int, int], int] = {}
    for head, tail, rel in zip(kg.head_index.tolist(), kg.tail_index.tolist(), kg.rel_type.tolist()):
        for key in ((head, tail, rel), (tail, head, rel)):
            multiplicity[key] = multiplicity.get(key, 0) + 1
    for entity in range(kg.num_entities):
        pairs = list(zip(adj_entity[entity].tolist(), adj_relation[entity].tolist()))
        if degree[entity] == 0:
            assert pairs == [(entity, 0)] * num_neighbors
            continue
        assert all((entity, neighbor, rel) in edges for neighbor, rel in pairs)
        if degree[entity] >= num_neighbors:
            # Without replacement: no (neighbour, relation) more often than the graph has it.
            for pair in set(pairs):
                assert pairs.count(pair) <= multiplicity[(entity, *pair)]


def test_kgcn_neighbors_samples_real_neighbors(toy):
    adj_entity, adj_relation = kgcn_neighbors(toy.kg, num_neighbors=4, seed=0)
    check_neighbor_tables(toy.kg, adj_entity, adj_relation, 4)


def test_kgcn_neighbors_handles_low_degree_isolated_and_self_loops():
    # Entity 0: degree 3 (< K=4, with replacement); 3: isolated; 4: a self-loop counts twice.
    kg = KnowledgeGraph(np.array([0, 0, 1, 4]), np.array([0, 1, 1, 2]), np.array([1, 2, 0, 4]), num_entities=5, num_relations=3)
    adj_entity, adj_relation = kgcn_neighbors(kg, num_neighbors=4, seed=0)
    check_neighbor_tables(kg, adj_entity, adj_relation, 4)
    np.testing.assert_array_equal(adj_entity[3], [3, 3, 3, 3])
    np.testing.assert_array_equal(adj_relation[3], [0, 0, 0, 0])
    np.testing.assert_array_equal(adj_entity[4], [4, 4, 4, 4])
    np.testing.assert_array_equal(adj_relation[4], [2, 2, 2, 2])


def test_kgcn_neighbors_is_uniform_without_replacement():
    # 5000 hubs with 4 leaves each; K=2 keeps each leaf with probability 1/2, never twice.
    num_hubs = 5000
    hubs = np.repeat(np.arange(num_hubs), 4)
    leaves = num_hubs + np.arange(4 * num_hubs)
    kg = KnowledgeGraph(hubs, np.tile(np.arange(4), num_hubs), leaves, num_entities=5 * num_hubs, num_relations=4)
    adj_entity, adj_relation = kgcn_neighbors(kg, num_neighbors=2, seed=1)
    assert (adj_entity[:num_hubs, 0] != adj_entity[:num_hubs, 1]).all()
    np.testing.assert_array_equal(adj_entity[:num_hubs] - num_hubs - 4 * np.arange(num_hubs)[:, None], adj_relation[:num_hubs])
    share = np.bincount(adj_relation[:num_hubs].ravel(), minlength=4) / num_hubs
    np.testing.assert_allclose(share, 0.5, atol=5 * np.sqrt(0.25 / num_hubs))


def test_kgcn_neighbors_is_deterministic(toy):
    first, second = kgcn_neighbors(toy.kg, 4, seed=2), kgcn_neighbors(toy.kg, 4, seed=2)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], kgcn_neighbors(toy.kg, 4, seed=3)[0])


@pytest.mark.data
def test_kgcn_neighbors_on_lastfm_are_real_neighbors(lastfm_reference):
    kg = lastfm_reference.kg
    adj_entity, adj_relation = kgcn_neighbors(kg, num_neighbors=8, seed=0)
    assert adj_entity.shape == (9366, 8)
    keys = {(h, t, r) for h, t, r in undirected_edges(kg)}
    sampled = zip(np.repeat(np.arange(kg.num_entities), 8).tolist(), adj_entity.ravel().tolist(), adj_relation.ravel().tolist())
    assert all(key in keys for key in sampled)


# --------------------------------------------------------------------------------------------
# ripple_sets and ckan_triple_sets
# --------------------------------------------------------------------------------------------


def check_propagation(kg: KnowledgeGraph, sets, seeds: list[set[int]]) -> None:
    """Hop 0 starts at the seeds; every triple is a KG triple; hop l grows from hop l-1's tails."""
    triples = directed_triples(kg)
    for obj, seed_entities in enumerate(seeds):
        if not sets.mask[obj]:
            assert (sets.head_index[obj] == 0).all() and (sets.tail_index[obj] == 0).all()
            continue
        for layer in range(sets.num_layers):
            heads = sets.head_index[obj, layer].tolist()
            rels = sets.rel_type[obj, layer].tolist()
            tails = sets.tail_index[obj, layer].tolist()
            assert all(triple in triples for triple in zip(heads, rels, tails))
            if layer == 0:
                assert set(heads) <= seed_entities
            else:
                previous_tails = set(sets.tail_index[obj, layer - 1].tolist())
                copied = all(
                    np.array_equal(getattr(sets, name)[obj, layer], getattr(sets, name)[obj, layer - 1])
                    for name in ("head_index", "rel_type", "tail_index")
                )
                assert copied or set(heads) <= previous_tails


def test_ripple_sets_grow_from_training_positives_only(toy):
    train, _, test = ctr_split(toy.interactions, seed=0)
    sets = ripple_sets(toy.kg, train, num_hops=3, num_memory=8, seed=0)
    assert sets.head_index.shape == (toy.num_users, 3, 8) and sets.head_index.dtype == np.int64
    liked = training_items(train)
    check_propagation(toy.kg, sets, liked)
    # Test-only positives (not liked in training) never seed a ripple set.
    for user, item in zip(test.user_index[test.label == 1].tolist(), test.item_index[test.label == 1].tolist()):
        if item not in liked[user]:
            assert item not in set(sets.head_index[user, 0].tolist())
    np.testing.assert_array_equal(sets.mask, [len(items) > 0 for items in liked])


def test_ripple_sets_copy_empty_hops_and_mask_users_without_positives():
    # Item 0 -> entity 2 -> entity 3 (a dead end): hop 2 has no candidates and repeats hop 1.
    kg = KnowledgeGraph(np.array([0, 2, 1]), np.array([0, 1, 0]), np.array([2, 3, 2]), num_entities=4, num_relations=2)
    train = Interactions(np.array([0, 1]), np.array([0, 1]), np.array([1, 0]), num_users=3, num_items=2)
    sets = ripple_sets(kg, train, num_hops=3, num_memory=4, seed=0)
    np.testing.assert_array_equal(sets.mask, [True, False, False])
    np.testing.assert_array_equal(sets.head_index[0], [[0] * 4, [2] * 4, [2] * 4])
    np.testing.assert_array_equal(sets.tail_index[0], [[2] * 4, [3] * 4, [3] * 4])
    assert (sets.head_index[1:] == 0).all()


def test_ripple_sets_sample_without_replacement_when_enough_triples():
    kg = KnowledgeGraph(np.zeros(10, np.int64), np.arange(10), np.arange(1, 11), num_entities=11, num_relations=10)
    train = Interactions.from_positives([0], [0], num_users=1, num_items=1)
    sets = ripple_sets(kg, train, num_hops=1, num_memory=6, seed=4)
    assert len(set(sets.rel_type[0, 0].tolist())) == 6


def test_ripple_sets_are_deterministic(toy):
    first = ripple_sets(toy.kg, toy.interactions, 2, 8, seed=1)
    second = ripple_sets(toy.kg, toy.interactions, 2, 8, seed=1)
    np.testing.assert_array_equal(first.tail_index, second.tail_index)
    assert not np.array_equal(first.tail_index, ripple_sets(toy.kg, toy.interactions, 2, 8, seed=2).tail_index)


def test_ckan_triple_sets_start_from_users_and_co_liked_items(toy):
    train, _, _ = ctr_split(toy.interactions, seed=0)
    user_sets, item_sets = ckan_triple_sets(toy.kg, train, num_layers=2, user_set_size=8, item_set_size=16, seed=0)
    assert user_sets.head_index.shape == (toy.num_users, 2, 8)
    assert item_sets.head_index.shape == (toy.num_items, 2, 16)
    liked = training_items(train)
    check_propagation(toy.kg, user_sets, liked)
    co_liked = [set() for _ in range(toy.num_items)]
    for items in liked:
        for item in items:
            co_liked[item] |= items
    initial = [neighbours or {item} for item, neighbours in enumerate(co_liked)]
    check_propagation(toy.kg, item_sets, initial)
    assert item_sets.mask.all()  # every toy item heads attribute triples


def test_ckan_item_without_training_user_starts_from_itself():
    kg = KnowledgeGraph(np.array([0, 1, 2]), np.array([0, 0, 0]), np.array([3, 3, 3]), num_entities=4, num_relations=1)
    train = Interactions.from_positives([0, 0], [0, 1], num_users=1, num_items=3)
    _, item_sets = ckan_triple_sets(kg, train, num_layers=1, user_set_size=2, item_set_size=4, seed=0)
    assert set(item_sets.head_index[0, 0].tolist()) <= {0, 1}
    assert set(item_sets.head_index[2, 0].tolist()) == {2}


@pytest.mark.data
def test_ckan_triple_sets_on_lastfm_cover_trained_users(lastfm_reference):
    train, _, _ = ctr_split(lastfm_reference.interactions, seed=0)
    user_sets, item_sets = ckan_triple_sets(lastfm_reference.kg, train, 2, 16, 64, seed=0)
    has_positive = np.bincount(train.user_index[train.label == 1], minlength=train.num_users) > 0
    np.testing.assert_array_equal(user_sets.mask, has_positive)
    assert item_sets.mask.all()


def test_sample_indices_is_uniform_without_replacement():
    total = np.full(20000, 10)
    sample = _sample_indices(total, 3, np.random.default_rng(0))
    assert ((sample >= 0) & (sample < 10)).all()
    ordered = np.sort(sample, axis=1)
    assert (np.diff(ordered, axis=1) > 0).all()
    share = np.bincount(sample.ravel(), minlength=10) / len(total)
    np.testing.assert_allclose(share, 0.3, atol=5 * np.sqrt(0.21 / len(total)))
