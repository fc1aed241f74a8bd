"""The collaborative knowledge graph (CKG) of KGAT and the inverse-augmented KG of KGIN, built with numpy.

CKG (KGAT, Wang et al. KDD 2019): users and KG entities in one graph.

* Nodes: users ``0..U-1``, then entities ``U..U+N_e-1``; item ``i`` is entity ``i``, so node ``U + i``.
* Relations: 0 = "interact" (user -> item); KG relation ``r`` becomes ``r + 1``; every relation
  ``r'`` in ``0..R`` has an inverse ``r' + R + 1`` (tail -> head). ``num_relations = 2 (R + 1)``.
* Edge weights: the adjacency of every relation is normalised on its own (KGAT's ``adj_type``):
  ``"si"`` (default) ``A_r[h, t] = 1 / deg_r(h)`` (row-normalised D^-1 A), ``"bi"``
  ``1 / sqrt(deg_r(h) indeg_r(t))``. Their sum is KGAT's propagation matrix before the first attention
  refresh.

Edges are de-duplicated and sorted by (head, relation, tail): the edges of one head are contiguous (CSR
order), which makes the scatter into heads cache-friendly.
Legend: U users, I items, N_e entities, R KG relations, E edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Interactions, KnowledgeGraph

__all__ = ["CollaborativeGraph", "build_ckg", "kg_with_inverse", "relation_normalized_weight", "NORMS"]

NORMS = ("si", "bi")


@dataclass(frozen=True, eq=False)
class CollaborativeGraph:
    """Directed typed edges ``head_index[e] --rel_type[e]--> tail_index[e]`` over users + entities.

    Shapes: ``head_index``, ``rel_type``, ``tail_index`` (E,) int64; ``edge_weight`` (E,) float32, the
    per-relation normalised adjacency value of each edge. Propagation reads ``out[h] += w * x[t]``.
    """

    head_index: np.ndarray
    rel_type: np.ndarray
    tail_index: np.ndarray
    edge_weight: np.ndarray
    num_users: int
    num_entities: int
    num_relations: int

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_entities

    @property
    def num_edges(self) -> int:
        return len(self.head_index)


def _dedupe_sorted(head: np.ndarray, rel: np.ndarray, tail: np.ndarray):
    """Unique (head, rel, tail) rows, sorted by (head, rel, tail)."""
    order = np.lexsort((tail, rel, head))
    head, rel, tail = head[order], rel[order], tail[order]
    keep = np.ones(len(head), bool)
    keep[1:] = (np.diff(head) != 0) | (np.diff(rel) != 0) | (np.diff(tail) != 0)
    return head[keep], rel[keep], tail[keep]


def relation_normalized_weight(
    head_index: np.ndarray,
    rel_type: np.ndarray,
    tail_index: np.ndarray,
    num_nodes: int,
    num_relations: int,
    norm: str = "si",
) -> np.ndarray:
    """(E,) float32 weights of the per-relation normalised adjacency (see the module docstring)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    out_key = rel_type * num_nodes + head_index
    out_degree = np.bincount(out_key, minlength=num_relations * num_nodes)[out_key].astype(np.float64)
    if norm == "si":
        return (1.0 / out_degree).astype(np.float32)
    in_key = rel_type * num_nodes + tail_index
    in_degree = np.bincount(in_key, minlength=num_relations * num_nodes)[in_key].astype(np.float64)
    return (1.0 / np.sqrt(out_degree * in_degree)).astype(np.float32)


def build_ckg(train: Interactions, kg: KnowledgeGraph, *, norm: str = "si") -> CollaborativeGraph:
    """The CKG of the training positives ``train`` and ``kg`` (items must be entities ``0..I-1``).

    Only label-1 rows of ``train`` become interact edges. Validation and test positives must not be in
    ``train``: the graph is what the model may see.
    """
    num_users = train.num_users
    num_entities = max(kg.num_entities, train.num_items)
    num_nodes = num_users + num_entities
    num_forward = kg.num_relations + 1  # interact + KG relations
    positive = train.label == 1
    user = train.user_index[positive]
    item_node = train.item_index[positive] + num_users
    head = np.concatenate([user, kg.head_index + num_users])
    rel = np.concatenate([np.zeros(len(user), np.int64), kg.rel_type + 1])
    tail = np.concatenate([item_node, kg.tail_index + num_users])
    # Inverse relations: t --(r + R + 1)--> h.
    head, rel, tail = (np.concatenate(pair) for pair in ((head, tail), (rel, rel + num_forward), (tail, head)))
    num_relations = 2 * num_forward
    head, rel, tail = _dedupe_sorted(head, rel, tail)
    weight = relation_normalized_weight(head, rel, tail, num_nodes, num_relations, norm)
    return CollaborativeGraph(head, rel, tail, weight, num_users, num_entities, num_relations)


def kg_with_inverse(kg: KnowledgeGraph, num_entities: int | None = None) -> KnowledgeGraph:
    """``kg`` de-duplicated, plus the inverse ``(t, r + R, h)`` of every triple (KGIN's ``inverse_r``).

    Relations ``0..2R-1``; entities ``0..num_entities-1`` (default ``kg.num_entities``); triples sorted
    by (head, relation, tail).
    """
    num_entities = kg.num_entities if num_entities is None else max(num_entities, kg.num_entities)
    num_relations = 2 * kg.num_relations
    head = np.concatenate([kg.head_index, kg.tail_index])
    rel = np.concatenate([kg.rel_type, kg.rel_type + kg.num_relations])
    tail = np.concatenate([kg.tail_index, kg.head_index])
    head, rel, tail = _dedupe_sorted(head, rel, tail)
    return KnowledgeGraph(head, rel, tail, num_entities=num_entities, num_relations=num_relations)
