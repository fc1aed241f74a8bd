"""Reference quantizer: packing, unbiasedness, variance, determinism, edge cases, memory.

Statistical tolerances (STYLE.md habit 4): for one element with stored step s, a draw's error lies in an
interval of width s, so by Hoeffding the mean of N independent draws is within k*s/(2*sqrt(N)) of x except
with probability 2*exp(-k**2/2). With k = 6 that is 3e-8 per element: a few thousand elements never trip it
by chance, and the seeds are fixed so the tests are deterministic anyway.
"""

import math

import pytest
import torch

from tinykg.compress import (
    CompressionConfig,
    PackedActivation,
    dequantize,
    pack_codes,
    quantize,
    unpack_codes,
)
from tinykg.compress.reference import flat_groups, group_metadata, packing_saves_memory

BITS = (1, 2, 4, 8)
METADATA = ("fp16", "bf16", "fp32")
K_SIGMA = 6.0


def _steps(packed: PackedActivation) -> torch.Tensor:
    """Per-element stored step s (fp32), shaped like the original tensor."""
    g = packed.meta.group_size
    per_group = packed.scale.float().repeat_interleave(g)[: packed.meta.numel]
    return per_group.view(packed.meta.shape)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"bits": 3}, "bits"),
        ({"bits": 16}, "bits"),
        ({"bits": True}, "bits"),
        ({"bits": 2.0}, "bits"),  # equal to 2, but quantize needs an int: refused here, not deep inside it
        ({"group_size": 3}, "group_size"),
        ({"group_size": 256.0}, "group_size"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": "col"}, "group_size"),
        ({"metadata_dtype": "fp8"}, "metadata_dtype"),
        ({"stochastic": "yes"}, "stochastic"),
        ({"backend": "gpu"}, "backend"),
        ({"min_numel": -1}, "min_numel"),
    ],
)
def test_config_bad_values_raise_naming_allowed(kwargs, word):
    with pytest.raises(ValueError, match=word) as err:
        CompressionConfig(**kwargs)
    if word in ("bits", "metadata_dtype", "backend"):
        assert "one of" in str(err.value)


def test_config_takes_numpy_integers_as_ints():
    import numpy as np

    config = CompressionConfig(bits=np.int64(4), group_size=np.int64(64), min_numel=np.int32(5))
    assert config == CompressionConfig(bits=4, group_size=64, min_numel=5)
    assert all(type(v) is int for v in (config.bits, config.group_size, config.min_numel))


def test_config_ideal_ratio_matches_reference_table():
    # REFERENCE.md: b=2 -> 10.7x (G=32), 15.1x (G=256); b=1 up to 28.4x; b=4 up to 7.8x.
    assert CompressionConfig(bits=2, group_size=32).ideal_ratio() == pytest.approx(10.67, abs=0.01)
    assert CompressionConfig(bits=2, group_size=256).ideal_ratio() == pytest.approx(15.06, abs=0.01)
    assert CompressionConfig(bits=1, group_size=256).ideal_ratio() == pytest.approx(28.44, abs=0.01)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("numel", [0, 1, 7, 9, 1000, 4097])
