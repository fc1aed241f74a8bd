"""Samplers run once before training: negatives, KGCN neighbour tables, RippleNet/CKAN triple sets.

Every function takes an explicit integer ``seed`` and draws from its own
``np.random.default_rng(seed)``; nothing touches numpy's global RNG. The draws follow the
distributions of the original code (hwwang55/KGCN, hwwang55/RippleNet, weberrr/CKAN) but not its
random stream, and the work is vectorised over entities/users instead of Python loops.

Shape legend: E = num_entities, U = num_users, I = num_items, K = num_neighbors,
L = number of hops/layers, S = triples sampled per hop/layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import first_occurrence, unique_sorted
from .graph import Interactions, KnowledgeGraph

__all__ = ["TripleSets", "add_negatives", "kgcn_neighbors", "ripple_sets", "ckan_triple_sets"]


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# --------------------------------------------------------------------------------------------
# Negative sampling
# --------------------------------------------------------------------------------------------


def add_negatives(positives: Interactions, seed: int, *, exclude: Interactions | None = None) -> Interactions:
    """KGCN-style labelled rows: each user's positives followed by as many sampled negatives.

    For every user, negatives are drawn uniformly without replacement from the items the user never
    interacted with: items of ``positives`` and of ``exclude`` (e.g. explicitly low-rated items,
    which KGCN keeps out of both the positives and the negative pool) are never drawn. A user who
    interacted with so many items that fewer candidates than positives remain gets all remaining
    candidates (the original ``np.random.choice(..., replace=False)`` raises instead).

    ``positives`` must be unique (user, item) pairs; their labels are ignored and set to 1.
    Returns rows grouped by user in increasing user order; within a user, positives keep their
    input order and precede the negatives.
    """
    num_users, num_items = positives.num_users, positives.num_items
    rng = np.random.default_rng(seed)
    pos_user, pos_item = positives.user_index, positives.item_index
    excluded = pos_user * num_items + pos_item
    if exclude is not None:
        if (exclude.num_users, exclude.num_items) != (num_users, num_items):
            raise ValueError("exclude must have the same num_users and num_items as positives")
        excluded = np.concatenate([excluded, exclude.user_index * num_items + exclude.item_index])
    excluded = unique_sorted(excluded)  # sorted keys user * num_items + item
    num_wanted = np.bincount(pos_user, minlength=num_users)
    num_available = num_items - np.bincount(excluded // max(num_items, 1), minlength=num_users)
    num_negatives = np.minimum(num_wanted, num_available)

    # Rejection sampling is fast when a user's candidates are plentiful; users who exhausted
    # most of the catalogue are sampled exactly from their explicit candidate list instead.
    dense = (2 * num_negatives > num_available) | (4 * num_available < num_items)
    dense &= num_negatives > 0
    neg_user_parts, neg_item_parts = [], []
    for user in np.flatnonzero(dense):
        lo, hi = np.searchsorted(excluded, [user * num_items, (user + 1) * num_items])
        candidates = np.setdiff1d(np.arange(num_items), excluded[lo:hi] - user * num_items)
        chosen = rng.choice(candidates, size=num_negatives[user], replace=False)
        neg_user_parts.append(np.full(len(chosen), user, np.int64))
        neg_item_parts.append(chosen.astype(np.int64))

    pending_user = np.repeat(np.flatnonzero(~dense), num_negatives[~dense])
    accepted = np.empty(0, np.int64)
    while len(pending_user):
        draw = rng.integers(0, num_items, size=len(pending_user))
        key = pending_user * num_items + draw
        ok = ~_sorted_contains(excluded, key) & ~_sorted_contains(accepted, key)
        # Keep only the first of several identical draws in this round.
        is_first = np.zeros(len(key), bool)
        is_first[first_occurrence(key)] = True
        ok &= is_first
        accepted = np.sort(np.concatenate([accepted, key[ok]]))
        neg_user_parts.append(pending_user[ok])
        neg_item_parts.append(draw[ok])
        pending_user = pending_user[~ok]

    neg_user = np.concatenate(neg_user_parts) if neg_user_parts else np.empty(0, np.int64)
    neg_item = np.concatenate(neg_item_parts) if neg_item_parts else np.empty(0, np.int64)
    user = np.concatenate([pos_user, neg_user])
    item = np.concatenate([pos_item, neg_item])
    label = np.concatenate([np.ones(len(pos_user), np.int8), np.zeros(len(neg_user), np.int8)])
    order = np.argsort(user, kind="stable")
    return Interactions(user[order], item[order], label[order], num_users, num_items)


def _sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``keys`` occur in the sorted array ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), bool)
    position = np.searchsorted(sorted_keys, keys)
    return sorted_keys[np.minimum(position, len(sorted_keys) - 1)] == keys


# --------------------------------------------------------------------------------------------
# KGCN fixed-size neighbourhoods
# --------------------------------------------------------------------------------------------


def kgcn_neighbors(kg: KnowledgeGraph, num_neighbors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """KGCN's fixed neighbour tables ``(adj_entity, adj_relation)``, each ``(E, K)`` int64.

    The KG is made undirected: triple (h, r, t) puts (t, r) in h's neighbour list and (h, r) in
    t's. Each entity keeps exactly K neighbours: a uniform sample without replacement when its
    degree is >= K, with replacement otherwise. Isolated entities (degree 0, which the original
    KGCN never meets) get K self-loops with relation 0, RecBole's choice, so the tables stay valid
    indices.
    """
    _check_positive("num_neighbors", num_neighbors)
    rng = np.random.default_rng(seed)
    num_entities = kg.num_entities
    source = np.concatenate([kg.head_index, kg.tail_index])
    target = np.concatenate([kg.tail_index, kg.head_index])
    relation = np.concatenate([kg.rel_type, kg.rel_type])
    # Sorting by (source, random key) shuffles every neighbour list independently; its first K
    # entries are then a uniform sample without replacement.
    order = np.lexsort((rng.random(len(source)), source))
    target, relation = target[order], relation[order]
    degree = np.bincount(source, minlength=num_entities)
    start = np.concatenate([[0], np.cumsum(degree)[:-1]])

    slot = np.arange(num_neighbors)[None, :]  # (1, K)
    with_replacement = np.floor(rng.random((num_entities, num_neighbors)) * degree[:, None]).astype(np.int64)
    offset = np.where((degree >= num_neighbors)[:, None], slot, with_replacement)  # (E, K)
    isolated = degree == 0
    position = np.where(isolated[:, None], 0, start[:, None] + offset)
    if len(target) == 0:
        target = relation = np.zeros(1, np.int64)
    adj_entity = target[position]
    adj_relation = relation[position]
    adj_entity[isolated] = np.flatnonzero(isolated)[:, None]
    adj_relation[isolated] = 0
    return adj_entity, adj_relation


# --------------------------------------------------------------------------------------------
# RippleNet / CKAN triple sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TripleSets:
    """Fixed-size triple sets per object (user or item), one set per hop/layer.

    Shapes: ``head_index``, ``rel_type``, ``tail_index`` are ``(num_objects, L, S)`` int64 and
    ``mask`` is ``(num_objects,)`` bool. ``mask[o]`` is False when object ``o`` has no triple at
    hop 0 (no training positive, or none of its seed entities heads a triple); its rows are then
    all zeros (entity 0, relation 0), which are valid indices but carry no meaning - the original
    RippleNet/CKAN drop such users' rows from training and evaluation. In RippleNet terms
    ``memories_h, memories_r, memories_t = head_index, rel_type, tail_index``.
    """

    head_index: np.ndarray
    rel_type: np.ndarray
    tail_index: np.ndarray
    mask: np.ndarray

    @property
    def num_layers(self) -> int:
        return self.head_index.shape[1]

    @property
    def set_size(self) -> int:
        return self.head_index.shape[2]


def _sample_indices(total: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(len(total), size)`` indices: row o holds ``size`` draws from ``range(total[o])``.

    Without replacement when ``total[o] >= size``, with replacement when ``0 < total[o] < size``
    (``np.random.choice(total, size, replace=total < size)`` row by row); rows with total 0 are 0.
    """
    num_rows = len(total)
    sample = np.floor(rng.random((num_rows, size)) * total[:, None]).astype(np.int64)
    rows = np.flatnonzero(total >= size)
    if len(rows):
        # Floyd's algorithm, vectorised over rows: `size` steps give a uniform random subset.
        row_total = total[rows]
        subset = np.empty((len(rows), size), np.int64)
        for step in range(size):
            upper = row_total - size + step  # draw from 0..upper inclusive
            draw = np.floor(rng.random(len(rows)) * (upper + 1)).astype(np.int64)
            taken = (subset[:, :step] == draw[:, None]).any(axis=1)
            subset[:, step] = np.where(taken, upper, draw)
        sample[rows] = subset
    return sample


