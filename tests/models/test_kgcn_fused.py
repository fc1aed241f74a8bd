"""KGCN's fused first-iteration sum aggregator against the ops it replaces."""

from __future__ import annotations

import pytest
import torch

from tinykg.compress import CompressionConfig, restoring_quantizer_seed, seed_quantizer
from tinykg.models.kgcn import _SumAggregateFunction
from tinykg.nn import _chunks, compressed_embedding, compressed_linear, gather_aggregate
from tinykg.nn._saved import maybe_quantize

from .factories import LASTFM, batch, make_model

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


def test_fused_sum_aggregate_with_the_score_gradcheck_float64():
    """The op that also takes the score u . v (N = 1: the item vector is the output)."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(E, D, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(D, D, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(B, 1, K, generator=g, dtype=torch.float64, requires_grad=True)
    query = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
    self_index = torch.randint(0, E, (B, 1), generator=g, dtype=torch.int16)
    neighbor_index = torch.randint(0, E, (B, 1, K), generator=g, dtype=torch.int16)

    def fn(t, lg, w, b, q):
        weights = torch.softmax(lg, -1)
        return _SumAggregateFunction.apply(t, self_index, neighbor_index, weights, w, b, CFG, "tanh", CFG, q)

    assert torch.autograd.gradcheck(fn, (table, logits, weight, bias, query))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fused_sum_aggregate_matches_the_unfused_ops(activation):
    """The same output to the bit at 2 bits (the forward reads no quantized copy), and, where saving is
    exact (float64), the same gradients up to the order in which the table's two scatters are summed: the
    fused op's backward rebuilds the linear map's input from exactly what the unfused ops compute."""
    outputs = []
    for fn in (_fused, _unfused):
        inputs = _inputs(torch.float32, seed=1)
        torch.manual_seed(3)
        outputs.append(fn(*inputs, activation).detach())
    assert torch.equal(*outputs)

    results = []
    for fn in (_fused, _unfused):
        inputs = _inputs(torch.float64, seed=1)
        out = fn(*inputs, activation)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
        leaves = [inputs[0], inputs[3], inputs[4], inputs[5]]
        results.append((out.detach(), *[t.grad for t in leaves]))
    fused, unfused = results
    assert torch.equal(fused[0], unfused[0])
    # logits, weight and bias gradients come from the same operations in the same order
    for a, b in zip(fused[2:], unfused[2:]):
        assert torch.equal(a, b)
    # The table's gradient adds the same terms in another order (one buffer instead of two summed
    # tensors). A row gets at most n = B*N*(K+1) = 72 terms; taking each term and partial sum as at most
    # M = max |gradient|, reordering moves an element by at most n * n * M * 2**-53 (each of n roundings
    # of a partial sum of up to n*M); a wrong or missing term would move it by about a term, far more.
    n = B * N * (K + 1)
    bound = n * n * float(unfused[1].abs().max()) * 2.0**-53
    torch.testing.assert_close(fused[1], unfused[1], rtol=0, atol=bound)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fused_sum_aggregate_gradcheck_float64_in_chunks(monkeypatch, activation):
    """Backward in row chunks (the smallest: 8 rows, so B * N = 12 rows make two, the second starting
    inside the ReLU mask's byte stream at bit 8 * D = 48) is still the exact gradient."""
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", 5)
    assert len(_chunks.row_chunks(B * N, K * D, torch.zeros(1, dtype=torch.float64), per_thread=False, multiple=8)) == 2
    table, self_index, neighbor_index, logits, weight, bias = _inputs(torch.float64)
    fn = lambda t, lg, w, b: _fused(t, self_index, neighbor_index, lg, w, b, activation)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (table, logits, weight, bias))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fused_sum_aggregate_in_chunks(monkeypatch, activation):
    """fp32 in row chunks against one piece, same quantizer seed: what each row computes alone (the output,
    the weights' and so the logits' gradient) has the same bits; the gradients of the table, W and b are
    sums over rows, added chunk by chunk, so in another order. Reordering a sum of n terms, each at most M,
    moves it by at most 2 n^2 M u (u = 2^-24: each of the n - 1 roundings of a partial sum of at most n M,
    in both orders). Bounds on the terms, from |tanh'|, |relu'| <= 1, softmax weights <= 1: a row's
    pre-activation gradient is at most G = max |grad_out|, W's terms at most 2 G max |e| (x~ = e[self] +
    mean_k w_k e[k]), the table's at most D G max |W|."""
    table, self_index, neighbor_index, logits, weight, bias = (t.detach() for t in _inputs(torch.float32, seed=4))
    results = []
    for budget in (1 << 30, 5):
        monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", budget)
        copies = [t.detach().clone().requires_grad_() for t in (table, logits, weight, bias)]
        with restoring_quantizer_seed():
            seed_quantizer(0)
            out = _fused(copies[0], self_index, neighbor_index, *copies[1:], activation)
        grad_out = torch.linspace(-1.0, 1.0, out.numel()).view(out.shape)
        out.backward(grad_out)
        results.append([out.detach(), *(t.grad for t in copies)])
    (out, g_table, g_logits, g_weight, g_bias), chunked = results
    assert torch.equal(chunked[0], out) and torch.equal(chunked[2], g_logits)
    u, big = 2.0**-24, float(grad_out.abs().max())
    for got, want, n, term in (
        (chunked[1], g_table, B * N * (K + 1), D * big * float(weight.abs().max())),
        (chunked[3], g_weight, B * N, 2 * big * float(table.abs().max())),
        (chunked[4], g_bias, B * N, big),
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=2 * n * n * term * u)


