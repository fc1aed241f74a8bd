"""KGCN's fused first-iteration sum aggregator against the ops it replaces."""

from __future__ import annotations

import pytest
import torch

from tinykg.compress import CompressionConfig
from tinykg.models.kgcn import _SumAggregateFunction
from tinykg.nn import compressed_embedding, compressed_linear, gather_aggregate
from tinykg.nn._saved import maybe_quantize

CFG = CompressionConfig(bits=2, group_size=32)
E, D, B, N, K = 11, 6, 4, 3, 5


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(E, D, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(D, D, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(D, generator=g, dtype=dtype, requires_grad=True)
    logits = torch.randn(B, N, K, generator=g, dtype=dtype, requires_grad=True)
    self_index = torch.randint(0, E, (B, N), generator=g, dtype=torch.int16)
    neighbor_index = torch.randint(0, E, (B, N, K), generator=g, dtype=torch.int16)
    return table, self_index, neighbor_index, logits, weight, bias


def _attention_weights(logits):
    """An activation quantized once by its producer, as KGCN's attention output is (later saves of it
    reuse that copy, so the two paths below draw the same seeds in the same order)."""
    weights = torch.softmax(logits, -1)
    maybe_quantize(weights, CFG, is_output=True)
    return weights


def _fused(table, self_index, neighbor_index, logits, weight, bias, activation):
    weights = _attention_weights(logits)
    return _SumAggregateFunction.apply(table, self_index, neighbor_index, weights, weight, bias, CFG, activation, CFG)


def _unfused(table, self_index, neighbor_index, logits, weight, bias, activation):
    weights = _attention_weights(logits)
    self_vectors = compressed_embedding(self_index, table, CFG)
    neighbors = gather_aggregate(table, neighbor_index, weights, "mean", CFG)
    return compressed_linear(self_vectors + neighbors, weight, bias, CFG, activation, share_output=True)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fused_sum_aggregate_gradcheck_float64(activation):
    # float64 tensors are saved exactly, so this checks the hand-written backward itself
    table, self_index, neighbor_index, logits, weight, bias = _inputs(torch.float64)
    fn = lambda t, lg, w, b: _fused(t, self_index, neighbor_index, lg, w, b, activation)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (table, logits, weight, bias))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fused_sum_aggregate_matches_the_unfused_ops(activation):
    """Same seeds, same quantized copies: the same output to the bit and the same gradients up to the
    order in which the table's two scatters are summed (fp32 rounding of a few additions per row)."""
    results = []
    for fn in (_fused, _unfused):
        inputs = _inputs(torch.float32, seed=1)
        torch.manual_seed(3)
        out = fn(*inputs, activation)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(4)))
        leaves = [inputs[0], inputs[3], inputs[4], inputs[5]]
        results.append((out.detach(), *[t.grad for t in leaves]))
    fused, unfused = results
    assert torch.equal(fused[0], unfused[0])
    # logits, weight and bias gradients come from the same fp32 operations in the same order
    for a, b in zip(fused[2:], unfused[2:]):
        assert torch.equal(a, b)
    # The table's gradient adds the same fp32 terms in another order (one buffer instead of two summed
    # tensors). A row gets at most n = B*N*(K+1) = 72 terms; taking each term and partial sum as at most
    # M = max |gradient|, reordering moves an element by at most n * n * M * 2**-24 (each of n roundings
    # of a partial sum of up to n*M); a wrong or missing term would move it by about a term, far more.
    n = B * N * (K + 1)
    bound = n * n * float(unfused[1].abs().max()) * 2.0**-24
    torch.testing.assert_close(fused[1], unfused[1], rtol=0, atol=bound)
