"""Per-edge temporaries formed in chunks on the CPU (`tinykg.nn._chunks`): bit for bit the one-piece result.

Each op runs twice from the same inputs and quantizer seed (the ``same_bits_in_chunks`` fixture): once with
a budget so small that every chunk is a few rows, once in one piece. Outputs and every gradient must have
the same bits, not just close values: chunking changes where temporaries live, never an element's
arithmetic or the order of its sums.
"""

from __future__ import annotations

import pytest
import torch

from tinykg.compress import CompressionConfig
from tinykg.nn import _chunks, edge_aggregate, gather_aggregate
from tinykg.nn._chunks import row_chunks, rows_of

CONFIG = CompressionConfig(bits=2, group_size=64)


def test_row_chunks_cover_the_rows_in_order(monkeypatch):
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", 10)
    cpu, meta = torch.empty(0), torch.empty(0, device="meta")
    threads = torch.get_num_threads()
    parts = row_chunks(25, 3, cpu)
    step = max(1, 10 * threads // 3)
    assert [(p.start, p.stop) for p in parts] == [(s, min(s + step, 25)) for s in range(0, 25, step)]
    assert [(p.start, p.stop) for p in row_chunks(25, 3, cpu, per_thread=False)] == [(s, min(s + 3, 25))
                                                                                    for s in range(0, 25, 3)]
    assert row_chunks(0, 64, cpu) == [None]
    assert row_chunks(25, 3, cpu.half()) == [None] and row_chunks(25, 3, cpu.bfloat16()) == [None]  # one piece
    assert row_chunks(25, 3, cpu.double()) == parts
    assert row_chunks(10**6, 10**3, meta) == [None]  # other devices: one piece by default
    monkeypatch.setattr(_chunks, "DEVICE_CHUNK_ELEMENTS", 4000)  # TINYKG_DEVICE_CHUNK_ELEMENTS=4000
    assert [(p.start, p.stop) for p in row_chunks(10, 1000, meta)] == [(0, 4), (4, 8), (8, 10)]
    t = torch.arange(6)
    assert rows_of(t, None) is t and rows_of(None, slice(0, 2)) is None
    assert torch.equal(rows_of(t, slice(2, 4)), t[2:4])


def test_device_budget_reads_a_positive_integer():
    assert _chunks._device_budget(None) is None and _chunks._device_budget(" ") is None
    assert _chunks._device_budget("4194304") == 4194304
    for bad in ("0", "-3", "4M"):
        with pytest.raises(ValueError, match="TINYKG_DEVICE_CHUNK_ELEMENTS"):
            _chunks._device_budget(bad)


@pytest.mark.parametrize("weighted", ["no weights", "constant weights", "learned weights"])
def test_edge_aggregate_in_chunks_has_the_same_bits(same_bits_in_chunks, weighted):
    g = torch.Generator().manual_seed(0)
    num_sources, num_targets, num_edges, d = 40, 30, 300, 16
    x = torch.randn(num_sources, d, generator=g, requires_grad=True)
    target = torch.randint(0, num_targets, (num_edges,), generator=g).sort().values
    source = torch.randint(0, num_sources, (num_edges,), generator=g)
    weight = None
    if weighted != "no weights":
        weight = torch.rand(num_edges, generator=g).requires_grad_(weighted == "learned weights")

    def fn(x, *w):
        return edge_aggregate(target, source, w[0] if w else None, x, num_targets, CONFIG)

    same_bits_in_chunks(fn, [x] if weight is None else [x, weight])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("leading", [(24,), (6, 5)], ids=["B", "B,n"])
def test_gather_aggregate_in_chunks_has_the_same_bits(same_bits_in_chunks, weighted, leading):
    g = torch.Generator().manual_seed(1)
    num_rows, k, d = 50, 7, 12
    source = torch.randn(num_rows, d, generator=g, requires_grad=True)
    index = torch.randint(0, num_rows, (*leading, k), generator=g)
    inputs = [source]
    if weighted:
        inputs.append(torch.softmax(torch.randn(*leading, k, generator=g), -1).requires_grad_())

    def fn(source, *w):
        return gather_aggregate(source, index, w[0] if w else None, "mean", CONFIG)

    same_bits_in_chunks(fn, inputs)


def test_evaluation_runs_the_plain_ops_in_chunks_with_the_same_bits(monkeypatch):
    """Without a graph to record (evaluation, ``torch.no_grad``) the plain gather / scatter ops form their
    temporaries in chunks too: the same values as the autograd path of training's fp32 baseline."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 16, generator=g, requires_grad=True)
    target = torch.randint(0, 30, (300,), generator=g).sort().values
    source = torch.randint(0, 40, (300,), generator=g)
    weight = torch.rand(300, generator=g)
    index = torch.randint(0, 40, (6, 5, 7), generator=g)
    attention = torch.softmax(torch.randn(6, 5, 7, generator=g), -1)
    plain = [edge_aggregate(target, source, weight, x, 30), gather_aggregate(x, index, attention, "mean")]
    assert all(t.grad_fn is not None for t in plain)  # the autograd composition
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", 5)
    with torch.no_grad():
        chunked = [edge_aggregate(target, source, weight, x, 30), gather_aggregate(x, index, attention, "mean")]
    for got, want in zip(chunked, plain):
        assert torch.equal(got.view(torch.int32), want.detach().view(torch.int32))


def test_broadcast_weights_in_chunks(same_bits_in_chunks):
    """Weights that broadcast against the index's rows (one (K,) vector for every row) chunk as well."""
    g = torch.Generator().manual_seed(5)
    source = torch.randn(50, 12, generator=g, requires_grad=True)
    index = torch.randint(0, 50, (6, 5, 7), generator=g)
    weights = torch.rand(7, generator=g, requires_grad=True)
    same_bits_in_chunks(lambda s, w: gather_aggregate(s, index, w, "sum", CONFIG), [source, weights])
    with torch.no_grad():
        expected = (source[index] * weights.unsqueeze(-1)).sum(-2)
        torch.testing.assert_close(gather_aggregate(source, index, weights), expected)


def test_half_precision_scatters_stay_in_one_piece(monkeypatch):
    """Into fp16 / bf16 a chunked ``index_add_`` would round the running sum once per chunk: those run in one
    piece whatever the budget, so they equal the unchunked result."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 16, generator=g)
    target = torch.randint(0, 30, (3000,), generator=g).sort().values
    source = torch.randint(0, 40, (3000,), generator=g)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.no_grad():
            one_piece = edge_aggregate(target, source, None, x.to(dtype), 30)
            monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", 5)
            chunked = edge_aggregate(target, source, None, x.to(dtype), 30)
            monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", 1 << 30)
        assert torch.equal(chunked, one_piece)


def test_block_gather_aggregate_is_gather_aggregate_of_the_block_rows_keeping_the_small_index():
    """The same output and gradients, bit for bit, as `gather_aggregate` over ``block_rows`` (same quantizer
    seeds); what it keeps differs by exactly the index: (*,) narrow values instead of (*, block)."""
    from tinykg.compress import restoring_quantizer_seed, seed_quantizer
    from tinykg.nn import block_gather_aggregate
    from tinykg.nn.aggregate import block_rows
    from tinykg.profile import ActivationTracker

    g = torch.Generator().manual_seed(7)
    matrices = torch.nn.Parameter(torch.randn(6 * 8, 8, generator=g))  # 6 stacked 8 x 8 matrices, as rows
    which = torch.randint(0, 6, (32, 10), generator=g, dtype=torch.int32)
    vectors = torch.randn(32, 10, 8, generator=g, requires_grad=True)
    grad = torch.linspace(-1, 1, 32 * 10 * 8).view(32, 10, 8)
    results = {}
    for name, fn in (("block", lambda m, v: block_gather_aggregate(m, which, 8, v, CONFIG)),
                     ("rows", lambda m, v: gather_aggregate(m, block_rows(which, 8), v, "sum", CONFIG))):
        m, v = matrices.detach().clone().requires_grad_(), vectors.detach().clone().requires_grad_()
        with restoring_quantizer_seed():
            seed_quantizer(0)
            with ActivationTracker() as tracker:
                out = fn(m, v)
            kept = tracker.report().total_bytes  # before backward frees it
            out.backward(grad)
        results[name] = (out.detach(), m.grad, v.grad, kept)
    for a, b in zip(results["block"][:3], results["rows"][:3]):
        assert torch.equal(a, b)
    # uint8 block index (6 blocks) against an uint8 row index (48 rows): 32 x 10 x (8 - 1) bytes fewer
    assert results["rows"][3] - results["block"][3] == 32 * 10 * 7
    with pytest.raises(ValueError, match="blocks of 5"):
        block_gather_aggregate(matrices, which, 5, vectors, CONFIG)
    with torch.no_grad():
        plain = block_gather_aggregate(matrices, which, 8, vectors)
    assert torch.equal(plain, results["rows"][0])


def test_row_chunks_start_at_the_multiple(monkeypatch):
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", 10)
    cpu = torch.empty(0)
    # 10 elements per chunk would be 3 rows of 3; starts at multiples of 8 instead (and a last short chunk)
    assert [(p.start, p.stop) for p in row_chunks(25, 3, cpu, per_thread=False, multiple=8)] == [(0, 8), (8, 16), (16, 24), (24, 25)]
    # a budget of several multiples rounds down to a multiple
    assert [(p.start, p.stop) for p in row_chunks(25, 1, cpu, per_thread=False, multiple=4)] == [(0, 8), (8, 16), (16, 24), (24, 25)]


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_normalize_backward_in_chunks_has_the_same_bits(same_bits_in_chunks, monkeypatch, layout):
    """Rows normalised along the last dim go in chunks, their 2-bit output dequantized a chunk at a time
    (kept packed through backward: the size below which packed copies are loaded whole is lowered to 1
    element, as for a large graph); along another dim the op runs in one piece. A row clamped to eps
    takes the other branch of the gradient."""
    from tinykg.nn import _saved, compressed_normalize

    monkeypatch.setattr(_saved, "_SHARE_BELOW", 1)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(37, 12, generator=g)
    x[3] = 1e-14
    dim = -1 if layout == "rows" else 0
    same_bits_in_chunks(lambda x: compressed_normalize(x * 1.0, dim, 1e-12, CONFIG), [x.requires_grad_()])


def test_gather_reductions_in_chunks_keep_the_promoted_dtype(monkeypatch):
    """fp32 rows with fp64 weights: the chunked outputs have the dtype (and the bits) of one piece's."""
    from tinykg.nn.aggregate import gather_reductions

    g = torch.Generator().manual_seed(3)
    source, index = torch.randn(20, 4, generator=g), torch.randint(0, 20, (9, 3), generator=g)
    weights, grad = torch.rand(9, 3, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    one_piece = gather_reductions(source, index, weights, 0.5, grad)
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", 5)
    assert len(row_chunks(9, 12, source)) > 1
    chunked = gather_reductions(source, index, weights, 0.5, grad)
    for a, b in zip(chunked, one_piece):
        assert a.dtype == b.dtype == torch.float64 and torch.equal(a, b)
