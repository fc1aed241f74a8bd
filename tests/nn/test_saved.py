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
