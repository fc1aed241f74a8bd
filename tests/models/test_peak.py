"""Peak memory of the backward passes that run in row chunks (`tinykg.nn._chunks`), counted exactly with
`tinykg.profile.peak_allocated`: in chunks a backward holds its inputs, the gradients it returns and a few
chunk-sized temporaries, where in one piece it held several whole-size temporaries at once.

Each bound is the op's own outputs plus an allowance of whole-size units for the chunks' temporaries
(each chunk a sixteenth of the rows or less, and fewer than 16 of them live at once: at most one unit);
the one-piece run of the same op must exceed it, so each test also shows what the chunks removed.
"""

from __future__ import annotations

import torch

from tinykg.compress import CompressionConfig
from tinykg.models.kgat import _bi_interaction, _csr, _propagate
from tinykg.models.kgcn import _SumAggregateFunction
from tinykg.nn import _chunks
from tinykg.profile import peak_allocated

CONFIG = CompressionConfig(bits=2, group_size=64)


def _backward_peak(monkeypatch, budget, build):
    """Peak of the op's backward alone: ``build()`` gives (output, the inputs to differentiate), and
    `torch.autograd.grad` stops at those inputs (nothing accumulates into ``.grad``)."""
    monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", budget)
    out, inputs = build()
    grad_out = torch.ones_like(out)
    return peak_allocated(lambda: torch.autograd.grad(out, inputs, grad_out))[1]


def test_bi_interaction_backward_holds_its_two_gradients_and_chunks(monkeypatch):
    """KGAT's bi-interaction, (N, d) = (4096, 16) (x and e_N large enough to stay packed through backward,
    `tinykg.nn._saved._SHARE_BELOW`), chunks of 256 rows. Returned: the (N, d) gradients of x and e_N, 2
    units; the one-piece backward also held both dequantized inputs and the products with W1 and W2."""
    n, d = 4096, 16
    unit = n * d * 4
    g = torch.Generator().manual_seed(0)
    x0, side0 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    weights = [torch.randn(d, d, generator=g, requires_grad=True) if i % 2 == 0 else torch.zeros(d, requires_grad=True)
               for i in range(4)]

    def build():
        x, side = x0.clone().requires_grad_() * 1.0, side0.clone().requires_grad_() * 1.0  # activations
        return _bi_interaction(x, side, *weights, 0.2, CONFIG), [x, side, *weights]

    chunked = _backward_peak(monkeypatch, 256 * d, build)
    whole = _backward_peak(monkeypatch, 1 << 30, build)
    assert chunked <= 3 * unit < whole, (chunked, whole, unit)


def _random_adjacency(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A CSR pair (A, A^T) of (n, n) with 4 n random edges, as `KGAT.adjacency` gives."""
    target = torch.randint(0, n, (4 * n,), generator=g).sort().values
    source = torch.randint(0, n, (4 * n,), generator=g)
    weight = torch.rand(4 * n, generator=g)
    back = torch.argsort(source, stable=True)
    return _csr(target, source, weight, n, n), _csr(source[back], target[back], weight[back], n, n)


def test_propagate_holds_one_output(monkeypatch):
    """KGAT's CSR product, (N, d) = (4096, 16): PyTorch's CSR @ dense fills a zero output and returns a new
    one (2 units); in chunks of 256 rows one output plus two chunk-sized ones and the chunk's row pointers."""
    n, d = 4096, 16
    unit = n * d * 4
    g = torch.Generator().manual_seed(1)
    adjacency = _random_adjacency(n, g)
    x = torch.randn(n, d, generator=g)
    peaks = []
    for budget in (256 * d // torch.get_num_threads() or 1, 1 << 30):
        monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", budget)
        peaks.append(peak_allocated(lambda: _propagate(x, adjacency))[1])
    chunked, whole = peaks
    assert chunked <= unit + unit // 4 < whole, (chunked, whole, unit)


def test_kgcn_fused_aggregate_backward_holds_no_whole_batch_temporary(monkeypatch):
    """KGCN's fused first iteration, B = 512 rows of n = 8 nodes, K = 8 neighbours, d = 16; chunks of 32
    rows. Besides grad_out it holds the loaded attention weights and their gradient ((B, n, K) each, 2
    units here as K = d) and the table's (E, d) gradient; one piece also held the pre-activation gradient,
    the gradient of x, the rebuilt x and the neighbours' sum, (B, n, d) each."""
    b, n, k, d, e = 512, 8, 8, 16, 1000
    unit = b * n * d * 4
    g = torch.Generator().manual_seed(2)
    table = torch.randn(e, d, generator=g, requires_grad=True)
    weight, bias = torch.randn(d, d, generator=g, requires_grad=True), torch.zeros(d, requires_grad=True)
    self_index = torch.randint(0, e, (b, n), generator=g, dtype=torch.int16)
    neighbor_index = torch.randint(0, e, (b, n, k), generator=g, dtype=torch.int16)
    logits = torch.randn(b, n, k, generator=g)

    def build():
        weights = torch.softmax(logits.clone().requires_grad_(), -1)
        out = _SumAggregateFunction.apply(table, self_index, neighbor_index, weights, weight, bias, CONFIG, "relu", CONFIG)
        return out, [table, weights, weight, bias]

    chunked = _backward_peak(monkeypatch, 32 * k * d, build)
    whole = _backward_peak(monkeypatch, 1 << 30, build)
    table_grad = e * d * 4
    assert chunked <= 3 * unit + table_grad < whole, (chunked, whole, unit)


def test_bi_interaction_forming_the_neighbourhood_holds_one_gradient(monkeypatch):
    """KGAT's bi-interaction with its adjacency inside, (N, d) = (4096, 16), about 4 edges a row, chunks of
    256 rows: its backward returns x's gradient only (1 unit), A^T g_eN added into it edge by edge. Composed
    as `_propagate` then the op, the same chunks held x's and e_N's gradients (2 units) and then A^T g_eN
    beside them."""
    n, d = 4096, 16
    unit = n * d * 4
    g = torch.Generator().manual_seed(3)
    adjacency = _random_adjacency(n, g)
    x0 = torch.randn(n, d, generator=g)
    weights = [torch.randn(d, d, generator=g, requires_grad=True) if i % 2 == 0 else torch.zeros(d, requires_grad=True)
               for i in range(4)]

    def build(fused):
        def make():
            x = x0.clone().requires_grad_() * 1.0  # an activation, kept packed
            if fused:
                out = _bi_interaction(x, None, *weights, 0.2, CONFIG, adjacency=adjacency)
                assert out.grad_fn.adjacency is adjacency  # the op formed A x itself
            else:
                out = _bi_interaction(x, _propagate(x, adjacency), *weights, 0.2, CONFIG)
            return out, [x, *weights]
        return make

    fused = _backward_peak(monkeypatch, 256 * d, build(True))
    composed = _backward_peak(monkeypatch, 256 * d, build(False))
    assert fused <= 2 * unit < composed, (fused, composed, unit)
