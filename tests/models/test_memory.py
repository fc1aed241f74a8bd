"""Activation memory of the models, counted exactly with `ActivationTracker` (bytes autograd holds
for backward between forward and backward of one training-mode ``loss``).

Measured ratios fp32 / 2-bit (group_size 256, fp16 metadata) at the Last.FM shapes of each model's
defaults (1,872 users, 3,846 items, 9,366 entities, 60 relations):
    KGCN       B=128,  d=16, K=8, H=1            56.5x   (project target: >= 8x)
    KGNN-LS    B=128,  d=16, K=8, H=1            41.4x
    RippleNet  B=1024, d=16, H=2, M=32           150.1x
    CKAN       B=2048, d=64, L=3, S_u=8, S_i=64  1266x
Rows of parameter tables that ops save (the user vector, RippleNet's head and tail vectors) are
gathered again in backward and cost no bytes (`tinykg.compress.gathered`); so are indices that are
lookups of module buffers (KGCN's neighbours, RippleNet's memories, CKAN's triple sets). CKAN's
attention MLP is recomputed in backward.
The tests below use the same shapes with smaller batches where the ratio does not depend on B.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from tinykg.compress import CompressionConfig, observe_saved_tensors, storage_key
from tinykg.profile import ActivationTracker

from .factories import LASTFM, NAMES, batch, make_model

# name -> (settings at the Last.FM defaults, batch size used here, ratio asserted at 2 bits)
LASTFM_SHAPES = {
    "kgcn": (dict(embedding_dim=16, num_layers=1, num_neighbors=8), 128, 50.0),
    "kgnn-ls": (dict(embedding_dim=16, num_layers=1, num_neighbors=8), 128, 38.0),
    "ripplenet": (dict(embedding_dim=16, num_hops=2, num_memory=32), 256, 140.0),
    "ckan": (dict(embedding_dim=64, num_layers=3, user_set_size=8, item_set_size=64), 128, 1000.0),
}


def _activation_bytes(name, bits, group_size=256, **kw):
    settings, batch_size, _ = LASTFM_SHAPES[name]
    config = None if bits is None else CompressionConfig(bits=bits, group_size=group_size)
    model = make_model(name, config, sizes=LASTFM, **settings, **kw)
    user, item, label = batch(LASTFM["num_users"], LASTFM["num_items"], batch_size)
    with ActivationTracker(model, exclude=(user, item, label)) as tracker:
        loss = model.loss(user, item, label)
    report = tracker.report()
    del loss
    return report.total_bytes


@pytest.mark.parametrize("name", NAMES)
def test_model_2bit_activation_ratio_at_lastfm_shape(name):
    fp32 = _activation_bytes(name, None)
    two_bit = _activation_bytes(name, 2)
    ratio = fp32 / two_bit
    assert ratio >= LASTFM_SHAPES[name][2], f"{name}: fp32 {fp32} B, 2-bit {two_bit} B, ratio {ratio:.2f}"
    if name == "kgcn":
        assert ratio >= 8.0  # the project target: <= 1/8 of fp32 for KGCN on Last.FM at 2 bits


@pytest.mark.parametrize("name", NAMES)
def test_model_activation_bytes_fall_with_bits(name):
    sizes = [_activation_bytes(name, bits) for bits in (None, 8, 4, 2, 1)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), sizes


@pytest.mark.parametrize("name", NAMES)
def test_model_saves_no_full_precision_activation(name):
    """With compression, autograd keeps: packed codes (uint8), fp16 metadata, narrowed indices, and
    nothing in fp32 but the (B,) logits the BCE terms save (4 bytes per example and BCE term; at most two
    terms, KGNN-LS's label smoothness being the second). No index is kept as int64. The batch itself is held by the
    caller and not counted (as `tinykg.train.loop.measure_step_activation` does)."""
    settings, batch_size, _ = LASTFM_SHAPES[name]
    batch_size = 64
    model = make_model(name, CompressionConfig(bits=2), sizes=LASTFM, **settings)
    user, item, label = batch(LASTFM["num_users"], LASTFM["num_items"], batch_size)
    held = {storage_key(t) for t in [*model.parameters(), *model.buffers(), user, item, label]}
    saved = []
    with observe_saved_tensors(lambda stored, *rest: saved.append(stored)):
        loss = model.loss(user, item, label)
    kept = {storage_key(t): t for t in saved if storage_key(t) not in held}
    assert kept
    fp32_bytes = 0
    for t in kept.values():
        nbytes = t.untyped_storage().nbytes()
        assert t.dtype != torch.int64
        if t.dtype in (torch.float32, torch.float64, torch.bfloat16) and t.numel() > 0:
            assert t.numel() <= batch_size, (t.dtype, tuple(t.shape))
            fp32_bytes += nbytes
    assert fp32_bytes <= 2 * 4 * batch_size, fp32_bytes
    del loss


def test_kgcn_saved_indices_are_int16_on_lastfm():
    model = make_model("kgcn", CompressionConfig(bits=2), sizes=LASTFM, embedding_dim=16, num_layers=1, num_neighbors=8)
    user, item, label = batch(LASTFM["num_users"], LASTFM["num_items"], 128)
    saved = []
    with observe_saved_tensors(lambda stored, *rest: saved.append(stored)):
        loss = model.loss(user, item, label)
    int_dtypes = {t.dtype for t in saved if not t.dtype.is_floating_point and t.dtype != torch.uint8}
    assert int_dtypes == {torch.int16}
    del loss


@pytest.mark.parametrize("name", NAMES)
def test_score_head_costs_exactly_its_operands_extra_codes_at_one_bit(name):
    """At 1 bit the score's packed (B, d) operands are stored at 2 bits (head_bits=2), each once: the step
    holds exactly one extra code bit per packed operand element (group and metadata layout unchanged), so
    no operand is also kept at 1 bit by another op (KGCN: the attention's query, the last tanh).
    KGCN's and KGNN-LS's user operand is a row of the user table, gathered again in backward (no codes),
    so one operand is packed there; RippleNet and CKAN score two computed vectors."""
    settings, batch_size, _ = LASTFM_SHAPES[name]
    d = settings["embedding_dim"]
    if name == "ckan":  # the concat aggregator scores (B, (L + 1) d) vectors
        d *= settings["num_layers"] + 1
    packed_operands = 1 if name in ("kgcn", "kgnn-ls") else 2
    one_bit = _activation_bytes(name, 1, head_bits=None)
    with_head = _activation_bytes(name, 1, head_bits=2)
    assert with_head - one_bit == packed_operands * batch_size * d // 8
    # From 2 bits on the head changes nothing.
    assert _activation_bytes(name, 2, head_bits=2) == _activation_bytes(name, 2, head_bits=None)


def test_bprmf_keeps_only_its_indices_at_any_width():
    """BPR-MF's saved state is three rows of parameter tables per example (the BPR loss's operands), all
    gathered again in backward: at any width it holds the three narrowed index tensors and the loss's
    (B,) fp32 sigmoid of the score gap, nothing quantized (the same bytes at 1 and 8 bits), so its
    compressed training is fp32's up to rounding."""
    from tinykg.models import BPRMF

    users, items, batch_size = LASTFM["num_users"], LASTFM["num_items"], 1024
    g = torch.Generator().manual_seed(0)
    index = [torch.randint(0, n, (batch_size,), generator=g) for n in (users, items, items)]
    held = []
    for bits in (8, 1):
        model = BPRMF(users, items, embedding_dim=64, compression=CompressionConfig(bits=bits))
        with ActivationTracker(model, exclude=index) as tracker:
            loss = model.loss(*index)
        held.append(tracker.report().total_bytes)
        del loss
    # int16 indices (fewer than 32,768 users and items) and the (B,) fp32 sigmoid
    assert held == [3 * batch_size * 2 + batch_size * 4] * 2


def _with_and_without_marks(monkeypatch, module, name: str, batch_size: int, **settings):
    """One 2-bit step of model ``name`` at the Last.FM sizes with its lookups marked as references, then
    with ``module.mark_gathered`` switched off: (bytes held with, without), after asserting that the
    gradients of both are the same to the bit."""
    user, item, label = batch(LASTFM["num_users"], LASTFM["num_items"], batch_size)

    def run():
        model = make_model(name, CompressionConfig(bits=2), sizes=LASTFM, **settings)
        torch.manual_seed(1)  # the quantizer's draws
        with ActivationTracker(model, exclude=(user, item, label)) as tracker:
            loss = model.loss(user, item, label)
        held = tracker.report().total_bytes
        loss.backward()
        return held, [p.grad for p in model.parameters()]

    marked_bytes, marked_grads = run()
    monkeypatch.setattr(module, "mark_gathered", lambda out, *args, **kw: out)
    plain_bytes, plain_grads = run()
    for a, b in zip(marked_grads, plain_grads):
        assert (a is None and b is None) or torch.equal(a, b)
    return marked_bytes, plain_bytes


@pytest.mark.parametrize("aggregator", ["sum", "concat"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_kgcn_keeps_no_neighbour_index_it_can_gather_again(monkeypatch, aggregator, num_layers):
    """KGCN's hop-h entities and relations are lookups of the adjacency buffers by hop h - 1's entities,
    down to the item column: saved as (nested) references and gathered again in backward. Against the same
    step with that switched off, the step keeps exactly every hop's entities and relations, (B, K^h) each
    for h = 1..H, fewer (Last.FM: int16 entities, uint8 relations), and its gradients are the same to the
    bit."""
    from tinykg.models import kgcn as kgcn_module

    batch_size, k = 64, 4
    marked_bytes, plain_bytes = _with_and_without_marks(
        monkeypatch, kgcn_module, "kgcn", batch_size, num_layers=num_layers, num_neighbors=k, aggregator=aggregator)
    entity_bytes, relation_bytes = 2, 1  # Last.FM: 9,366 entities, 60 relations
    expected = sum(batch_size * k**h * (entity_bytes + relation_bytes) for h in range(1, num_layers + 1))
    assert plain_bytes - marked_bytes == expected


def test_ripplenet_keeps_its_memory_indices_as_references(monkeypatch):
    """RippleNet's heads, relations and tails of hop h are rows user * H + h of the memory buffers: the
    ops that save them keep the buffer and that (B,) row index. Against the same step with the marks
    switched off (the ops then keep each index once, in the buffers' dtypes: int16 heads and tails, uint8
    relations on Last.FM), the step keeps exactly H (B, M) heads, tails and relations fewer and H (B,)
    int32 row indices more, and its gradients are the same to the bit."""
    from tinykg.models import base as base_module

    settings, batch_size, _ = LASTFM_SHAPES["ripplenet"]
    marked_bytes, plain_bytes = _with_and_without_marks(monkeypatch, base_module, "ripplenet", batch_size, **settings)
    assert plain_bytes - marked_bytes == settings["num_hops"] * batch_size * (settings["num_memory"] * (2 + 2 + 1) - 4)


@pytest.mark.parametrize("name", NAMES)
def test_a_training_mode_loss_runs_under_inference_mode(name):
    """A validation loss computed without ``.eval()`` under ``torch.inference_mode()``: nothing is saved, so
    nothing is marked or referenced (inference tensors have no version counter)."""
    settings, _, _ = LASTFM_SHAPES[name]
    model = make_model(name, CompressionConfig(bits=2), sizes=LASTFM, **settings)
    user, item, label = batch(LASTFM["num_users"], LASTFM["num_items"], 32)
    with torch.inference_mode():
        loss = model.loss(user, item, label)
    assert torch.isfinite(loss)


def test_ckan_keeps_its_triple_indices_as_references(monkeypatch):
    """CKAN's heads, relations and tails of layer l are rows index * L + l of the triple-set buffers: the
    ops that save them keep the buffer and that (B,) row index. Against the same step with the marks
    switched off (each index then kept once, in the buffers' dtypes: int16 entities, uint8 relations on
    Last.FM), the step keeps exactly L (B, S) heads, relations and tails fewer per side (users S_u, items
    S_i) and L (B,) int32 row indices more, and its gradients are the same to the bit."""
    from tinykg.models import base as base_module

    settings, batch_size, _ = LASTFM_SHAPES["ckan"]
    marked_bytes, plain_bytes = _with_and_without_marks(monkeypatch, base_module, "ckan", batch_size, **settings)
    sizes = (settings["user_set_size"], settings["item_set_size"])
    assert plain_bytes - marked_bytes == sum(settings["num_layers"] * batch_size * (size * (2 + 1 + 2) - 4) for size in sizes)


@pytest.mark.parametrize("name", NAMES)
def test_references_survive_checkpointing_and_copying_hooks(name):
    """Non-reentrant checkpointing recomputes what the ops saved, and ``save_on_cpu`` moves it: backward
    then gets faithful copies at other addresses, which the ops' references accept (autograd checks the
    saved tensors itself). In float64, which the compressed ops keep exactly (so a recomputed forward
    draws no other rounding), the gradients are the plain step's to the bit."""
    import torch.utils.checkpoint as checkpoint

    user, item, label = batch(30, 40, 16)

    def grads(context=None, wrap=False):
        model = make_model(name, CompressionConfig(bits=2)).double()
        with context or contextlib.nullcontext():
            logits = checkpoint.checkpoint(model, user, item, use_reentrant=False) if wrap else model(user, item)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, label.double())
        loss.backward()
        return [p.grad for p in model.parameters() if p.grad is not None]

    plain = grads()
    copying = torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t.clone())
    for other in (grads(wrap=True), grads(copying)):
        assert len(other) == len(plain)
        for a, b in zip(plain, other):
            assert torch.equal(a, b)


def _ckan_buffer_names():
    return [f"{side}_{part}" for side in ("user", "item") for part in ("heads", "relations", "tails")]


def test_ckan_trains_with_non_contiguous_or_empty_triple_sets():
    """Buffers that cannot be seen as (n * L, S) tables without a copy are looked up directly: triple sets
    loaded with ``assign=True`` from transposed storage, and empty item sets (concat aggregator)."""
    user, item, label = batch(30, 40, 16)
    for config in (None, CompressionConfig(bits=2)):
        model = make_model("ckan", config)
        state = model.state_dict()
        for key in _ckan_buffer_names():
            state[key] = state[key].transpose(1, 2).contiguous().transpose(1, 2)
        model.load_state_dict(state, assign=True)
        assert not model.item_heads.is_contiguous()
        model.loss(user, item, label).backward()
        make_model("ckan", config, item_set_size=0).loss(user, item, label).backward()


def test_ckan_trains_with_triple_sets_made_in_inference_mode():
    from tinykg.models import CKAN

    user, item, label = batch(30, 40, 16)
    buffers = dict(make_model("ckan").named_buffers())
    with torch.inference_mode():
        sets = [buffers[key].clone() for key in _ckan_buffer_names()]
    model = CKAN(30, 40, 90, 5, *sets, embedding_dim=8, compression=CompressionConfig(bits=2))
    model.loss(user, item, label).backward()
    assert model.entity_embedding.grad is not None
