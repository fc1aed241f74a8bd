"""Top-K evaluation (hand-computed Recall@K and standard NDCG@K, masking of seen items), the samplers, the
splits, and `train_topk` end to end on the toy synthetic graph (payload schema, determinism)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tinykg.data import Dataset, Interactions, KnowledgeGraph, SyntheticConfig, make_synthetic
from tinykg.data.ckg import build_ckg
from tinykg.train.topk import (
    KGTripleSampler,
    PairSet,
    TopKConfig,
    evaluate_topk,
    rank_metrics,
    sample_negatives,
    topk_dataset_key,
    topk_hyperparameters,
    topk_split_for,
    train_topk,
)


class FixedScores(nn.Module):
    """A 'model' whose scores are a given (U, I) matrix: users are one-hot rows, items the columns."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def representations(self):
        return torch.eye(self.scores.shape[0]), self.scores.t().contiguous()


def pairs(user, item, num_users, num_items):
    return Interactions.from_positives(np.asarray(user), np.asarray(item), num_users, num_items)


# -- metrics -------------------------------------------------------------------------------------------


def test_rank_metrics_hand_computed():
    # One user, items ranked 4, 2, 0, 3, 1 (scores descending); relevant items {2, 1}.
    scores = torch.tensor([[0.5, 0.1, 0.8, 0.3, 0.9]])
    relevant = torch.tensor([[False, True, True, False, False]])
    out = rank_metrics(scores, relevant, ks=(1, 2, 5))
    assert out["recall@1"].item() == 0.0 and out["ndcg@1"].item() == 0.0
    assert out["recall@2"].item() == pytest.approx(0.5)
    # hit at rank 2: DCG = 1/log2(3); IDCG@2 = 1 + 1/log2(3)
    assert out["ndcg@2"].item() == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    # hits at ranks 2 and 5: DCG = 1/log2(3) + 1/log2(6)
    assert out["recall@5"].item() == pytest.approx(1.0)
    assert out["ndcg@5"].item() == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)))


