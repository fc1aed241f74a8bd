"""Pure-PyTorch quantizer: the specification every fast backend must reproduce code for code.

Per group of G elements with min m and max M, b bits, B = 2**b - 1:

1. zero_point z = m rounded *down* to the metadata dtype (so z <= m);
2. scale s = (M - z) / B rounded to the metadata dtype, then raised one metadata ulp at a time until the
   stored range covers the group: z + B*s >= M in fp32 (ActNN/EXACT round after choosing the range, so
   their stored range can miss the data and the clamp biases the rounding);
3. t = (x - z) * (1/s) in fp32; q = floor(t + u), u ~ U[0, 1) from `tinykg.compress.rng`; q clamped to
   [0, B] (the clamp only absorbs fp32 rounding of t at the ends, never a whole bin).
   Given the *stored* z and s, E[q] = t, so E[q*s + z] = x: unbiased; Var <= s**2 / 4 per element.

A constant group (M == m) whose value the metadata dtype holds exactly gets s = 0 and round-trips
exactly. A group that is not finite, whose z or s overflows the metadata dtype, that is constant at a
value the metadata cannot hold, or whose stored range [z, z + B*s] reaches past the largest finite value of
the input dtype (an fp16 group near +-65504: its levels would dequantize to +-inf), is kept exactly in
``exact_values``.
"""

from __future__ import annotations

import functools

import torch

from .config import ROW, CompressionConfig
from .packed import PackedActivation, PackedMeta, narrowest_int_dtype, pack_codes, unpack_codes
from .rng import uniform_noise

# Raising the scale by one ulp fixes a range that falls short by fp32 rounding; a few tries is plenty.
_MAX_COVER_STEPS = 4


def resolve_group_size(shape: torch.Size, config: CompressionConfig) -> int:
    """Elements per group for a tensor of ``shape``: the configured power of two, or the row length."""
    if config.group_size == ROW:
        return max(shape[-1], 1) if len(shape) > 0 else 1
    return int(config.group_size)


def packing_saves_memory(x: torch.Tensor, config: CompressionConfig) -> bool:
    """Whether the packed copy of ``x`` (codes and metadata, no exact group) is smaller than ``x`` itself.

    Not for tiny tensors (a group costs ``group_size * bits / 8`` bytes plus its metadata however few of
    its elements are real: at 2 bits in groups of 256, an fp32 tensor below 17 elements) nor for short row
    groups (one-element rows cost more metadata than values): those are kept as they are (`compact`).
    """
    return _packing_saves_memory(x.shape, x.dtype, config)


