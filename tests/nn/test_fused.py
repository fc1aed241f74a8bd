"""Fused ops (linear + activation, indexed attention) against the unfused ops they replace, and the
packed-copy cache that lets a reshaped view reuse its base's quantized copy."""

import pytest
import torch
import torch.nn.functional as F

from tinykg.compress import CompressionConfig, PackedActivation, observe_saved_tensors
from tinykg.nn import (
    CompressedLinear,
    IndexedAttention,
    compressed_embedding,
    compressed_leaky_relu,
    compressed_linear,
    compressed_relu,
    compressed_sigmoid,
    compressed_softmax,
    compressed_tanh,
    indexed_attention,
)
from tinykg.nn._saved import maybe_quantize

CFG = CompressionConfig(bits=2, group_size=32)
UNFUSED = {
    "relu": lambda y, c: compressed_relu(y, c),
    "leaky_relu": lambda y, c: compressed_leaky_relu(y, 0.2, c),
    "tanh": lambda y, c: compressed_tanh(y, c),
    "sigmoid": lambda y, c: compressed_sigmoid(y, c),
}


def _d(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()


@pytest.mark.parametrize("activation", sorted(UNFUSED))
def test_fused_linear_backward_gradcheck_float64(activation):
    x, w, b = _d(3, 4, 5), _d(6, 5, seed=1), _d(6, seed=2)
    assert torch.autograd.gradcheck(lambda x, w, b: compressed_linear(x, w, b, CFG, activation, 0.2), (x, w, b))


@pytest.mark.parametrize("activation", sorted(UNFUSED))
def test_fused_linear_gives_the_unfused_gradients_bit_for_bit(activation):
    """Quantization runs in the unfused order (input, then output), so the same seed draws the same noise."""
    grads = []
    for fused in (True, False):
        x, w, b = (t.detach().float().requires_grad_() for t in (_d(64, 40), _d(24, 40, seed=1), _d(24, seed=2)))
        torch.manual_seed(0)
        if fused:
            y = compressed_linear(x * 1, w, b, CFG, activation, 0.2)
        else:
            y = UNFUSED[activation](compressed_linear(x * 1, w, b, CFG), CFG)
        y.backward(torch.ones_like(y))
        grads.append((y.detach(), x.grad, w.grad, b.grad))
    for fused_t, unfused_t in zip(*grads):
        assert torch.equal(fused_t, unfused_t)


def test_fused_linear_plain_path_and_module():
    x, w, b = (t.detach().float() for t in (_d(5, 4), _d(3, 4, seed=1), _d(3, seed=2)))
    assert torch.equal(compressed_linear(x, w, b, None, "tanh"), torch.tanh(F.linear(x, w, b)))
    assert torch.equal(compressed_linear(x, w, b, CFG, "leaky_relu", 0.1), F.leaky_relu(F.linear(x, w, b), 0.1))
    layer = CompressedLinear(4, 3, config=CFG, activation="relu")
    assert torch.equal(layer(x), torch.relu(F.linear(x, layer.weight, layer.bias)))
    assert "activation=relu" in repr(layer)
    with pytest.raises(ValueError, match="activation must be one of"):
        compressed_linear(x, w, b, CFG, "gelu")
    with pytest.raises(ValueError, match="activation must be one of"):
        CompressedLinear(4, 3, activation="swish")


def _attention_by_composition(query, keys, index, config):
    """The unfused ops KGCN used before `indexed_attention`: (B, N) scores, a gather from the flattened
    score table, softmax."""
    batch, num_keys = query.shape[0], keys.shape[0]
    scores = compressed_linear(query, keys, None, config) * (1.0 / query.shape[1])
    offsets = torch.arange(batch, dtype=torch.int64).view(batch, 1) * num_keys
    picked = compressed_embedding(offsets + index.reshape(batch, -1), scores.reshape(batch * num_keys, 1), config)
    return compressed_softmax(picked.view(index.shape), -1, config)


def test_indexed_attention_backward_gradcheck_float64():
    query, keys = _d(3, 5), _d(4, 5, seed=1)
    index = torch.randint(0, 4, (3, 2, 3), generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda q, k: indexed_attention(q, k, index, 0.2, CFG), (query, keys))
    assert torch.autograd.gradcheck(lambda q, k: indexed_attention(q, k, index, 0.2, None), (query, keys))


@pytest.mark.parametrize("index_dtype", [torch.uint8, torch.int32, torch.int64])
def test_indexed_attention_matches_the_unfused_ops(index_dtype):
    """Same forward bit for bit; same quantization noise (query, then weights), and on CPU the fused op's
    scatter_add_ and the composed ops' index_add_ both accumulate in element order: identical gradients."""
    query32, keys32 = _d(64, 16, dtype=torch.float32), _d(12, 16, seed=1, dtype=torch.float32)
    index = torch.randint(0, 12, (64, 3, 8), generator=torch.Generator().manual_seed(2)).to(index_dtype)
    results = []
    for fn in (lambda q, k: indexed_attention(q, k, index, 1.0 / 16, CFG), lambda q, k: _attention_by_composition(q, k, index.long(), CFG)):
        query, keys = query32.detach().requires_grad_(), torch.nn.Parameter(keys32.detach().clone())
        torch.manual_seed(0)
        weights = fn(query * 1, keys)
        grad = torch.randn(weights.shape, generator=torch.Generator().manual_seed(3))
        weights.backward(grad)
        results.append((weights.detach(), query.grad, keys.grad))
    (w1, gq1, gk1), (w2, gq2, gk2) = results
    assert torch.equal(w1, w2)
    assert torch.equal(gq1, gq2)
    assert torch.equal(gk1, gk2)


def test_indexed_attention_saves_a_uint8_index_whatever_the_batch():
    """The composed version indexed a (B * N)-row table, so its index widened with the batch (int32 beyond
    32,767 rows); the fused op's index only has to hold the key count."""
    batch, num_keys = 5000, 60
    query = torch.randn(batch, 16, requires_grad=True)
    keys = torch.nn.Parameter(torch.randn(num_keys, 16))
    index = torch.randint(0, num_keys, (batch, 1, 8), dtype=torch.int32)
    saved = []
    with observe_saved_tensors(lambda stored, *rest: saved.append(stored)):
        weights = IndexedAttention(1.0 / 16, CFG)(query * 1, keys, index)
    integer = [t for t in saved if not t.dtype.is_floating_point and t.numel() == index.numel()]
    assert [t.dtype for t in integer] == [torch.uint8]
    assert not any(t.dtype == torch.float32 and t.numel() >= weights.numel() for t in saved)


def test_indexed_attention_rejects_bad_shapes():
    query, keys = torch.randn(4, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match="agree in d"):
        indexed_attention(query, torch.randn(5, 7), torch.zeros(4, 1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"index must be \(B, M, K\)"):
        indexed_attention(query, keys, torch.zeros(4, 2, dtype=torch.long))


def test_reshaped_view_reuses_its_base_packed_copy():
    base = torch.randn(64, 1, 32, requires_grad=True) * 1  # an intermediate (has a grad_fn)
    packed = maybe_quantize(base, CFG)
    view = base.view(64, 32)
    again = maybe_quantize(view, CFG)
    assert isinstance(again, PackedActivation)
    assert again.codes is packed.codes and again.shape == view.shape
    # A view of part of the tensor, or the tensor after an in-place change, gets a fresh copy.
    assert maybe_quantize(base[:10], CFG).codes is not packed.codes
    with torch.no_grad():
        base.mul_(2)
    assert maybe_quantize(view, CFG).codes is not packed.codes


def _run_and_saved(fn):
    """``fn()`` and the tensors saved for backward while it runs."""
    saved = []
    with observe_saved_tensors(lambda stored, *rest: saved.append(stored)):
        out = fn()
    return out, saved


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_fused_linear_output_config_stores_the_output_alone_at_its_bits(activation):
    x = torch.randn(64, 32, requires_grad=True) * 1
    w = torch.nn.Parameter(torch.randn(32, 32) / 6)
    head = CompressionConfig(bits=8, group_size=32)
    one_bit = CompressionConfig(bits=1, group_size=32)
    out, saved = _run_and_saved(lambda: compressed_linear(x, w, None, one_bit, activation, output_config=head))
    codes = sorted(t.numel() for t in saved if t.dtype == torch.uint8 and t.numel())
    assert codes == [64 * 32 // 8, 64 * 32]  # the input at 1 bit, the output at 8 bits
    # A later op saving the output at the head's config gets the very codes the linear saved.
    saved_ptrs = {t.untyped_storage().data_ptr() for t in saved if t.dtype == torch.uint8 and t.numel()}
    assert maybe_quantize(out, head).codes.untyped_storage().data_ptr() in saved_ptrs
    # Same gradients as the unfused pair with the output's config on the activation.
    results = []
    for fused in (True, False):
        xi = x.detach().requires_grad_()
        torch.manual_seed(5)
        if fused:
            y = compressed_linear(xi, w, None, one_bit, activation, output_config=head)
        else:
            y = UNFUSED[activation](compressed_linear(xi, w, None, one_bit), head)
        (grad_x,) = torch.autograd.grad(y, xi, torch.ones_like(y))
        results.append(grad_x)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_fused_linear_below_8_bits_keeps_the_square_unless_asked_to_share_the_output(activation):
    x = torch.randn(64, 32, requires_grad=True) * 1
    w = torch.nn.Parameter(torch.randn(32, 32) / 6)
    two_bit = CompressionConfig(bits=2, group_size=32)
    for share in (False, True):
        out, saved = _run_and_saved(lambda: compressed_linear(x, w, None, two_bit, activation, share_output=share))
        saved_ptrs = {t.untyped_storage().data_ptr() for t in saved if t.dtype == torch.uint8 and t.numel()}
        assert len(saved_ptrs) == 2  # the input and one copy for the activation, both at 2 bits
        # A later op keeping the output finds the linear's copy only when it kept the output itself.
        later = maybe_quantize(out, two_bit).codes.untyped_storage().data_ptr()
        assert (later in saved_ptrs) == share


def test_indexed_attention_query_config_stores_the_query_at_its_bits():
    query = torch.randn(128, 16, requires_grad=True) * 1
    keys = torch.nn.Parameter(torch.randn(60, 16))
    index = torch.randint(0, 60, (128, 1, 8))
    one_bit = CompressionConfig(bits=1, group_size=256)
    head = CompressionConfig(bits=2, group_size=256)
    _, saved = _run_and_saved(lambda: indexed_attention(query, keys, index, 1 / 16, one_bit, head))
    codes = sorted(t.numel() for t in saved if t.dtype == torch.uint8 and t.numel())
    # weights (128 * 8) at 1 bit, query (128 * 16) at 2 bits, the uint8 relation index (128 * 8); no
    # 1-bit copy of the query (128 * 16 // 8 bytes).
    assert codes == [128 * 8 // 8, 128 * 16 * 2 // 8, 128 * 8]
    # The score op saving the query at the head's config gets the very codes the attention saved.
    saved_ptrs = {t.untyped_storage().data_ptr() for t in saved if t.dtype == torch.uint8 and t.numel()}
    assert maybe_quantize(query, head).codes.untyped_storage().data_ptr() in saved_ptrs


@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 1001])
def test_bitmask_cpu_fast_path_matches_pack_codes_layout(numel):
    from tinykg.compress import pack_codes
    from tinykg.nn._saved import BitMask

    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.5
    packed = BitMask.pack(mask.view(1, numel))
    assert torch.equal(packed.bits, pack_codes(mask, 1))  # the layout the GPU path writes
    assert torch.equal(packed.unpack(), mask.view(1, numel))


@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 1001])
def test_bitmask_device_path_matches_numpy_packbits_layout(numel):
    # The calls BitMask makes off the CPU (pack_codes / unpack_codes at 1 bit), run here on CPU tensors,
    # against numpy's little-endian packbits, which the CPU path uses.
    import numpy as np

    from tinykg.compress import pack_codes, unpack_codes

    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel + 1)) > 0.5
    bits = pack_codes(mask, 1)
    assert bits.dtype == torch.uint8 and torch.equal(bits, torch.from_numpy(np.packbits(mask.numpy(), bitorder="little")))
    restored = unpack_codes(bits, 1, numel).view(torch.bool)
    assert restored.dtype == torch.bool and torch.equal(restored, mask)
