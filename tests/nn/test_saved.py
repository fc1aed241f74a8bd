"""`tinykg.nn._saved`: how compressed ops save and load their state."""

import pytest
import torch

from tinykg.compress import CompressionConfig
from tinykg.nn import _saved, compressed_dot, compressed_linear, compressed_softmax
from tinykg.nn._saved import _SHARE_BELOW

CFG = CompressionConfig(bits=2, group_size=32)


def _count_dequantize(monkeypatch) -> list[int]:
    calls = []
    original = _saved.dequantize

    def counting(packed, config=None):
        calls.append(packed.meta.numel)
        return original(packed, config)

    monkeypatch.setattr(_saved, "dequantize", counting)
    return calls


def _two_consumers(rows: int, cols: int, seed: int):
    """A softmax output saved by the softmax (for its own backward) and by the score (for the other
    factor's gradient): one cached packed copy, two consumers. (Tanh below 8 bits keeps its square, not
    its output: `tinykg.nn.activation`.)"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, requires_grad=True)
    w = torch.randn(cols, cols, generator=g, requires_grad=True)
    u = torch.randn(rows, cols, generator=g, requires_grad=True)
    torch.manual_seed(seed)
    v = compressed_softmax(compressed_linear(x * 1, w, None, CFG), -1, CFG)  # x * 1, u * 1: activations
    return compressed_dot(u * 1, v, CFG).sum(), (x, w, u), v


@pytest.mark.parametrize("rows", [8, _SHARE_BELOW // 16])
def test_shared_small_packed_is_dequantized_once(monkeypatch, rows):
    calls = _count_dequantize(monkeypatch)
    loss, leaves, v = _two_consumers(rows, 16, seed=0)
    packed = v._tinykg_packed[2]
    small = rows * 16 < _SHARE_BELOW
    assert getattr(packed.codes, "_tinykg_uses", 0) == (2 if small else 0)
    loss.backward()
    # x * 1 and u * 1 are loaded once each (one consumer); v by both of its consumers unless shared
    assert len(calls) == (3 if small else 4)
    # after the last consumer the shared copy is gone with its use count
    assert getattr(packed.codes, "_tinykg_dequantized", None) is None


def test_shared_load_gives_the_same_gradients_as_separate_loads(monkeypatch):
    loss, leaves, _ = _two_consumers(8, 16, seed=1)
    loss.backward()
    shared = [t.grad.clone() for t in leaves]
    monkeypatch.setattr(_saved, "_SHARE_BELOW", 0)  # every consumer dequantizes its own copy
    loss, leaves, _ = _two_consumers(8, 16, seed=1)
    loss.backward()
    for a, b in zip(shared, (t.grad for t in leaves)):
        assert torch.equal(a, b)


def test_packed_without_exact_groups_saves_three_tensors():
    x = torch.randn(4, 32, requires_grad=True)
    w = torch.randn(8, 32, requires_grad=True)
    y = compressed_linear(x * 1, w, None, CFG)
    # x * 1 quantized: codes, scale, zero point; plus the weight by reference
    assert len(y.grad_fn.saved_tensors) == 4
    bad = x.detach().clone()
    bad[0, 0] = float("nan")  # a non-finite group is kept exactly: all five parts are saved
    y = compressed_linear(bad.requires_grad_() * 1, w, None, CFG)
    assert len(y.grad_fn.saved_tensors) == 6
    y.sum().backward()


# --- rows of a parameter table are gathered again in backward, not packed ------------------------------

from tinykg.nn import compressed_embedding  # noqa: E402
from tinykg.profile import ActivationTracker  # noqa: E402

EPS32 = torch.finfo(torch.float32).eps


def _table_and_index(rows: int = 300, d: int = 32, batch: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    table = torch.nn.Parameter(torch.randn(rows, d, generator=g))
    index = torch.randint(0, rows, (batch,), generator=g)
    weight = torch.nn.Parameter(torch.randn(8, d, generator=g))
    return table, index, weight


def _weight_grad_error(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|grad_W - exact| and the fp32 rounding bound of grad_W = g^T x (g = ones): B eps sum_b |x_b|,
    an error of at most one rounding per product and per addition of the B terms."""
    weight.grad = None
    compressed_linear(x, weight, None, CFG).sum().backward()
    exact = x.detach().double().sum(0).expand(weight.shape[0], -1)
    bound = x.shape[0] * EPS32 * x.detach().double().abs().sum(0).expand_as(exact)
    return (weight.grad.double() - exact).abs(), bound


