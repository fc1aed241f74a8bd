"""CKAN's knowledge-aware attention as one compressed op (`tinykg.models.ckan._KnowledgeAttentionFunction`)."""

from __future__ import annotations

import pytest
import torch

from tinykg.compress import CompressionConfig, restoring_quantizer_seed, seed_quantizer
from tinykg.models.ckan import knowledge_attention_scores
from tinykg.nn import _chunks, compressed_embedding, compressed_linear
from tinykg.profile import ActivationTracker

CONFIG = CompressionConfig(bits=2, group_size=64)
N, R, B, S, D = 30, 6, 8, 5, 4


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    entity = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    relation = torch.randn(R, D, generator=g, dtype=dtype, requires_grad=True)
    w1 = torch.randn(D, 2 * D, generator=g, dtype=dtype, requires_grad=True)
    w2 = torch.randn(D, D, generator=g, dtype=dtype, requires_grad=True)
    w3 = torch.randn(1, D, generator=g, dtype=dtype, requires_grad=True)
    heads = torch.randint(0, N, (B, S), generator=g, dtype=torch.int32)
    relations = torch.randint(0, R, (B, S), generator=g, dtype=torch.int32)
    return heads, relations, entity, relation, w1, w2, w3


def _unfused(heads, relations, entity, relation, w1, w2, w3, config):
    """The compressed ops the fused op replaced."""
    hidden = torch.cat([compressed_embedding(heads, entity, config), compressed_embedding(relations, relation, config)], -1)
    hidden = compressed_linear(hidden, w1, None, config, "relu")
    hidden = compressed_linear(hidden, w2, None, config, "relu")
    return compressed_linear(hidden, w3, None, config, "sigmoid").squeeze(-1)


@pytest.mark.parametrize("budget", [1 << 30, 5], ids=["one piece", "chunks of a row"])
def test_fused_attention_gradcheck_float64(monkeypatch, budget):
    """float64 is kept exactly, so this checks the hand-written backward, in one piece and in chunks."""
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", budget)
    heads, relations, *params = _inputs(torch.float64)
    fn = lambda *p: knowledge_attention_scores(heads, relations, *p, CONFIG)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(params))
    torch.testing.assert_close(fn(*params), knowledge_attention_scores(heads, relations, *params, None))


def test_fused_attention_keeps_only_its_two_index_tensors():
    """The op recomputes the MLP in backward from the tables: it keeps the (B, S) head index narrowed to
    int16 (500 entities) and the relation index to uint8 (20 relations), nothing else. The unfused
    compressed ops kept both hidden layers at 2 bits, their masks and the input."""
    g = torch.Generator().manual_seed(1)
    entity, relation = torch.nn.Parameter(torch.randn(500, 64, generator=g)), torch.nn.Parameter(torch.randn(20, 64, generator=g))
    w1, w2, w3 = (torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.1) for shape in ((64, 128), (64, 64), (1, 64)))
    heads = torch.randint(0, 500, (256, 32), generator=g, dtype=torch.int32)
    relations = torch.randint(0, 20, (256, 32), generator=g, dtype=torch.int32)
    kept = {}
    for name, fn in (("fused", knowledge_attention_scores), ("unfused", _unfused)):
        with ActivationTracker(exclude=[heads, relations]) as tracker:
            out = fn(heads, relations, entity, relation, w1, w2, w3, CONFIG)
        kept[name] = tracker.report().total_bytes
        del out
    assert kept["fused"] == 256 * 32 * (2 + 1)
    # the unfused ops' 2-bit codes alone: the (B, S, 2d) input and both (B, S, d') hidden layers
    assert kept["unfused"] >= 256 * 32 * (128 + 2 * 64) * 2 // 8


@pytest.mark.parametrize("budget", [1 << 30, 5], ids=["one piece", "chunks of a row"])
def test_fused_attention_gradient_is_deterministic(monkeypatch, budget):
    """Nothing the op's backward reads was rounded: the gradients have the same bits for any quantizer
    seed. (In chunks the weights' gradients are sums of per-chunk sums, another order of the same terms:
    the float64 gradcheck above covers both.)"""
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", budget)
    heads, relations, *params = _inputs(torch.float32, seed=2)
    grad_out = torch.linspace(-1, 1, B * S).view(B, S)

    def grads(seed):
        seed_quantizer(seed)
        copies = [p.detach().clone().requires_grad_() for p in params]
        knowledge_attention_scores(heads, relations, *copies, CONFIG).backward(grad_out)
        return [p.grad for p in copies]

    with restoring_quantizer_seed():
        first = grads(0)
        for seed in (1, 2):
            for a, b in zip(first, grads(seed)):
                assert torch.equal(a, b)
