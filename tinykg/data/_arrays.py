"""Small sort-based array helpers.

numpy 2's ``np.unique`` switched to a hash table for integer input that is several times slower
than sorting on the multi-million-element key arrays built here, so these helpers sort instead.
"""

from __future__ import annotations

import numpy as np


def unique_sorted(keys: np.ndarray) -> np.ndarray:
    """The distinct values of ``keys`` (flattened), ascending: ``np.unique`` without the hash table."""
    keys = np.sort(keys, axis=None)
    if len(keys) == 0:
        return keys
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Ascending positions of the first occurrence of each distinct value of ``keys``."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    if len(keys) == 0:
        return order
    is_first = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    return np.sort(order[is_first])