@pytest.mark.parametrize("bits", [2, 8])
def test_fused_sum_aggregate_gradients_unbiased(bits):
    """With ReLU (an exact 1-bit mask) the only rounding that reaches the gradients is the weights': the
    table's gradient scatters w~ and W's gradient reads x~ = e[self] + mean_k w~_k e[neighbor_k], both
    linear in w~, so the mean of N draws stays within a few standard errors of the exact gradient (the
    ratio concentrates near 1 for an unbiased mean, see tests/nn/test_ops.py); the logits' gradient
    reads no rounded value and equals the exact one. At 8 bits the noise is small enough for a small bias
    to show: scaling the rebuilt neighbour term by 1.02 failed the 8-bit case at 17 standard errors."""
    inputs = _inputs(torch.float32, seed=2)
    grad_out = torch.randn(B, N, D, generator=torch.Generator().manual_seed(5))

    def grads(config):
        table, self_index, neighbor_index, logits, weight, bias = (
            t.detach().clone().requires_grad_(t.requires_grad) for t in inputs
        )
        weights = torch.softmax(logits, -1)
        if config is None:
            out = _unfused_plain(table, self_index, neighbor_index, weights, weight, bias)
        else:
            out = _SumAggregateFunction.apply(table, self_index, neighbor_index, weights, weight, bias, config, "relu", config)
        out.backward(grad_out)
        return table.grad, weight.grad, logits.grad

    exact = grads(None)
    # The logits' gradient reads no rounded value: each <e[neighbor_k], g> (g = (grad_pre @ W) / K) differs from
    # the plain path's only by fp32 rounding: the D-term matrix product and the D-term sum, each reordered
    # (at most D eps of the sum of |terms| each), and the 1/K scaling (2 eps), so by at most (2D + 2) eps S_k
    # with S_k = sum_d |e_kd| (|grad_pre| @ |W|)_d / K; softmax's backward at most doubles that and adds its
    # own rounding (within 8 eps of max |<e_k, g>| <= max S_k): (4D + 12) eps max S_k in all.
    table, self_index, neighbor_index, logits, weight, bias = (t.detach() for t in inputs)
    weights = torch.softmax(logits, -1)
    x = table[self_index.long()] + (table[neighbor_index.long()] * weights.unsqueeze(-1)).mean(-2)
    grad_pre = grad_out * (x @ weight.t() + bias > 0)
    terms = table[neighbor_index.long()].abs() * ((grad_pre.abs() @ weight.abs()) / K).unsqueeze(-2)
    logits_bound = (4 * D + 12) * 2.0**-24 * float(terms.sum(-1).max())
    config = CompressionConfig(bits=bits, group_size=32)  # at 8 bits the noise is ~85x smaller: a small bias shows
    samples = []
    for seed in range(100):
        torch.manual_seed(seed)
        samples.append(grads(config))
    for position in (0, 1):  # table, W
        drawn = torch.stack([sample[position] for sample in samples])
        standard_error = (drawn.var(0).sum() / len(drawn)).sqrt()
        assert standard_error > 0  # the weights' rounding does reach this gradient
        assert (drawn.mean(0) - exact[position]).norm() <= 4 * standard_error
    for sample in samples:
        assert float((sample[2] - exact[2]).abs().max()) <= logits_bound


def _unfused_plain(table, self_index, neighbor_index, weights, weight, bias):
    """The iteration in plain PyTorch (autograd keeps everything exactly)."""
    x = table[self_index.long()] + (table[neighbor_index.long()] * weights.unsqueeze(-1)).mean(-2)
    return torch.relu(x @ weight.t() + bias)


@pytest.mark.parametrize("name", ["kgcn", "kgnn-ls"])
def test_score_fused_into_the_one_iteration_matches_the_separate_dot(name):
    """With H = 1 KGCN's forward takes the score inside the fused iteration: given the same seeds (the dot's
    copies are the ones the attention and the iteration made anyway), the logits and every parameter's
    gradient equal those of the iteration followed by `compressed_dot` to the bit."""
    model = make_model(name, CompressionConfig(bits=2), sizes=LASTFM, embedding_dim=16, num_layers=1, num_neighbors=8)
    user, item, _ = batch(LASTFM["num_users"], LASTFM["num_items"], 64)
    grad_logits = torch.randn(64, generator=torch.Generator().manual_seed(6))
    results = []
    for fuse in (True, False):
        seed_quantizer(0)
        encoded = model.encode(user, item, fuse_score=fuse)
        logits = encoded["logits"] if fuse else model.score(encoded["user"], encoded["item"])
        assert ("logits" in encoded) == fuse and (encoded["item"] is None) == fuse
        model.zero_grad(set_to_none=True)
        logits.backward(grad_logits)
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    (fused_logits, fused_grads), (logits, grads) = results
    assert torch.equal(fused_logits, logits)
    assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(fused_grads, grads))
    seed_quantizer(0)
    logits = model(user, item)  # forward() takes the fused path: its logits come straight out of the op
    assert type(logits.grad_fn).__name__ == "_SumAggregateFunctionBackward"
    assert torch.equal(logits.detach(), fused_logits)


def test_score_fused_needs_the_tanh_iteration():
    inputs = _inputs(torch.float32)
    query = torch.randn(B, D)
    weights = torch.softmax(inputs[3], -1)
    with pytest.raises(ValueError, match="last iteration"):
        _SumAggregateFunction.apply(*inputs[:3], weights, *inputs[4:], CFG, "relu", CFG, query)
