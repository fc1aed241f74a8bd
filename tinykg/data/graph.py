"""The in-memory types of the data layer: a knowledge graph, labelled interactions, a dataset.

All index arrays are 1-D ``int64`` numpy arrays; labels are ``int8`` 0/1. Items are entities:
item ``i`` is entity ``i`` for ``i < num_items`` (the convention of KGCN, RippleNet, CKAN, KGAT
and KGIN), so every item embedding is also an entity embedding.

The classes are frozen dataclasses (``eq=False``, because comparing numpy arrays with ``==`` has no
single truth value). Frozen means the fields cannot be rebound; the arrays themselves are ordinary
writable numpy arrays so that ``torch.from_numpy`` works without a warning - treat them as
read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KnowledgeGraph", "Interactions", "Dataset"]


def _as_index_array(name: str, values) -> np.ndarray:
    """``values`` as a 1-D int64 array; ValueError if it is not a 1-D integer array."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has values beyond the int64 range")
    return array.astype(np.int64, copy=False)


def _check_range(name: str, array: np.ndarray, upper: int, upper_name: str) -> None:
    """ValueError unless every value of ``array`` lies in ``[0, upper)``."""
    if array.size == 0:
        return
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ValueError(f"{name} has a negative value ({low})")
    if high >= upper:
        raise ValueError(f"{name} has value {high} but {upper_name} is {upper}")


