"""The packed-activation type and bit packing of integer codes into uint8."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def narrowest_int_dtype(max_value: int, min_value: int = 0) -> torch.dtype:
    """Smallest integer dtype holding every value in [min_value, max_value]."""
    if min_value >= 0 and max_value <= 255:
        return torch.uint8
    for dtype in (torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= min_value and max_value <= info.max:
            return dtype
    return torch.int64


# (8 // bits,) uint8 lane shifts [0, bits, 2 bits, ...] per (device, bits), made once: off the CPU every torch
# call costs the host ~10 us (an H200 host, `benchmarks/gpu_check.py --host-overhead`), and a 1-bit mask
# packed with an 8-step shift-and-or loop took 236 us there (4 calls now: 55 us).
_LANE_SHIFTS: dict[tuple[torch.device, int], torch.Tensor] = {}


def _lane_shifts(device: torch.device, bits: int) -> torch.Tensor:
    shifts = _LANE_SHIFTS.get((device, bits))
    if shifts is None:
        shifts = _LANE_SHIFTS[(device, bits)] = torch.arange(0, 8, bits, dtype=torch.uint8, device=device)
    return shifts


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (each < 2**bits) into uint8, 8 // bits codes per byte, little-endian.

    Code ``j`` of a byte occupies bits ``[j*bits, (j+1)*bits)``. The tail is zero-padded to a whole byte.
    Returns a 1-D uint8 tensor of ceil(numel * bits / 8) bytes.
    """
    codes = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return codes
    per_byte = 8 // bits
    pad = (-codes.numel()) % per_byte
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    lanes = codes.view(-1, per_byte) << _lane_shifts(codes.device, bits)  # (num_bytes, per_byte)
    return lanes.sum(1, dtype=torch.uint8)  # the lanes' bits are disjoint: the sum is their or


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first ``numel`` codes as a 1-D uint8 tensor."""
    if bits == 8:
        return packed[:numel]
    lanes = (packed.unsqueeze(1) >> _lane_shifts(packed.device, bits)) & ((1 << bits) - 1)  # (num_bytes, per_byte)
    return lanes.reshape(-1)[:numel]


_EMPTY_EXACT: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def no_exact_groups(
    device: torch.device, index_dtype: torch.dtype, values_dtype: torch.dtype, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact_index, exact_values)`` of a packed activation without exact groups: (0,) and
    (0, group_size) tensors, one pair per setting shared by every caller (zero-size tensors cannot change)."""
    key = (device, index_dtype, values_dtype, group_size)
    empty = _EMPTY_EXACT.get(key)
    if empty is None:
        empty = _EMPTY_EXACT[key] = (
            torch.empty(0, dtype=index_dtype, device=device),
            torch.empty((0, group_size), dtype=values_dtype, device=device),
        )
    return empty


@dataclass(frozen=True)
class PackedMeta:
    """The non-tensor description of a packed activation."""

    shape: torch.Size
    dtype: torch.dtype
    bits: int
    group_size: int  # resolved: whole rows become the row length

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def num_groups(self) -> int:
        return -(-self.numel // self.group_size) if self.group_size else 0


@dataclass(frozen=True)
class PackedActivation:
    """A quantized copy of a floating tensor, as kept for the backward pass.

    Layout: the tensor is flattened (row-major) and cut into ``num_groups`` groups of ``group_size``
    elements; the last group is padded by repeating the final element (so padding never widens the range).
    Group ``g`` dequantizes as ``codes[g] * scale[g] + zero_point[g]`` in fp32.

    Attributes:
        codes: uint8, ceil(num_groups * group_size * bits / 8) bytes of packed codes.
        scale, zero_point: (num_groups,) in the metadata dtype; the stored range
            [zero_point, zero_point + (2**bits - 1) * scale] covers every value of the group.
        exact_index: (num_exact,) narrowest int dtype; groups kept exactly (non-finite values, a range the
            metadata dtype cannot represent, or a constant group whose value the metadata cannot hold).
        exact_values: (num_exact, group_size) in the original dtype.
        meta: shape, dtype, bits, group size.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    exact_index: torch.Tensor
    exact_values: torch.Tensor
    meta: PackedMeta

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors to hand to ``ctx.save_for_backward`` (rebuild with `from_tensors`)."""
        return (self.codes, self.scale, self.zero_point, self.exact_index, self.exact_values)

    @classmethod
    def from_tensors(cls, tensors: tuple[torch.Tensor, ...] | list[torch.Tensor], meta: PackedMeta) -> "PackedActivation":
        codes, scale, zero_point, exact_index, exact_values = tensors
        return cls(codes, scale, zero_point, exact_index, exact_values, meta)

    @property
    def nbytes(self) -> int:
        """Every byte this object holds: codes, metadata and exactly-kept groups."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def shape(self) -> torch.Size:
        return self.meta.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.meta.dtype

    @property
    def device(self) -> torch.device:
        return self.codes.device