def _propagate(
    kg: KnowledgeGraph,
    seed_start: np.ndarray,
    seed_entity: np.ndarray,
    num_layers: int,
    set_size: int,
    rng: np.random.Generator,
) -> TripleSets:
    """RippleNet/CKAN propagation over the directed KG (heads -> tails).

    Object o starts from the entities ``seed_entity[seed_start[o]:seed_start[o + 1]]`` (a multiset).
    Layer l samples ``set_size`` triples from all triples whose head is one of the current seeds
    (each seed occurrence contributes all its out-triples); the sampled tails (with repetition) seed
    layer l + 1. An object with no candidate triple at layer l >= 1 repeats layer l - 1.
    """
    num_objects = len(seed_start) - 1
    order = np.argsort(kg.head_index, kind="stable")
    out_rel, out_tail = kg.rel_type[order], kg.tail_index[order]
    out_degree = np.bincount(kg.head_index, minlength=kg.num_entities)
    out_start = np.concatenate([[0], np.cumsum(out_degree)[:-1]])

    shape = (num_objects, num_layers, set_size)
    head = np.zeros(shape, np.int64)
    rel = np.zeros(shape, np.int64)
    tail = np.zeros(shape, np.int64)
    mask = np.zeros(num_objects, bool)
    for layer in range(num_layers):
        seed_degree = out_degree[seed_entity]
        seed_end_cum = np.cumsum(seed_degree)  # candidates up to and including each seed
        cum = np.concatenate([[0], seed_end_cum])
        first_candidate = cum[seed_start[:-1]]  # (num_objects,)
        total = cum[seed_start[1:]] - first_candidate
        has = total > 0
        index = _sample_indices(total, set_size, rng)  # (num_objects, S)
        if len(seed_end_cum) and has.any():
            candidate = first_candidate[has, None] + index[has]  # global candidate number
            seed_position = np.searchsorted(seed_end_cum, candidate, side="right")
            entity = seed_entity[seed_position]
            edge = out_start[entity] + candidate - (seed_end_cum[seed_position] - seed_degree[seed_position])
            head[has, layer], rel[has, layer], tail[has, layer] = entity, out_rel[edge], out_tail[edge]
        if layer == 0:
            mask = has
        else:
            repeat = mask & ~has
            head[repeat, layer], rel[repeat, layer], tail[repeat, layer] = (
                head[repeat, layer - 1], rel[repeat, layer - 1], tail[repeat, layer - 1]
            )
        # The next layer starts from this layer's tails; masked objects have no seeds.
        seed_entity = tail[mask, layer].reshape(-1)
        seed_start = np.concatenate([[0], np.cumsum(np.where(mask, set_size, 0))])
    return TripleSets(head, rel, tail, mask)