def _check_count(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


@dataclass(frozen=True, eq=False)
class KnowledgeGraph:
    """Directed typed triples ``(head_index[j], rel_type[j], tail_index[j])``.

    Shapes: ``head_index``, ``rel_type``, ``tail_index`` are ``(num_triples,)`` int64.
    Entities are ``0..num_entities-1``, relations ``0..num_relations-1``; entities and relations
    that occur in no triple are allowed (isolated entities).
    """

    head_index: np.ndarray
    rel_type: np.ndarray
    tail_index: np.ndarray
    num_entities: int
    num_relations: int

    def __post_init__(self) -> None:
        for name in ("head_index", "rel_type", "tail_index"):
            object.__setattr__(self, name, _as_index_array(name, getattr(self, name)))
        object.__setattr__(self, "num_entities", _check_count("num_entities", self.num_entities))
        object.__setattr__(self, "num_relations", _check_count("num_relations", self.num_relations))
        if not len(self.head_index) == len(self.rel_type) == len(self.tail_index):
            raise ValueError(
                "head_index, rel_type and tail_index must have the same length, got "
                f"{len(self.head_index)}, {len(self.rel_type)}, {len(self.tail_index)}"
            )
        _check_range("head_index", self.head_index, self.num_entities, "num_entities")
        _check_range("tail_index", self.tail_index, self.num_entities, "num_entities")
        _check_range("rel_type", self.rel_type, self.num_relations, "num_relations")

    @property
    def num_triples(self) -> int:
        """Number of triples."""
        return len(self.head_index)

    def triples(self) -> np.ndarray:
        """The triples as one ``(num_triples, 3)`` int64 array of (head, relation, tail) rows."""
        return np.stack([self.head_index, self.rel_type, self.tail_index], axis=1)


@dataclass(frozen=True, eq=False)
class Interactions:
    """Labelled user-item rows ``(user_index[n], item_index[n], label[n])``.

    Shapes: ``user_index``, ``item_index`` are ``(num_interactions,)`` int64, ``label`` is
    ``(num_interactions,)`` int8 holding 0 (negative) or 1 (positive). Implicit-feedback data
    (top-K evaluation) has every label 1. Users are ``0..num_users-1``, items ``0..num_items-1``.
    """

    user_index: np.ndarray
    item_index: np.ndarray
    label: np.ndarray
    num_users: int
    num_items: int

    def __post_init__(self) -> None:
        for name in ("user_index", "item_index"):
            object.__setattr__(self, name, _as_index_array(name, getattr(self, name)))
        label = np.asarray(self.label)
        # A bool mask is a label too (e.g. ``rating >= 4``); floats are not, 0.7 has no 0/1 meaning.
        label = _as_index_array("label", label.astype(np.int8) if label.dtype == np.bool_ else label)
        if label.size and not np.isin(label, (0, 1)).all():
            raise ValueError("label must hold only 0 and 1")
        object.__setattr__(self, "label", label.astype(np.int8))
        object.__setattr__(self, "num_users", _check_count("num_users", self.num_users))
        object.__setattr__(self, "num_items", _check_count("num_items", self.num_items))
        if not len(self.user_index) == len(self.item_index) == len(self.label):
            raise ValueError(
                "user_index, item_index and label must have the same length, got "
                f"{len(self.user_index)}, {len(self.item_index)}, {len(self.label)}"
            )
        _check_range("user_index", self.user_index, self.num_users, "num_users")
        _check_range("item_index", self.item_index, self.num_items, "num_items")

    @classmethod
    def from_positives(cls, user_index, item_index, num_users: int, num_items: int) -> Interactions:
        """Implicit feedback: every given (user, item) row gets label 1."""
        user_index = np.asarray(user_index)
        return cls(user_index, item_index, np.ones(len(user_index), np.int8), num_users, num_items)

    @property
    def num_interactions(self) -> int:
        """Number of rows (positives and negatives)."""
        return len(self.user_index)

    @property
    def num_positives(self) -> int:
        """Number of rows with label 1."""
        return int(np.count_nonzero(self.label))

    def __len__(self) -> int:
        return self.num_interactions

    def select(self, rows) -> Interactions:
        """The rows picked by a boolean mask or an index array, same ``num_users``/``num_items``."""
        return Interactions(
            self.user_index[rows], self.item_index[rows], self.label[rows], self.num_users, self.num_items
        )

    def positives(self) -> Interactions:
        """Only the rows with label 1."""
        return self.select(self.label == 1)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions plus the knowledge graph whose first ``num_items`` entities are the items.

    ``interactions`` holds the labelled rows of a CTR dataset (KGCN/RippleNet formats, RecBole,
    synthetic) or the training positives of a top-K dataset. ``test_interactions`` is ``None``
    except for formats that ship a fixed test split (KGAT/KGIN ``test.txt``): then it holds those
    test positives, with the same ``num_users`` and ``num_items``. ``notes``: what a reader changed or
    found questionable in the files without refusing them (repeated rows dropped, unlinked items), one
    sentence each; ``tinykg data info`` and ``tinykg train`` print them.
    """

    name: str
    interactions: Interactions
    kg: KnowledgeGraph
    test_interactions: Interactions | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.interactions.num_items > self.kg.num_entities:
            raise ValueError(
                f"items must be entities: num_items={self.interactions.num_items} > "
                f"num_entities={self.kg.num_entities}"
            )
        test = self.test_interactions
        if test is not None and (test.num_users, test.num_items) != (self.num_users, self.num_items):
            raise ValueError(
                f"test_interactions has num_users={test.num_users}, num_items={test.num_items}; "
                f"expected {self.num_users}, {self.num_items}"
            )

    @property
    def num_users(self) -> int:
        return self.interactions.num_users

    @property
    def num_items(self) -> int:
        return self.interactions.num_items

    @property
    def num_entities(self) -> int:
        return self.kg.num_entities

    @property
    def num_relations(self) -> int:
        return self.kg.num_relations

    def info(self) -> dict[str, int]:
        """Summary counts: users, items, interactions, positives, entities, relations, triples
        (plus test_interactions when a fixed test split exists)."""
        info = {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.interactions.num_interactions,
            "positives": self.interactions.num_positives,
            "entities": self.num_entities,
            "relations": self.num_relations,
            "triples": self.kg.num_triples,
        }
        if self.test_interactions is not None:
            info["test_interactions"] = self.test_interactions.num_interactions
        return info