def test_rank_metrics_standard_ndcg_counts_missed_items():
    """One of two held-out items found at rank 1: standard NDCG@20 = 1 / (1 + 1/log2 3) ~ 0.613 (KGAT's
    original would give 1.0: its ideal list is its own hits re-sorted)."""
    scores = torch.arange(30, 0, -1, dtype=torch.float32).unsqueeze(0)  # item 0 first, item 29 last
    relevant = torch.zeros(1, 30, dtype=torch.bool)
    relevant[0, [0, 29]] = True
    out = rank_metrics(scores, relevant, ks=(20,))
    assert out["recall@20"].item() == pytest.approx(0.5)
    assert out["ndcg@20"].item() == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_rank_metrics_k_larger_than_items_and_perfect_ranking():
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    relevant = torch.tensor([[True, True, False], [False, False, True]])
    out = rank_metrics(scores, relevant, ks=(20,))
    torch.testing.assert_close(out["recall@20"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(out["ndcg@20"], torch.ones(2, dtype=torch.float64))


def test_evaluate_topk_masks_training_items():
    # User 0 scores item 0 highest, but item 0 is a training item: it must not count. Held out: item 1.
    scores = [[9.0, 1.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    model = FixedScores(scores)
    train = pairs([0], [0], 2, 4)
    test_on_train_item = pairs([0], [0], 2, 4)
    unmasked = evaluate_topk(model, test_on_train_item, (), ks=(1,))
    assert unmasked["recall@1"] == 1.0  # without masking the training item would be a hit
    test = pairs([0], [1], 2, 4)
    masked = evaluate_topk(model, test, (train,), ks=(1, 2))
    # ranking after masking: item 2 (5.0), item 1 (1.0), item 3 (0.0)
    assert masked["recall@1"] == 0.0
    assert masked["recall@2"] == 1.0
    assert masked["ndcg@2"] == pytest.approx(1 / math.log2(3))
    # the validation items are masked as well in the test evaluation
    valid = pairs([0], [2], 2, 4)
    assert evaluate_topk(model, test, (train, valid), ks=(1,))["recall@1"] == 1.0


def test_evaluate_topk_averages_over_users_with_held_out_items_and_is_batch_invariant():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(7, 12, generator=g)
    model = FixedScores(scores)
    rng = np.random.default_rng(0)
    train = pairs(rng.integers(0, 7, 20), rng.integers(0, 12, 20), 7, 12)
    seen = PairSet(train.user_index, train.item_index, 12)
    users = np.array([0, 0, 2, 3, 5, 6, 6, 6])  # users 1 and 4 have nothing held out
    items = sample_negatives(users, seen, 12, rng)
    keys = np.unique(users * 12 + items)
    test = pairs(keys // 12, keys % 12, 7, 12)
    full = evaluate_topk(model, test, (train,), ks=(3, 20), batch_size=100)
    for batch_size in (1, 2, 5):
        split = evaluate_topk(model, test, (train,), ks=(3, 20), batch_size=batch_size)
        assert split == pytest.approx(full)
    # by hand, user by user
    masked = scores.clone()
    masked[torch.as_tensor(train.user_index), torch.as_tensor(train.item_index)] = -math.inf
    per_user = []
    for user in np.unique(test.user_index):
        relevant = torch.zeros(1, 12, dtype=torch.bool)
        relevant[0, torch.as_tensor(test.item_index[test.user_index == user])] = True
        per_user.append(rank_metrics(masked[user : user + 1], relevant, ks=(3,))["recall@3"].item())
    assert full["recall@3"] == pytest.approx(np.mean(per_user))


# -- samplers and splits -------------------------------------------------------------------------------


def test_sample_negatives_avoids_positives():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 5, 200)
    items = rng.integers(0, 6, 200)
    seen = PairSet(users, items, 6)
    query = np.repeat(np.arange(5), 100)
    negatives = sample_negatives(query, seen, 6, rng)
    possible = ~seen.contains(np.repeat(np.arange(5), 6), np.tile(np.arange(6), 5)).reshape(5, 6).all(1)
    rows = possible[query]
    assert not seen.contains(query[rows], negatives[rows]).any()


def test_kg_triple_sampler_positive_in_graph_negative_not():
    dataset = make_synthetic(SyntheticConfig.toy(), seed=0)
    ckg = build_ckg(dataset.interactions.positives(), dataset.kg)
    sampler = KGTripleSampler(ckg)
    head, rel, tail, neg = sampler.sample(500, np.random.default_rng(0))
    edges = set(zip(ckg.head_index.tolist(), ckg.rel_type.tolist(), ckg.tail_index.tolist()))
    assert all((h, r, t) in edges for h, r, t in zip(head.tolist(), rel.tolist(), tail.tolist()))
    assert not any((h, r, t) in edges for h, r, t in zip(head.tolist(), rel.tolist(), neg.tolist()))
    assert neg.max() < ckg.num_nodes


def _dataset(test=None):
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(20), 10), np.tile(np.arange(10), 20)
    kg = KnowledgeGraph([0, 1], [0, 0], [10, 11], num_entities=12, num_relations=1)
    labels = rng.integers(0, 2, len(users)).astype(np.int8)
    labels[::10] = 1
    interactions = Interactions(users, items, labels, 20, 10)
    return Dataset("toy", interactions, kg, test_interactions=test)


def test_topk_split_for_protocols():
    dataset = _dataset()
    positives = int(dataset.interactions.num_positives)
    for key, test_share in (("lastfm", 0.2), ("recbole", 0.1)):
        train, valid, test = topk_split_for(dataset, key, seed=0)
        assert train.num_interactions + valid.num_interactions + test.num_interactions == positives
        assert (train.label == 1).all() and (test.label == 1).all()
        assert abs(test.num_interactions / positives - test_share) < 0.05
        keys = [set(zip(p.user_index.tolist(), p.item_index.tolist())) for p in (train, valid, test)]
        assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    fixed = pairs([0, 1], [3, 4], 20, 10)
    train, valid, test = topk_split_for(_dataset(fixed), "recbole", seed=0)
    assert test is not None and test.num_interactions == 2
    assert train.num_interactions + valid.num_interactions == positives


def test_topk_dataset_key_and_hyperparameters():
    assert topk_dataset_key("lastfm-kgcn") == "lastfm"
    assert topk_dataset_key("synthetic") == "synthetic"
    assert topk_dataset_key("ml-100k") == "recbole"
    assert topk_hyperparameters("kgat", "lastfm", {"epochs": 3})["epochs"] == 3
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        topk_hyperparameters("kgin", "lastfm", {"layer_sizes": (8,)})
    with pytest.raises(ValueError, match="unknown top-K model"):
        topk_hyperparameters("kgcn", "lastfm")
    assert TopKConfig(ks=(5,)).ks == (5, 20)  # recall@20 drives early stopping, so it is always computed


# -- end to end ----------------------------------------------------------------------------------------

TINY = {
    "kgat": dict(
        embedding_dim=8, layer_sizes=(8, 4), kge_dim=8, epochs=2, eval_every=1, batch_size=128, kg_batch_size=256
    ),
    "kgin": dict(embedding_dim=8, num_hops=2, num_intents=2, epochs=2, eval_every=1, batch_size=128),
    "bprmf": dict(embedding_dim=8, epochs=2, eval_every=1, batch_size=128),
}


@pytest.fixture(scope="module")
def toy_dataset():
    return make_synthetic(SyntheticConfig.toy(), seed=0)


def _train(dataset, name, seed, log=lambda line: None):
    return train_topk(
        name, dataset, bits=2, backend="torch", seed=seed, overrides=TINY[name], progress=False, log=log
    )


@pytest.mark.parametrize("name", ("kgat", "kgin", "bprmf"))
def test_train_topk_payload(toy_dataset, name):
    lines = []
    payload = _train(toy_dataset, name, seed=0, log=lines.append)
    for key in (
        "model", "dataset", "bits", "seed", "metrics", "activation_bytes", "activation_bytes_fp32", "activation_ratio",
        "peak_memory_bytes", "epoch_seconds", "epochs", "best_epoch", "history", "hyperparameters", "compression",
        "dataset_info", "device", "versions",
    ):
        assert key in payload, key
    assert payload["model"] == name and payload["bits"] == 2 and payload["epochs"] == 2
    assert set(payload["metrics"]) == {"recall@20", "ndcg@20"}
    assert all(0.0 <= v <= 1.0 for v in payload["metrics"].values())
    assert payload["activation_ratio"] > 1.0
    assert any("valid recall@20" in line for line in lines)
    if name == "kgat":
        assert "kg_loss" in payload["history"][0]


def test_train_topk_is_deterministic(toy_dataset):
    runs = [_train(toy_dataset, "kgin", seed=3) for _ in range(2)]
    assert runs[0]["metrics"] == runs[1]["metrics"]
    assert [h["loss"] for h in runs[0]["history"]] == [h["loss"] for h in runs[1]["history"]]
    other = _train(toy_dataset, "kgin", seed=4)
    assert [h["loss"] for h in other["history"]] != [h["loss"] for h in runs[0]["history"]]


def test_train_topk_early_stopping(toy_dataset):
    overrides = dict(TINY["bprmf"], epochs=30, lr=1e-6)  # no progress: validation recall cannot improve for long
    lines = []
    payload = train_topk(
        "bprmf", toy_dataset, bits=32, seed=0, overrides=overrides, patience=2, progress=False, log=lines.append
    )
    assert payload["epochs"] < 30 and any("early stop" in line for line in lines)
    assert payload["activation_ratio"] == 1.0
