"""Mask packing (`tinykg.compress.masks`): every implementation writes the reference's bytes, and the fused
mask functions match the PyTorch expressions that specify them.

The Triton kernels are checked against the same reference in test_backends.py (under the interpreter)."""

import math

import pytest
import torch

from tinykg.compress import cpu_kernels, masks, pack_codes
from tinykg.compress.rng import uniform_noise


def _mask(shape, seed=0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 1001), (4, 5, 6)], ids=str)
def test_numpy_masks_match_reference_bytes(shape):
    mask = _mask(shape, seed=sum(shape))
    bits = masks.pack_mask_numpy(mask)
    assert bits.dtype == torch.uint8 and bits.shape == (-(-mask.numel() // 8),)
    assert torch.equal(bits, masks.pack_mask_ref(mask))
    assert torch.equal(bits, pack_codes(mask.reshape(-1), 1))
    for unpack in (masks.unpack_mask_numpy, masks.unpack_mask_ref):
        restored = unpack(bits, mask.shape)
        assert restored.dtype == torch.bool and restored.shape == mask.shape and torch.equal(restored, mask)


def test_non_contiguous_mask_is_read_in_row_major_order():
    mask = _mask((37, 11), seed=3).t()
    assert not mask.is_contiguous()
    bits = masks.pack_mask(mask)
    assert torch.equal(bits, masks.pack_mask_ref(mask.contiguous()))
    assert torch.equal(masks.unpack_mask(bits, mask.shape), mask)


def test_cpu_masks_use_numpy():
    impl = masks._impl(torch.device("cpu"))
    assert (impl.pack, impl.unpack) == (masks.pack_mask_numpy, masks.unpack_mask_numpy)


# -- the fused mask functions: each is specified by a PyTorch expression (its docstring); the numba kernels
# must give the same bits and the same values bit for bit (compared as int32 patterns, so NaN, -0.0 and the
# rounding of every product count).

needs_numba = pytest.mark.skipif(not cpu_kernels.numba_installed(), reason="needs numba")
SHAPES = [(0,), (1,), (7,), (8,), (9,), (3, 1001), (4, 5, 6)]


def _values(shape, seed=0) -> torch.Tensor:
    """Normal values with the cases a comparison or a product can get wrong mixed in."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).reshape(-1)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 0.1, -0.1, 1e-45, 3e38])
    x[: min(len(specials), x.numel())] = specials[: x.numel()]
    return x.reshape(shape)


_SAME_WIDTH_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (NaN included), read as integers of the same width."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    as_int = _SAME_WIDTH_INT[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def _threaded(monkeypatch, threaded: bool) -> None:
    """Split every kernel over three tasks (two on the pool) whatever its size, or run it on one thread."""
    monkeypatch.setattr(cpu_kernels, "num_threads", lambda numel: 3 if threaded else 1)


@needs_numba
@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threaded"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_pack_greater_matches_the_comparison(monkeypatch, shape, threaded):
    _threaded(monkeypatch, threaded)
    x = _values(shape, seed=len(shape))
    # 0.1 is not an fp32 number: the kernel must compare with its fp32 rounding, as PyTorch does
    for threshold in (0.0, 0.1, -0.1):
        for or_equal in (False, True):
            expected = masks.pack_mask_ref(x >= threshold if or_equal else x > threshold)
            assert torch.equal(cpu_kernels.pack_greater_cpu(x, threshold, or_equal), expected)
            assert torch.equal(masks.pack_greater(x, threshold, or_equal=or_equal), expected)


@needs_numba
@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threaded"])
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 3003, 70_001])
def test_cpu_keep_bits_match_the_noise(monkeypatch, numel, threaded):
    _threaded(monkeypatch, threaded)
    for p, seed in ((0.1, 0), (0.5, 12345), (0.9, 2**32 - 1)):
        expected = masks.pack_mask_ref(uniform_noise(numel, seed) >= p)
        assert torch.equal(cpu_kernels.keep_bits_cpu(numel, p, seed), expected)
        assert torch.equal(masks.keep_bits(numel, p, seed), expected)


def test_keep_bits_keep_each_element_with_probability_one_minus_p():
    """A binomial count: 1 - p within 6 standard deviations over 2**20 elements (the noise's 2**-24 grid
    moves the probability by less than 2**-24, far below that)."""
    numel = 1 << 20
    for p in (0.1, 0.5):
        kept = masks.unpack_mask(masks.keep_bits(numel, p, seed=3), torch.Size([numel])).double().mean().item()
        assert abs(kept - (1 - p)) < 6 * math.sqrt(p * (1 - p) / numel)
    a, b = (masks.unpack_mask(masks.keep_bits(numel, 0.5, seed=s), torch.Size([numel])) for s in (3, 4))
    assert abs((a == b).double().mean().item() - 0.5) < 6 * math.sqrt(0.25 / numel)  # seeds draw other masks


@needs_numba
@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threaded"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_scale_by_mask_matches_where(monkeypatch, shape, threaded):
    _threaded(monkeypatch, threaded)
    mask = _mask(shape, seed=len(shape) + 1)
    bits = masks.pack_mask(mask)
    g = _values(shape, seed=7)
    # LeakyReLU's slope, ReLU's zero, dropout's 1 / (1 - p) with its zero
    for on, off in ((1.0, 0.2), (1.0, 0.0), (1 / 0.9, 0.0)):
        expected = torch.where(mask, g if on == 1.0 else g * on, g * off)
        out = torch.empty_like(g)
        assert _bits_equal(cpu_kernels.scale_by_mask_cpu(bits, g, on, off, out), expected)
        assert _bits_equal(masks.scale_by_mask(bits, g, on, off), expected)
        in_place = g.clone()
        assert masks.scale_by_mask(bits, in_place, on, off, out=in_place) is in_place
        assert _bits_equal(in_place, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_scale_by_mask_other_dtypes_and_layouts_use_the_expression(dtype):
    mask = _mask((33, 10), seed=5)
    g = _values((10, 33), seed=6).to(dtype).t()  # non-contiguous
    bits = masks.pack_mask(mask)
    out = masks.scale_by_mask(bits, g, 1 / 0.9, 0.0)
    assert _bits_equal(out, torch.where(mask, g * (1 / 0.9), g * 0.0))
    assert torch.equal(masks.pack_greater(g, 0.1), masks.pack_mask_ref(g > 0.1))


@needs_numba
def test_fp32_cpu_tensors_take_the_kernels(monkeypatch):
    calls = []
    for name in ("pack_greater_cpu", "keep_bits_cpu", "scale_by_mask_cpu"):
        original = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    g = torch.randn(4, 9)
    bits = masks.pack_greater(g)
    masks.keep_bits(g.numel(), 0.3, seed=1)
    masks.scale_by_mask(bits, g, 1.0, 0.2)
    masks.scale_by_mask(bits, g.double(), 1.0, 0.2)  # not fp32: the expression
    assert calls == ["pack_greater_cpu", "keep_bits_cpu", "scale_by_mask_cpu"]


@needs_numba
def test_non_contiguous_fp32_takes_the_kernels_after_one_copy(monkeypatch):
    """A transposed or expanded fp32 gradient is copied once and goes through the kernel: the same bits and
    values as the expression, and the caller's tensor is left as it was."""
    calls = []
    for name in ("pack_greater_cpu", "scale_by_mask_cpu"):
        original = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    mask = _mask((33, 10), seed=5)
    bits = masks.pack_mask(mask)
    for g in (_values((10, 33), seed=6).t(), torch.tensor(0.75).expand(33, 10)):
        before = g.clone()
        out = masks.scale_by_mask(bits, g, 1.0, 0.2)
        assert _bits_equal(out, torch.where(mask, g, g * 0.2))
        assert _bits_equal(g, before)
        assert torch.equal(masks.pack_greater(g, 0.1), masks.pack_mask_ref(g > 0.1))
    assert calls == ["scale_by_mask_cpu", "pack_greater_cpu"] * 2


@needs_numba
def test_cpu_scale_by_mask_refuses_too_few_bits():
    with pytest.raises(ValueError, match="needs 2 contiguous uint8 bytes"):
        cpu_kernels.scale_by_mask_cpu(torch.zeros(1, dtype=torch.uint8), torch.randn(9), 1.0, 0.0, torch.empty(9))
