"""compress_saved_tensors: what is compressed, what is left alone, and that gradients stay close."""

import torch
from torch import nn

from tinykg.compress import CompressionConfig, compress_saved_tensors, observe_saved_tensors


def test_hooks_compress_activations_not_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 1))
    x = torch.randn(256, 64)
    config = CompressionConfig(bits=8)
    packed_seen = []

    def pack_spy(stored, source):
        packed_seen.append(stored)

    with observe_saved_tensors(pack_spy), compress_saved_tensors(config):
        loss = model(x).pow(2).mean()
    params = {p.data_ptr() for p in model.parameters()}
    # Parameters (and their transposed views) pass through; activations arrive as uint8 codes + metadata.
    floats = [t for t in packed_seen if t.dtype == torch.float32 and t.numel() >= config.min_numel]
    assert all(t.untyped_storage().data_ptr() in params for t in floats)
    assert any(t.dtype == torch.uint8 for t in packed_seen)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).pow(2).mean().backward()
    for g, ref in zip(grads, [p.grad for p in model.parameters()]):
        assert torch.allclose(g, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_hooks_leave_integer_and_small_tensors_alone():
    config = CompressionConfig(bits=2, min_numel=100)
    table = torch.randn(50, 8, requires_grad=True)
    index = torch.randint(0, 50, (200,))
    small = torch.randn(10, requires_grad=True)
    seen = []
    with observe_saved_tensors(lambda stored, source: seen.append(stored)), compress_saved_tensors(config):
        h = small * 1.0  # a 10-element activation: below min_numel
        out = table[index].sum() + (h * h).sum()
    assert any(t.dtype == torch.int64 and t.numel() == 200 for t in seen)  # the index, untouched
    assert not any(t.dtype == torch.uint8 for t in seen)  # nothing was packed
    out.backward()
    assert torch.equal(small.grad, 2 * small.detach())


def test_hooks_dedupe_tensor_saved_twice():
    x = torch.randn(64, 64, requires_grad=True)
    config = CompressionConfig(bits=8, group_size=64)
    packs = []
    with observe_saved_tensors(lambda stored, source: packs.append(stored)), compress_saved_tensors(config):
        h = x * 2  # saved by both sin and cos below: compressed once
        z = (torch.sin(h) * torch.cos(h)).sum()  # the product saves sin(h) and cos(h): two more
    codes = [t for t in packs if t.dtype == torch.uint8 and t.numel() > 0]
    assert len(codes) == 3
    z.backward()
    # dz/dx = 2 (cos^2 h - sin^2 h) from quantized h, sin h, cos h: each factor is off by at most one step
    # (range / 255, range <= 2 max|h| for h and 2 for sin/cos), so the error is below 2 * 4 * step.
    step = 2 * (2 * x.detach().abs().max().item()) / 255
    assert (x.grad - 2 * torch.cos(4 * x.detach())).abs().max() <= 8 * step


def test_hooks_unpack_returns_original_shape():
    x = torch.randn(33, 65, requires_grad=True)
    with compress_saved_tensors(CompressionConfig(bits=8, group_size=32)):
        y = torch.exp(x.t()).sum()
    y.backward()
    # exp saves its (non-contiguous, transposed) output; the gradient is that output, off by < one step.
    expected = torch.exp(x.detach())
    assert x.grad.shape == x.shape
    assert (x.grad - expected).abs().max() <= expected.max() / 255


def test_hooks_reject_non_config():
    import pytest

    with pytest.raises(TypeError, match="CompressionConfig"):
        with compress_saved_tensors({"bits": 2}):
            pass
