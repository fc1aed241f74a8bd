"""Metrics against hand-computed cases."""

import math

import numpy as np
import pytest

from tinykg.train.metrics import accuracy, f1_score, roc_auc


def test_roc_auc_hand_computed():
    # Pairs (pos, neg): (0.9,0.1) (0.9,0.4) (0.35,0.1) (0.35,0.4) -> 3 of 4 ordered correctly.
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.35, 0.4])) == 0.75
    assert roc_auc(np.array([1, 1, 0]), np.array([0.5, 0.5, 0.5])) == 0.5  # ties count half
    assert roc_auc(np.array([1, 0]), np.array([0.2, 0.8])) == 0.0
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.8])))


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300), 2)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(labels, scores) == pytest.approx(pairwise, abs=1e-12)


def test_f1_and_accuracy_hand_computed():
    labels = np.array([1, 1, 0, 0, 1])
    probs = np.array([0.9, 0.4, 0.6, 0.1, 0.5])  # predicted: 1 0 1 0 1 -> tp=2, fp=1, fn=1
    assert f1_score(labels, probs) == pytest.approx(2 * 2 / (3 + 3))
    assert accuracy(labels, probs) == pytest.approx(3 / 5)
    assert f1_score(np.array([0, 0]), np.array([0.1, 0.2])) == 0.0
