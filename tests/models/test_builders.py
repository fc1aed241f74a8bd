"""`tinykg.train.builders`: published defaults, overrides, and models built from the training split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinykg.compress import CompressionConfig
from tinykg.data import SyntheticConfig, ctr_split, make_synthetic
from tinykg.models import DEFAULTS, MODELS
from tinykg.train.builders import build_ctr_model, hyperparameters

from .factories import NAMES


@pytest.fixture(scope="module")
def toy():
    dataset = make_synthetic(SyntheticConfig.toy(), seed=0)
    train, valid, test = ctr_split(dataset.interactions, seed=0)
    return dataset, train


def test_hyperparameters_defaults_and_overrides():
    params = hyperparameters("kgcn", "lastfm")
    assert params == DEFAULTS["kgcn"]["lastfm"] and params is not DEFAULTS["kgcn"]["lastfm"]
    params = hyperparameters("kgcn", "lastfm", {"num_layers": 2, "lr": 1e-3})
    assert (params["num_layers"], params["lr"], params["embedding_dim"]) == (2, 1e-3, 16)
    assert DEFAULTS["kgcn"]["lastfm"]["num_layers"] == 1  # defaults untouched


def test_hyperparameters_reject_unknown_names():
    with pytest.raises(ValueError, match="kgcn, kgnn-ls, ripplenet, ckan"):
        hyperparameters("kgat", "lastfm")
    with pytest.raises(ValueError, match="dataset key"):
        hyperparameters("kgcn", "movie")
    with pytest.raises(ValueError, match="num_hops"):
        hyperparameters("kgcn", "lastfm", {"num_hops": 2})


@pytest.mark.parametrize("name", NAMES)
def test_build_ctr_model_trains_on_synthetic_toy(toy, name):
    dataset, train = toy
    torch.manual_seed(0)
    model = build_ctr_model(name, dataset, train, compression=CompressionConfig(bits=2), seed=0)
    assert isinstance(model, MODELS[name])
    user = torch.as_tensor(train.user_index[:128])
    item = torch.as_tensor(train.item_index[:128])
    label = torch.as_tensor(train.label[:128]).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=model.weight_decay)
    losses = []
    for _ in range(15):
        loss = model.loss(user, item, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_build_ctr_model_uses_training_rows_only(toy):
    dataset, train = toy
    model = build_ctr_model("kgnn-ls", dataset, train, compression=None, seed=0)
    keys = np.unique(train.user_index * dataset.kg.num_entities + train.item_index)
    assert model.label_keys.long().numpy().tolist() == keys.tolist()
    ripple = build_ctr_model("ripplenet", dataset, train, compression=None, seed=0)
    positives = train.positives()
    for user in range(train.num_users):
        liked = set(positives.item_index[positives.user_index == user].tolist())
        if ripple.user_mask[user]:
            assert set(ripple.memories_h[user, 0].tolist()) <= liked
        if not liked:
            assert not ripple.user_mask[user]


def test_build_ctr_model_settings_follow_overrides(toy):
    dataset, train = toy
    overrides = {"num_neighbors": 3, "aggregator": "concat"}
    model = build_ctr_model("kgcn", dataset, train, compression=None, seed=0, overrides=overrides, dataset_key="lastfm")
    assert model.adj_entity.shape == (dataset.kg.num_entities, 3) and model.aggregator == "concat"
    assert model.embedding_dim == 16
    overrides = {"num_layers": 1, "user_set_size": 5}
    ckan = build_ctr_model("ckan", dataset, train, compression=None, seed=0, overrides=overrides)
    assert ckan.user_heads.shape == (train.num_users, 1, 5)
    assert ckan.weight_decay == DEFAULTS["ckan"]["synthetic"]["l2_weight"]


def test_model_sets_its_quantization_group_for_a_dataset(toy):
    """RippleNet on Book-Crossing (d = 4) quantizes in groups of 64 unless the caller picks a size; every
    other setting keeps the library default of 256."""
    dataset, _ = toy
    from tinykg.train.run import train_ctr

    assert hyperparameters("ripplenet", "book")["group_size"] == 64
    assert all("group_size" not in hyperparameters(name, "lastfm") for name in NAMES)
    fast = {"epochs": 1, "batch_size": 256}
    chosen = train_ctr("ripplenet", dataset, bits=2, key="book", overrides=fast, progress=False, log=lambda _: None)
    assert chosen["compression"]["group_size"] == 64
    given = train_ctr("ripplenet", dataset, bits=2, group_size=128, key="book", overrides=fast, progress=False, log=lambda _: None)
    assert given["compression"]["group_size"] == 128
    other = train_ctr("kgcn", dataset, bits=2, key="lastfm", overrides={"epochs": 1}, progress=False, log=lambda _: None)
    assert other["compression"]["group_size"] == 256
    # What the benchmarks use when they build a model themselves.
    from tinykg.train.builders import default_group_size

    assert default_group_size("ripplenet", "book", 2) == default_group_size("ripplenet", "book", 1) == 64
    assert default_group_size("ripplenet", "lastfm", 2) == default_group_size("kgat", "lastfm", 4) == 256
    # At 1 bit the library default is 64, in training as in the benchmarks.
    assert default_group_size("kgcn", "lastfm", 1) == default_group_size("kgat", "lastfm", 1) == 64
    one = train_ctr("kgcn", dataset, bits=1, key="lastfm", overrides={"epochs": 1}, progress=False, log=lambda _: None)
    assert one["compression"]["group_size"] == 64