def test_gathered_rows_give_the_exact_weight_gradient():
    table, index, weight = _table_and_index()
    err, bound = _weight_grad_error(compressed_embedding(index, table, CFG), weight)
    assert (err <= bound).all()
    # The same rows as a computed activation are packed at 2 bits: far outside the rounding bound.
    err, bound = _weight_grad_error(compressed_embedding(index, table, CFG) * 1, weight)
    assert (err > bound).any()


def test_gathered_rows_cost_no_bytes_beyond_the_index_the_gather_keeps():
    table, index, weight = _table_and_index()
    with ActivationTracker(exclude=[index]) as tracker:
        x = compressed_embedding(index, table, CFG)  # keeps its index narrowed to int16
        y = compressed_linear(x.view(8, 8, 32), weight, None, CFG)  # a view of the rows: gathered too
    assert tracker.report().total_bytes == index.numel() * 2
    saved = [t for t in y.grad_fn.saved_tensors if t.dtype == torch.int16]
    assert len(saved) == 1 and saved[0].untyped_storage().data_ptr() == x.grad_fn.saved_tensors[0].data_ptr()
    y.sum().backward()  # the view's rows come back in the view's shape: the weight gradient is exact
    rows = x.detach().double()
    bound = index.numel() * EPS32 * rows.abs().sum(0)
    assert ((weight.grad.double() - rows.sum(0)).abs() <= bound).all()


def test_rows_changed_in_place_are_packed_instead():
    table, index, weight = _table_and_index()
    x = compressed_embedding(index, table, CFG)
    assert isinstance(_saved.maybe_quantize(x, CFG), _saved.Gathered)
    x.mul_(2)  # no longer table[index]
    assert isinstance(_saved.maybe_quantize(x, CFG), _saved.PackedActivation)
    x = compressed_embedding(index, table, CFG)
    with torch.no_grad():
        table.add_(1)  # the table itself changed since the gather
    assert isinstance(_saved.maybe_quantize(x, CFG), _saved.PackedActivation)


def test_rows_whose_index_changed_in_place_are_packed_instead():
    table, index, _ = _table_and_index()
    index = index.to(torch.int16)  # already narrow: the lookup keeps this very tensor
    x = compressed_embedding(index, table, CFG)
    index.add_(1)  # x is no longer table[index]
    assert isinstance(_saved.maybe_quantize(x, CFG), _saved.PackedActivation)


def test_an_index_made_in_inference_mode_is_looked_up_and_differentiated():
    """Inference tensors have no version counter: the lookup narrows the index into a normal tensor and
    marks the rows with that copy (an index already narrow could not be saved for backward at all)."""
    table, index, weight = _table_and_index()
    with torch.inference_mode():
        frozen_index = index.clone()
    x = compressed_embedding(frozen_index, table, CFG)
    assert isinstance(_saved.maybe_quantize(x, CFG), _saved.Gathered)
    compressed_linear(x, weight, None, CFG).sum().backward()
    assert torch.equal(table.grad.sum(1).nonzero().view(-1), index.unique())


def test_rows_of_an_activation_table_are_packed():
    """Gathering again from an activation would keep that activation alive: only parameters qualify."""
    table, index, _ = _table_and_index()
    x = compressed_embedding(index, table * 1, CFG)
    assert isinstance(_saved.maybe_quantize(x, CFG), _saved.PackedActivation)


def test_a_table_updated_between_forward_and_backward_is_an_error():
    table, index, weight = _table_and_index()
    loss = compressed_linear(compressed_embedding(index, table, CFG), weight, None, CFG).sum()
    with torch.no_grad():
        table.add_(1)  # an optimizer step before backward: the saved rows would be stale
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_an_index_looked_up_in_a_held_table_is_kept_as_a_reference():
    adjacency = torch.randint(0, 300, (300, 4), dtype=torch.int16)  # a buffer: (E, K) neighbour indices
    parent = torch.randint(0, 300, (16,), dtype=torch.int16)
    neighbours = adjacency[parent.int()]
    assert isinstance(_saved.keep_index(neighbours, 300), torch.Tensor)  # unmarked: narrowed as it is
    _saved.mark_gathered(neighbours, adjacency, parent, held=True)
    kept = _saved.keep_index(neighbours.view(-1), 300)
    assert isinstance(kept, _saved.Gathered) and kept.index is parent
    assert torch.equal(kept.gather(), neighbours.view(-1))
