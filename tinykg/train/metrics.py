"""Evaluation metrics for CTR prediction."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) statistic, ties given average ranks.

    Equals sklearn's ``roc_auc_score``. NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average rank (1-based) over each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    u = ranks[labels].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u / (num_pos * num_neg))


def f1_score(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the positive class, predicting positive where probability >= threshold (KGCN's rule)."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(probabilities) >= threshold
    true_pos = int((labels & predicted).sum())
    denom = int(labels.sum()) + int(predicted.sum())
    return 2.0 * true_pos / denom if denom else 0.0


def accuracy(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """Share of rows whose thresholded prediction equals the label (RippleNet reports it)."""
    labels = np.asarray(labels).astype(bool)
    return float(((np.asarray(probabilities) >= threshold) == labels).mean()) if labels.size else float("nan")