# Every saved activation asks, a model has a few dozen (shape, dtype, config) settings, and the cached answer
# costs half the arithmetic.
@functools.lru_cache(maxsize=4096)
def _packing_saves_memory(shape: torch.Size, dtype: torch.dtype, config: CompressionConfig) -> bool:
    numel = shape.numel()
    group_size = resolve_group_size(shape, config)
    num_groups = -(-numel // group_size)
    packed = -(-num_groups * group_size * config.bits // 8) + num_groups * (config.metadata_bits // 8)
    return packed < numel * dtype.itemsize


def compact(x: torch.Tensor) -> torch.Tensor:
    """``x`` to keep as it is: itself, or a copy of its elements when it is a view into a larger storage
    (keeping the view would keep all of that storage alive: an 8-element slice of a 16 MB tensor)."""
    if x.untyped_storage().nbytes() > x.numel() * x.element_size():
        return x.detach().clone()
    return x


def flat_groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x as fp32 (num_groups, group_size), the last group padded with copies of the final element."""
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % group_size
    if pad:
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, group_size)


def group_metadata(
    minimum: torch.Tensor, maximum: torch.Tensor, bits: int, metadata_dtype: torch.dtype,
    value_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stored (scale, zero_point) per group and the mask of groups that must be kept exactly.

    Args:
        minimum, maximum: (num_groups,) fp32 group extremes.
        value_dtype: the dtype dequantized values are cast back to; every stored level must be finite in it.
    Returns:
        scale, zero_point: (num_groups,) in ``metadata_dtype``; exact: (num_groups,) bool.
    """
    levels = float(2**bits - 1)
    minus_inf = torch.tensor(float("-inf"), dtype=metadata_dtype, device=minimum.device)
    plus_inf = torch.tensor(float("inf"), dtype=metadata_dtype, device=minimum.device)

    zero_point = minimum.to(metadata_dtype)
    zero_point = torch.where(zero_point.float() > minimum, torch.nextafter(zero_point, minus_inf), zero_point)
    zero_f = zero_point.float()

    constant = maximum == minimum
    # Dividing by a tensor, not a Python number: CUDA turns division by a scalar into multiplication by
    # its reciprocal, which rounds differently and would make GPU and CPU codes differ.
    scale = ((maximum - zero_f) / torch.full_like(maximum, levels)).to(metadata_dtype)
    scale = torch.where(constant & (zero_f == minimum), torch.zeros_like(scale), scale)
    for _ in range(_MAX_COVER_STEPS):
        short = scale.float() * levels + zero_f < maximum
        scale = torch.where(short, torch.nextafter(scale, plus_inf), scale)
    top = scale.float() * levels + zero_f
    covered = top >= maximum
    # The levels lie in [zero_f, top] (q * s + z rounds monotonically in q), so these two bounds keep every
    # dequantized value finite after the cast back; a NaN or an fp32 overflow of top fails them too.
    value_max = torch.finfo(value_dtype).max
    in_range = (top <= value_max) & (zero_f >= -value_max)

    exact = ~(torch.isfinite(minimum) & torch.isfinite(maximum))
    exact |= ~(torch.isfinite(zero_f) & torch.isfinite(scale.float()) & covered & in_range)
    exact |= constant & (zero_f != minimum)
    # Exact groups get harmless metadata so the dense arithmetic below stays finite.
    scale = torch.where(exact, torch.zeros_like(scale), scale)
    zero_point = torch.where(exact, torch.zeros_like(zero_point), zero_point)
    return scale, zero_point, exact


def quantize_ref(
    x: torch.Tensor, config: CompressionConfig, seed: int, *, noise: torch.Tensor | None = None
) -> PackedActivation:
    """Reference quantizer. ``noise`` (fp32, one value in [0, 1) per padded element) overrides the
    counter-based noise of ``seed``; tests use it to feed two implementations the same draws."""
    group_size = resolve_group_size(x.shape, config)
    meta = PackedMeta(shape=x.shape, dtype=x.dtype, bits=config.bits, group_size=group_size)
    md = config.torch_metadata_dtype
    if x.numel() == 0:
        empty = x.new_empty(0, dtype=torch.uint8)
        return PackedActivation(
            codes=empty,
            scale=x.new_empty(0, dtype=md),
            zero_point=x.new_empty(0, dtype=md),
            exact_index=x.new_empty(0, dtype=torch.uint8),
            exact_values=x.new_empty((0, group_size)),
            meta=meta,
        )

    groups = flat_groups(x, group_size)  # (num_groups, G)
    scale, zero_point, exact = group_metadata(groups.amin(1), groups.amax(1), config.bits, md, x.dtype)

    scale_f = scale.float().unsqueeze(1)
    inv_scale = torch.where(scale_f > 0, torch.ones_like(scale_f) / scale_f, torch.zeros_like(scale_f))
    t = (groups - zero_point.float().unsqueeze(1)) * inv_scale
    t = torch.where(exact.unsqueeze(1), torch.zeros_like(t), t)
    if config.stochastic:
        if noise is None:
            noise = uniform_noise(groups.numel(), seed, device=x.device)
        t = t + noise.view_as(groups)
    else:
        t = t + 0.5
    codes = t.floor_().clamp_(0, 2**config.bits - 1).to(torch.uint8)

    exact_index = exact.nonzero().squeeze(1)
    num_groups = groups.shape[0]
    exact_index = exact_index.to(narrowest_int_dtype(max(num_groups - 1, 0)))
    exact_values = groups[exact_index.long()].to(x.dtype)
    return PackedActivation(pack_codes(codes, config.bits), scale, zero_point, exact_index, exact_values, meta)


def dequantize_ref(packed: PackedActivation) -> torch.Tensor:
    """Reference dequantizer: fp32 ``codes * scale + zero_point``, exact groups restored, cast back."""
    meta = packed.meta
    if meta.numel == 0:
        return torch.empty(meta.shape, dtype=meta.dtype, device=packed.device)
    num_groups = meta.num_groups
    codes = unpack_codes(packed.codes, meta.bits, num_groups * meta.group_size)
    groups = codes.view(num_groups, meta.group_size).float()
    groups = groups * packed.scale.float().unsqueeze(1) + packed.zero_point.float().unsqueeze(1)
    if packed.exact_index.numel():
        groups[packed.exact_index.long()] = packed.exact_values.float()
    return groups.view(-1)[: meta.numel].view(meta.shape).to(meta.dtype)