def test_pack_codes_roundtrip_exact(bits, numel):
    codes = torch.randint(0, 2**bits, (numel,), dtype=torch.uint8, generator=torch.Generator().manual_seed(numel))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(numel * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("metadata_dtype", METADATA)
@pytest.mark.parametrize("group_size", [64, "row"])
def test_quantize_unbiased(bits, metadata_dtype, group_size):
    config = CompressionConfig(bits=bits, group_size=group_size, metadata_dtype=metadata_dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 50, generator=gen) * 3 + 1  # 50-wide rows: groups straddle rows for G=64
    num_draws = 400
    total = torch.zeros_like(x, dtype=torch.float64)
    for seed in range(num_draws):
        packed = quantize(x, config, seed=seed)
        total += dequantize(packed).double()
    step = _steps(packed).double()
    error = (total / num_draws - x.double()).abs()
    bound = K_SIGMA * step / (2 * math.sqrt(num_draws)) + 1e-6 * x.abs().double()
    assert (error <= bound).all(), f"max excess {(error - bound).max().item():.3g}"


def test_unbiasedness_test_detects_nearest_rounding():
    """The statistical test above has power: deterministic rounding fails it."""
    config = CompressionConfig(bits=2, group_size=64, stochastic=False)
    x = torch.randn(24, 50, generator=torch.Generator().manual_seed(1))
    packed = quantize(x, config, seed=0)
    error = (dequantize(packed) - x).abs()
    bound = K_SIGMA * _steps(packed) / (2 * math.sqrt(400))
    assert (error > bound).float().mean() > 0.5


@pytest.mark.parametrize("metadata_dtype", METADATA)
def test_quantize_variance_follows_step_size(metadata_dtype):
    """Var = s^2 * E[f(1-f)], f = fractional position in the bin (1/6 for well-spread data); the step
    shrinks by (2^b - 1), so the variance falls ~4x per extra bit."""
    x = torch.rand(64, 64, generator=torch.Generator().manual_seed(2))
    num_draws = 200
    variances = {}
    for bits in BITS:
        config = CompressionConfig(bits=bits, group_size=256, metadata_dtype=metadata_dtype)
        sq = torch.zeros_like(x, dtype=torch.float64)
        for seed in range(num_draws):
            packed = quantize(x, config, seed=seed)
            sq += (dequantize(packed).double() - x.double()) ** 2
        step = _steps(packed).double()
        variances[bits] = (sq / num_draws).mean().item()
        assert variances[bits] <= (step**2 / 4).mean().item() * 1.05  # Var <= s^2/4 per element
        assert variances[bits] == pytest.approx((step**2).mean().item() / 6, rel=0.15)
    for lo, hi in [(1, 2), (2, 4), (4, 8)]:
        per_bit = (variances[lo] / variances[hi]) ** (1 / (hi - lo))
        assert 3.5 < per_bit < 10, (lo, hi, per_bit)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("metadata_dtype", METADATA)
def test_quantize_stored_range_covers_group(bits, metadata_dtype):
    config = CompressionConfig(bits=bits, group_size=32, metadata_dtype=metadata_dtype)
    x = torch.randn(4096, generator=torch.Generator().manual_seed(3)) * torch.logspace(-6, 4, 4096)
    packed = quantize(x, config, seed=0)
    groups = flat_groups(x, 32)
    exact = torch.zeros(groups.shape[0], dtype=torch.bool)
    exact[packed.exact_index.long()] = True
    z, s = packed.zero_point.float(), packed.scale.float()
    levels = 2**bits - 1
    ok = (z <= groups.amin(1)) & (z + levels * s >= groups.amax(1))
    assert (ok | exact).all()
    assert not exact.any()  # every group here is representable in each metadata dtype


def test_metadata_rounded_before_quantizing_is_unbiased_where_naive_is_not():
    """ActNN/EXACT compute the range in fp32 and store it in bf16: values near the max can fall outside
    the stored range and get clamped. Rounding the metadata first (what we do) keeps the range covering."""
    minimum = torch.tensor([0.1234567])
    maximum = torch.tensor([1.2345678])
    scale, zero, exact = group_metadata(minimum, maximum, 2, torch.bfloat16)
    assert not exact.any()
    assert zero.float().item() <= minimum.item()
    assert zero.float().item() + 3 * scale.float().item() >= maximum.item()
    naive_zero = minimum.to(torch.bfloat16).float()
    naive_scale = ((maximum - minimum) / 3).to(torch.bfloat16).float()
    assert (naive_zero + 3 * naive_scale).item() < maximum.item() or naive_zero.item() > minimum.item()


def test_quantize_deterministic_with_seed_and_generator():
    config = CompressionConfig(bits=2)
    x = torch.randn(1000)
    a, b = quantize(x, config, seed=123), quantize(x, config, seed=123)
    assert torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codes, quantize(x, config, seed=124).codes)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(quantize(x, config, generator=g1).codes, quantize(x, config, generator=g2).codes)
    torch.manual_seed(9)
    c = quantize(x, config)
    torch.manual_seed(9)
    assert torch.equal(c.codes, quantize(x, config).codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (1,), (3, 5, 7), (0,), (4, 0, 3), (257,), (2, 130)])
@pytest.mark.parametrize("group_size", [8, 256, "row"])
def test_quantize_any_shape_and_dtype(dtype, shape, group_size):
    x = torch.randn(shape).to(dtype)
    packed = quantize(x, CompressionConfig(bits=4, group_size=group_size), seed=0)
    y = dequantize(packed)
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.numel():
        tolerance = _steps(packed).max().item() + 1e-2 * (dtype != torch.float32)
        assert (y.float() - x.float()).abs().max().item() <= tolerance * 1.001


def test_quantize_non_contiguous_matches_contiguous():
    x = torch.randn(64, 48)
    config = CompressionConfig(bits=2, group_size=32)
    a, b = quantize(x.t(), config, seed=5), quantize(x.t().contiguous(), config, seed=5)
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(dequantize(a), dequantize(b))


