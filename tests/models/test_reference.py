"""Each model computes what the authors' code computes: compared in float64 with plain references
that gather every vector the way the original code does (tests/models/factories.py)."""

from __future__ import annotations

import pytest
import torch

from tinykg.compress import CompressionConfig

from .factories import (
    TOY,
    batch,
    ckan_logits_ref,
    kgcn_l2_ref,
    kgcn_logits_ref,
    kgnn_ls_loss_ref,
    make_model,
    ripplenet_loss_ref,
)

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("aggregator", ["sum", "concat", "neighbor"])
def test_kgcn_matches_reference(aggregator, num_layers, compressed):
    config = CompressionConfig(bits=8) if compressed else None
    model = make_model("kgcn", config, aggregator=aggregator, num_layers=num_layers, num_neighbors=3).double()
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 12)
    with torch.no_grad():
        expected = kgcn_logits_ref(model, user, item)
    logits = model(user, item)
    torch.testing.assert_close(logits, expected, **TOL)
    loss = model.loss(user, item, label.double())
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(expected, label.double())
    torch.testing.assert_close(loss, expected_loss + model.l2_weight * kgcn_l2_ref(model).detach(), **TOL)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_kgnn_ls_matches_reference(num_layers):
    model = make_model("kgnn-ls", None, num_layers=num_layers, num_neighbors=3, ls_weight=0.7).double()
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 10, seed=4)
    # Plant labelled neighbours so the reset and held-out branches are exercised.
    first_hop = model.adj_entity[item].long()
    planted = torch.cat([user * model.num_entities + first_hop[:, 0], user * model.num_entities + item])
    planted, first = torch.unique(planted, return_inverse=True)
    planted_labels = torch.zeros(len(planted), dtype=torch.uint8)
    planted_labels[first[:10]] = 1
    keep = ~torch.isin(model.label_keys.long(), planted)
    model.label_keys = torch.cat([model.label_keys.long()[keep], planted])
    model.label_values = torch.cat([model.label_values[keep], planted_labels])
    order = torch.argsort(model.label_keys)
    model.label_keys, model.label_values = model.label_keys[order], model.label_values[order]
    loss = model.loss(user, item, label.double())
    with torch.no_grad():
        expected = kgnn_ls_loss_ref(model, user, item, label.double())
    torch.testing.assert_close(loss, expected, **TOL)


def test_kgnn_ls_label_table_lookup():
    from tinykg.models import KGNNLS

    adj = torch.zeros(6, 2, dtype=torch.long)
    users = torch.tensor([0, 1, 1, 2, 1])
    items = torch.tensor([3, 4, 0, 3, 4])
    labels = torch.tensor([1, 0, 1, 0, 1])  # (1, 4) appears twice: the last row wins
    model = KGNNLS(3, 6, 1, adj, adj, users, items, labels, num_neighbors=2)
    assert model.label_keys.tolist() == sorted(model.label_keys.tolist())
    found = model.lookup_labels(torch.tensor([0, 1, 2]), torch.tensor([[3, 4], [4, 0], [3, 5]]))
    assert found.tolist() == [[1.0, 0.5], [1.0, 1.0], [0.0, 0.5]]


@pytest.mark.parametrize("num_hops", [1, 2])
def test_ripplenet_matches_reference(num_hops):
    model = make_model("ripplenet", None, num_hops=num_hops, kge_weight=0.3, l2_weight=0.01).double()
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 12)
    with torch.no_grad():
        expected_logits, expected_loss = ripplenet_loss_ref(model, user, item, label.double())
    torch.testing.assert_close(model(user, item), expected_logits, **TOL)
    torch.testing.assert_close(model.loss(user, item, label.double()), expected_loss, **TOL)


@pytest.mark.parametrize("aggregator", ["concat", "sum", "pool"])
def test_ckan_matches_reference(aggregator):
    model = make_model("ckan", None, aggregator=aggregator, num_layers=2).double()
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 12)
    with torch.no_grad():
        expected = ckan_logits_ref(model, user, item)
    torch.testing.assert_close(model(user, item), expected, **TOL)
