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


def test_fused_attention_keeps_all_but_the_first_layer_input_of_the_unfused_ops():
    """The unfused ops kept [e_h || e_r] quantized (2d values per triple) besides what the fused op keeps
    (both hidden layers quantized, their two masks, the sigmoid's square, the indices); the fused op
    gathers that input again. So the difference is exactly its packed size: 2 bits per value plus fp16
    scale and zero point per group of 64, 2.5 bits, for 256 x 32 triples of 2 x 64 values."""
    g = torch.Generator().manual_seed(1)
    entity, relation = torch.nn.Parameter(torch.randn(500, 64, generator=g)), torch.nn.Parameter(torch.randn(20, 64, generator=g))
    w1, w2, w3 = (torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.1) for shape in ((64, 128), (64, 64), (1, 64)))
    heads = torch.randint(0, 500, (256, 32), generator=g, dtype=torch.int32)
    relations = torch.randint(0, 20, (256, 32), generator=g, dtype=torch.int32)
    kept = {}
    for name, fn in (("fused", knowledge_attention_scores), ("unfused", _unfused)):
        with ActivationTracker() as tracker:
            out = fn(heads, relations, entity, relation, w1, w2, w3, CONFIG)
        kept[name] = tracker.report().total_bytes
        del out
    assert kept["unfused"] - kept["fused"] == 256 * 32 * 128 * 5 // 16  # 2.5 bits per value
    assert kept["fused"] / kept["unfused"] < 0.6


@pytest.mark.parametrize("budget", [1 << 30, 5], ids=["one piece", "chunks of a row"])
def test_fused_attention_gradient_is_unbiased(monkeypatch, budget):
    """Over 64 quantizer seeds the mean gradient converges to fp32's: the R statistic of
    `tests/models/test_unbiased.py` (about 1 without bias), here for the op alone, with each chunk's
    hidden layers quantized on their own."""
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", budget)
    heads, relations, *params = _inputs(torch.float32, seed=2)
    grad_out = torch.linspace(-1, 1, B * S).view(B, S)

    def grads(config):
        copies = [p.detach().clone().requires_grad_() for p in params]
        knowledge_attention_scores(heads, relations, *copies, config).backward(grad_out)
        return torch.cat([p.grad.reshape(-1) for p in copies]).double()

    exact = grads(None)
    with restoring_quantizer_seed():
        seed_quantizer(0)
        draws = torch.stack([grads(CONFIG) for _ in range(64)])
    error = (draws.mean(0) - exact).pow(2).sum()
    noise = draws.var(0).sum() / len(draws)
    assert error / noise < 2.0, (error / noise).item()


def test_w1_gradient_is_far_less_noisy_than_with_a_quantized_input():
    """w1's gradient g1^T x: the unfused ops multiplied by a 2-bit copy of x = [e_h || e_r], the fused op by
    x itself, so what is left of its variance comes from g1 alone (the hidden layers' codes and masks):
    at these sizes 60x less (0.0117 against 0.697 summed over w1 in a 200-seed run); the bound asks 10x."""
    heads, relations, *params = _inputs(torch.float32, seed=2)
    grad_out = torch.linspace(-1, 1, B * S).view(B, S)

    def w1_grad_variance(fn) -> float:
        draws = []
        for _ in range(64):
            copies = [p.detach().clone().requires_grad_() for p in params]
            fn(heads, relations, *copies, CONFIG).backward(grad_out)
            draws.append(copies[2].grad.double())
        return torch.stack(draws).var(0).sum().item()

    with restoring_quantizer_seed():
        seed_quantizer(0)
        fused, unfused = w1_grad_variance(knowledge_attention_scores), w1_grad_variance(_unfused)
    assert fused * 10 < unfused, (fused, unfused)
