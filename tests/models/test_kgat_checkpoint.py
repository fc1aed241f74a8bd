"""KGAT's per-layer activation checkpointing: same loss and gradients as the plain model, less held."""

from unittest import mock

import numpy as np
import torch

from tinykg.data import SyntheticConfig, make_synthetic, topk_split
from tinykg.data.ckg import build_ckg
from tinykg.models import KGAT
from tinykg.profile import ActivationTracker

CPU_RNG_STATE_BYTES = torch.get_rng_state().numel()


def _model_and_batch():
    dataset = make_synthetic(SyntheticConfig.toy(), seed=0)
    train, _, _ = topk_split(dataset.interactions.positives(), seed=0)
    torch.manual_seed(0)
    model = KGAT.from_ckg(build_ckg(train, dataset.kg), train.num_items, embedding_dim=8, layer_sizes=(8, 4), kge_dim=8, mess_dropout=0.3)
    rng = np.random.default_rng(1)
    rows = rng.choice(train.num_interactions, 32, replace=False)
    batch = tuple(torch.as_tensor(a, dtype=torch.long) for a in (train.user_index[rows], train.item_index[rows], rng.integers(0, train.num_items, 32)))
    return model, batch


def test_kgat_checkpoint_layers_same_loss_and_gradients_with_dropout():
    model, batch = _model_and_batch()
    results = []
    for flag in (False, True):
        model.checkpoint_layers = flag
        model.zero_grad()
        torch.manual_seed(7)  # the same dropout masks; the recomputation must replay them
        loss = model.loss(*batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    assert torch.equal(loss_plain, loss_ckpt)
    assert len(grads_plain) == len(grads_ckpt)
    for plain, ckpt in zip(grads_plain, grads_ckpt):
        assert torch.equal(plain, ckpt)  # the same ops recomputed on the same values


def test_kgat_checkpoint_layers_hold_layer_inputs_instead_of_layer_activations():
    model, batch = _model_and_batch()
    model.train()
    held = {}
    for flag in (False, True):
        model.checkpoint_layers = flag
        with ActivationTracker(model, exclude=batch) as tracker:
            loss = model.loss(*batch)
        held[flag] = tracker.report().total_bytes
        del loss
    # Checkpointed, each layer keeps its input: layer 0 reads the embedding table (a parameter, free),
    # layer 1 the (N, 8) output of layer 0; one RNG state per layer. The adjacency is the model's cached
    # graph structure, not an input.
    inputs = model.num_nodes * 8 * 4 + 2 * CPU_RNG_STATE_BYTES
    # What the BPR head keeps outside the layers: the same loss on fixed node representations.
    model.checkpoint_layers = False
    layers, x = [], model.node_embedding
    for layer in range(2):
        x, _ = model.propagate_layer(layer, x, normalize=False)
        layers.append(x.detach().requires_grad_() * 1.0)  # non-leaf, as the loss reads them
    fixed = lambda layer, x, normalize: (layers[layer], None)  # noqa: E731
    with mock.patch.object(model, "propagate_layer", side_effect=fixed), ActivationTracker(model, exclude=batch) as head:
        loss = model.loss(*batch)
    head_bytes = head.report().total_bytes
    assert head_bytes > 0
    assert held[True] == inputs + head_bytes, (held, inputs, head_bytes)
    assert held[True] < held[False]
    del loss


def test_kgat_deepcopies_and_pickles_after_a_forward_without_its_adjacency_cache():
    import copy
    import pickle

    model, batch = _model_and_batch()
    model.eval()
    loss = model.loss(*batch)  # builds the CSR adjacency cache, which deepcopy cannot copy
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert "_adjacency_cache" not in clone.__dict__
        assert torch.equal(clone.loss(*batch), loss)  # rebuilt on first use: the same numbers
    assert "_adjacency_cache" in model.__dict__  # the original keeps its cache
