"""`batched_lookup`: a lookup in each batch row's own table, keeping the per-batch index only."""

from __future__ import annotations

import pytest
import torch

from tinykg.compress import CompressionConfig
from tinykg.nn import _saved, batched_lookup, compressed_embedding
from tinykg.profile import ActivationTracker

CFG = CompressionConfig(bits=2, group_size=64)


def _inputs(batch=16, n=12, m=5, d=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(batch, n, d, generator=g, dtype=dtype).requires_grad_()
    index = torch.randint(0, n, (batch, m), generator=g)
    return index, table


def test_batched_lookup_picks_each_batch_rows_own_rows():
    index, table = _inputs()
    expected = torch.gather(table, 1, index.unsqueeze(-1).expand(-1, -1, table.shape[-1]))  # (B, M, d)
    for config in (None, CFG):
        assert torch.equal(batched_lookup(index, table, config), expected)
        assert torch.equal(batched_lookup(index.to(torch.uint8), table, config), expected)  # any integer dtype


def test_batched_lookup_gradient_has_the_plain_paths_bits():
    index, table = _inputs()
    g = torch.randn(*index.shape, table.shape[-1], generator=torch.Generator().manual_seed(1))
    grads = []
    for config in (None, CFG):
        table.grad = None
        batched_lookup(index, table, config).backward(g)
        grads.append(table.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_batched_lookup_compressed_backward_gradcheck_float64():
    # config given: the hand-written backward runs (it saves only the index, so float64 changes nothing)
    index, table = _inputs(batch=3, n=4, m=6, d=2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: batched_lookup(index, t, CFG), (table,))


def test_batched_lookup_keeps_the_per_batch_index_not_the_flat_rows():
    """B * N = 40,000 flat rows need int32; the per-batch index into N = 40 rows fits a byte."""
    index, table = _inputs(batch=1000, n=40, m=6, d=2)
    index = index.int()  # as the models pass it
    with ActivationTracker(exclude=[index, table]) as tracker:
        out = batched_lookup(index, table, CFG)
    assert tracker.report().total_bytes == index.numel()  # uint8
    with ActivationTracker(exclude=[index, table]) as tracker:
        plain = batched_lookup(index, table, None)
    assert tracker.report().total_bytes == index.numel() * 4  # F.embedding keeps the int32 flat rows
    del out, plain


def test_batched_lookup_keeps_a_marked_index_as_its_reference():
    index, table = _inputs(batch=64, n=12, m=5)
    buffer = torch.randint(0, 12, (300, 5), dtype=torch.uint8)  # e.g. per-user relation lists
    users = torch.randint(0, 300, (64,))
    looked = _saved.mark_gathered(buffer[users], buffer, users, held=True)
    with ActivationTracker(exclude=[users, table, buffer]) as tracker:
        out = batched_lookup(looked, table, CFG)
    assert tracker.report().total_bytes == 0  # the buffer (a module buffer) and the user index are held anyway
    out.sum().backward()
    assert torch.equal(table.grad, torch.zeros_like(table).scatter_add_(
        1, looked.long().unsqueeze(-1).expand(-1, -1, table.shape[-1]), torch.ones(64, 5, table.shape[-1])))


def test_batched_lookup_rejects_a_table_without_a_batch_dimension():
    index, table = _inputs()
    with pytest.raises(ValueError, match=r"\(B, N, D\) table"):
        batched_lookup(index, table[0], CFG)
    with pytest.raises(ValueError, match=r"\(B, N, D\) table"):
        batched_lookup(index[:3], table, CFG)


@pytest.mark.parametrize("compressed", [False, True])
def test_sparse_grad_lookup_adds_into_the_dense_gradient(compressed):
    """``sparse_grad=True`` on a table that another op also reads (a view of a parameter, as KGIN's hop
    0): the parameter's gradient is dense and the dense lookup's up to rounding; uncompressed, double backward
    (``create_graph=True``, a gradient penalty) works too, with the same result as the dense lookup."""
    config = CompressionConfig(bits=2, group_size=32) if compressed else None
    g = torch.Generator().manual_seed(0)
    weight0 = torch.randn(12, 4, generator=g, dtype=torch.float64)
    index = torch.tensor([[1, 3], [3, 7]])
    results = []
    for sparse in (True, False):
        weight = weight0.clone().requires_grad_()
        view = weight[2:]  # another reader of the table, read after the lookup's gradient arrives
        out = compressed_embedding(index, weight, config, sparse_grad=sparse)
        loss = (out * torch.arange(8.0, dtype=torch.float64).view(2, 2, 2).repeat(1, 1, 2)).sum() + (view**2).sum()
        if compressed:
            loss.backward()
            results.append(weight.grad)
            continue
        (grad,) = torch.autograd.grad(loss, weight, create_graph=True)
        assert grad.layout == torch.strided
        (grad**2).sum().backward()  # double backward through the lookup's gradient
        results.append((grad.detach(), weight.grad))
    # The same terms added in another order (the sparse rows into the view's dense gradient). A row sums at
    # most 3 terms (row 3 is looked up twice, and read by the view): reordering moves it by at most
    # 2 * 3 * 2^-53 times their magnitudes' sum, at most 3 M. M bounds a term: a lookup's coefficient (at
    # most 7), the view's 2 w, and, for the double backward's 2 grad * d(grad)/dw with d(grad)/dw = 2 on the
    # view, 4 max |grad|.
    m = max(7.0, 2 * float(weight0.abs().max()), 4 * float(results[1][0].abs().max()) if not compressed else 0.0)
    atol = 2 * 3 * 2.0**-53 * 3 * m
    if compressed:
        assert results[0].layout == torch.strided
        torch.testing.assert_close(results[0], results[1], rtol=0, atol=atol)
    else:
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=0, atol=atol)
