"""Train/validation/test splits for the two evaluation protocols.

* CTR (KGCN, KGNN-LS, RippleNet, CKAN): a random 6:2:2 split of the labelled rows.
* Top-K (KGAT, KGIN): a per-user split of each user's positives.

Both draw from ``np.random.default_rng(seed)`` (numpy's PCG64 Generator), not the legacy global
RNG the original scripts seed; the splits have the same distribution, not the same rows.
"""

from __future__ import annotations

import numpy as np

from .graph import Interactions

__all__ = ["ctr_split", "topk_split"]


def ctr_split(
    interactions: Interactions, ratios: tuple[float, float, float] = (0.6, 0.2, 0.2), *, seed: int
) -> tuple[Interactions, Interactions, Interactions]:
    """Random row split into ``(train, valid, test)`` with the given ratios.

    As in the KGCN/RippleNet code, the validation and test parts get ``int(N * ratio)`` rows and
    training gets the rest. Each part keeps the rows' original order (shuffle per epoch in the
    training loop). The parts are disjoint and together hold every row.
    """
    if len(ratios) != 3 or any(ratio < 0 for ratio in ratios) or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    num_rows = interactions.num_interactions
    num_valid = int(num_rows * ratios[1])
    num_test = int(num_rows * ratios[2])
    permutation = np.random.default_rng(seed).permutation(num_rows)
    valid_rows = np.sort(permutation[:num_valid])
    test_rows = np.sort(permutation[num_valid : num_valid + num_test])
    train_rows = np.sort(permutation[num_valid + num_test :])
    return interactions.select(train_rows), interactions.select(valid_rows), interactions.select(test_rows)


def topk_split(
    interactions: Interactions, test_ratio: float = 0.2, valid_ratio: float = 0.1, *, seed: int
) -> tuple[Interactions, Interactions, Interactions]:
    """Per-user split of positives into ``(train, valid, test)`` for top-K evaluation.

    For a user with n positives, ``round(test_ratio * n)`` random positives go to test, then
    ``round(valid_ratio * m)`` of the m remaining ones go to validation; a user always keeps at
    least one training positive (so a user with one positive has no test item). ``interactions``
    must hold only positives (label 1): call ``.positives()`` on labelled data first.
    """
    if not (0 <= test_ratio < 1 and 0 <= valid_ratio < 1):
        raise ValueError(f"test_ratio and valid_ratio must lie in [0, 1), got {test_ratio}, {valid_ratio}")
    if interactions.num_positives != interactions.num_interactions:
        raise ValueError("topk_split needs positives only; use interactions.positives()")
    rng = np.random.default_rng(seed)
    user = interactions.user_index
    # Sorting by (user, random key) shuffles each user's positives; a row's rank within its user
    # then decides its part.
    order = np.lexsort((rng.random(len(user)), user))
    count = np.bincount(user, minlength=interactions.num_users)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    rank = np.empty(len(user), np.int64)
    rank[order] = np.arange(len(user)) - start[user[order]]

    num_test = np.minimum(np.rint(test_ratio * count).astype(np.int64), np.maximum(count - 1, 0))
    remaining = count - num_test
    num_valid = np.minimum(np.rint(valid_ratio * remaining).astype(np.int64), np.maximum(remaining - 1, 0))
    is_test = rank < num_test[user]
    is_valid = ~is_test & (rank < (num_test + num_valid)[user])
    is_train = ~is_test & ~is_valid
    return interactions.select(is_train), interactions.select(is_valid), interactions.select(is_test)