@pytest.mark.parametrize("metadata_dtype", METADATA)
@pytest.mark.parametrize("value", [0.0, 0.5, -3.0, 0.1, 1e-30])
def test_quantize_constant_group_roundtrips_exactly(metadata_dtype, value):
    x = torch.full((3, 256), value)
    packed = quantize(x, CompressionConfig(bits=1, metadata_dtype=metadata_dtype), seed=0)
    assert torch.equal(dequantize(packed), x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_non_finite_group_kept_exactly(bad, dtype):
    x = torch.randn(4, 64).to(dtype)
    x[2, 5] = bad
    packed = quantize(x, CompressionConfig(bits=2, group_size=64), seed=0)
    y = dequantize(packed)
    assert packed.exact_index.tolist() == [2]
    assert torch.equal(y[2], x[2]) if bad == bad else (torch.isnan(y[2, 5]) and torch.equal(y[2, :5], x[2, :5]))
    assert torch.isfinite(y[[0, 1, 3]]).all()
    assert packed.nbytes >= x[2].numel() * x.element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("metadata_dtype", METADATA)
@pytest.mark.parametrize("bits", BITS)
def test_quantize_finite_input_at_the_dtype_extremes_stays_finite(bits, metadata_dtype, dtype):
    # Groups reaching +-finfo.max: the scale is rounded up to cover the group, so the top level can pass
    # the largest finite value and dequantize to inf after the cast back (an fp16 activation at 65504).
    # Such a group must be kept exactly; groups just inside the range must still quantize.
    top = torch.finfo(dtype).max
    ramp = torch.linspace(0, 1, 64, dtype=torch.float64)
    x = torch.stack([(2 * ramp - 1) * top, ramp * top, -ramp * top, top * (1 - 1e-2 * ramp)]).to(dtype)
    assert torch.isfinite(x).all()
    config = CompressionConfig(bits=bits, group_size=64, metadata_dtype=metadata_dtype)
    for seed in range(10):
        packed = quantize(x, config, seed=seed)
        y = dequantize(packed)
        assert torch.isfinite(y).all(), (seed, packed.exact_index.tolist())
        exact = set(packed.exact_index.tolist())
        for g in exact:
            assert torch.equal(y[g], x[g])
    if dtype == torch.float16 or metadata_dtype != "fp16":  # fp16 metadata cannot hold larger ranges
        inside = (torch.rand(4, 64, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.5 * top
        assert quantize(inside.to(dtype), config, seed=0).exact_index.numel() == 0


def test_quantize_range_beyond_fp16_kept_exactly_or_in_bf16():
    x = torch.randn(4, 64) * 1e30
    fp16 = quantize(x, CompressionConfig(bits=2, group_size=64, metadata_dtype="fp16"), seed=0)
    assert fp16.exact_index.numel() == 4 and torch.equal(dequantize(fp16), x)
    bf16 = quantize(x, CompressionConfig(bits=2, group_size=64, metadata_dtype="bf16"), seed=0)
    assert bf16.exact_index.numel() == 0
    assert (dequantize(bf16) - x).abs().max() <= _steps(bf16).max() * 1.001


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("metadata_dtype", METADATA)
@pytest.mark.parametrize("group_size", [64, 65536, "row"])
@pytest.mark.parametrize("shape", [(1,), (16,), (1024,), (70000,), (3000, 1), (3000, 4), (30, 100)])
def test_packing_saves_memory_says_whether_the_packed_copy_is_smaller(shape, group_size, metadata_dtype, bits):
    # Checked against the bytes of an actual packed copy's codes and metadata (exact groups, which a
    # constant group at a value the metadata cannot hold adds, are data-dependent and left out).
    config = CompressionConfig(bits=bits, group_size=group_size, metadata_dtype=metadata_dtype)
    x = torch.randn(shape)
    packed = quantize(x, config, seed=0)
    dense = sum(t.numel() * t.element_size() for t in (packed.codes, packed.scale, packed.zero_point))
    assert packing_saves_memory(x, config) == (dense < x.numel() * x.element_size())


def test_packing_saves_memory_in_the_cases_that_motivate_it():
    # 1,024 elements padded to a group of 65,536 at 8 bits (65,540 B against 4,096 B); one-element rows
    # (2 bits of code and 32 of metadata per value); the usual case.
    assert not packing_saves_memory(torch.randn(1024), CompressionConfig(bits=8, group_size=65536))
    assert not packing_saves_memory(torch.randn(3000, 1), CompressionConfig(bits=2, group_size="row"))
    assert packing_saves_memory(torch.randn(128, 64), CompressionConfig(bits=2))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("metadata_dtype", METADATA)
def test_quantize_compression_at_least_97_percent_of_ideal(bits, group_size, metadata_dtype):
    config = CompressionConfig(bits=bits, group_size=group_size, metadata_dtype=metadata_dtype)
    x = torch.randn(1 << 16)
    packed = quantize(x, config, seed=0)
    assert packed.nbytes == sum(t.numel() * t.element_size() for t in packed.tensors())
    measured = x.numel() * 4 / packed.nbytes
    assert measured >= 0.97 * config.ideal_ratio()


def test_quantize_rejects_bad_input():
    with pytest.raises(TypeError, match="float32"):
        quantize(torch.arange(10), CompressionConfig())
    with pytest.raises(TypeError, match="Tensor"):
        quantize([1.0, 2.0], CompressionConfig())


def test_repr_is_one_line_without_the_tensors():
    packed = quantize(torch.randn(64, 300), CompressionConfig(bits=2), seed=1)
    text = repr(packed)
    assert "\n" not in text and len(text) < 200
    assert "shape=(64, 300)" in text and "bits=2" in text and "0 exact groups" in text
    with_nan = quantize(torch.tensor([1.0, float("nan")] * 40), CompressionConfig(bits=2, group_size=32), seed=1)
    assert "3 exact groups" in repr(with_nan)