def _grouped_positives(train: Interactions, num_groups: int, by_user: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(start, members)``: CSR lists of training-positive items per user (or users per item)."""
    positive = train.label == 1
    key = train.user_index[positive] if by_user else train.item_index[positive]
    value = train.item_index[positive] if by_user else train.user_index[positive]
    order = np.argsort(key, kind="stable")
    start = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=num_groups))])
    return start, value[order]


def _check_kg_matches(kg: KnowledgeGraph, train: Interactions) -> None:
    if train.num_items > kg.num_entities:
        raise ValueError(f"items must be entities: num_items={train.num_items} > num_entities={kg.num_entities}")


def ripple_sets(
    kg: KnowledgeGraph, train_interactions: Interactions, num_hops: int, num_memory: int, seed: int
) -> TripleSets:
    """RippleNet ripple sets, ``(U, L=num_hops, S=num_memory)`` per array, from training data only.

    Hop 0 starts from the user's training positives (label-1 rows of ``train_interactions``);
    hop h samples ``num_memory`` of the triples whose head is among hop h-1's tails (KG directed,
    with replacement when there are fewer candidates); an empty hop repeats the previous one.
    ``mask`` marks the users that have a ripple set (see :class:`TripleSets`).
    """
    _check_positive("num_hops", num_hops)
    _check_positive("num_memory", num_memory)
    _check_kg_matches(kg, train_interactions)
    rng = np.random.default_rng(seed)
    start, items = _grouped_positives(train_interactions, train_interactions.num_users, by_user=True)
    return _propagate(kg, start, items, num_hops, num_memory, rng)


def ckan_triple_sets(
    kg: KnowledgeGraph,
    train_interactions: Interactions,
    num_layers: int,
    user_set_size: int,
    item_set_size: int,
    seed: int,
) -> tuple[TripleSets, TripleSets]:
    """CKAN's user and item triple sets: ``(U, L, user_set_size)`` and ``(I, L, item_set_size)``.

    User initial set: the user's training positives. Item initial set: every item co-liked with
    it (liked by a user who liked it in training, the item included), or the item alone when no
    training user liked it. Both then propagate over the directed KG like :func:`ripple_sets`.
    Item ``mask`` is False only for items none of whose initial entities heads a triple (the
    original code crashes on those). Co-liked sets are built from all pairs of each user's
    training positives: memory grows with the sum over users of (positives per user)^2.
    """
    _check_positive("num_layers", num_layers)
    _check_positive("user_set_size", user_set_size)
    _check_positive("item_set_size", item_set_size)
    _check_kg_matches(kg, train_interactions)
    rng = np.random.default_rng(seed)
    num_users, num_items = train_interactions.num_users, train_interactions.num_items
    user_start, user_items = _grouped_positives(train_interactions, num_users, by_user=True)
    user_sets = _propagate(kg, user_start, user_items, num_layers, user_set_size, rng)

    # Every pair (a, b) of items liked by one user makes b a collaborative neighbour of a.
    per_user = np.diff(user_start)
    num_pairs = per_user * per_user
    pair_user = np.repeat(np.arange(num_users), num_pairs)
    within = np.arange(len(pair_user)) - np.repeat(np.cumsum(num_pairs) - num_pairs, num_pairs)
    first = user_start[pair_user]
    item_a = user_items[first + within // per_user[pair_user]]
    item_b = user_items[first + within % per_user[pair_user]]
    lonely = np.setdiff1d(np.arange(num_items), item_a)
    stride = max(num_items, 1)
    pair_key = unique_sorted(np.concatenate([item_a * stride + item_b, lonely * stride + lonely]))
    item_start = np.concatenate([[0], np.cumsum(np.bincount(pair_key // stride, minlength=num_items))])
    item_sets = _propagate(kg, item_start, pair_key % stride, num_layers, item_set_size, rng)
    return user_sets, item_sets
