"""The packed-activation type and bit packing of integer codes into uint8."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch


# (dtype, min, max) of the signed candidates, as plain ints: torch.iinfo costs ~0.5 us a call, and every
# compressed op that keeps an index asks this.
_SIGNED_RANGES = ((torch.int16, -(2**15), 2**15 - 1), (torch.int32, -(2**31), 2**31 - 1))


def narrowest_int_dtype(max_value: int, min_value: int = 0) -> torch.dtype:
    """Smallest integer dtype holding every value in [min_value, max_value]."""
    if min_value >= 0 and max_value <= 255:
        return torch.uint8
    for dtype, low, high in _SIGNED_RANGES:
        if low <= min_value and max_value <= high:
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


@dataclass(frozen=True, repr=False)
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
    # Set by a quantizer that has not read its exact-group check back yet (`resolve` reads it).
    pending: PendingExact | None = field(default=None, compare=False, repr=False)

    def resolve(self) -> "PackedActivation":
        """This object, its exact groups final: reads back a deferred check (`PendingExact`).

        Waits for the quantize kernel only (not for the work queued after it), gathers the groups it flagged
        from the input it kept (rare), then drops that input. Resolved in place: every holder of this object
        (the intermediate cache of `tinykg.nn`) sees the same final tensors.
        """
        pending = self.pending
        if pending is None:
            return self
        if pending.signal.wait_any() is not False:  # some exact group, or the answer was lost
            if pending.source._version != pending.version and bool(pending.flags.any()):
                raise RuntimeError(
                    "tinykg: a quantized tensor was modified in place before its exact groups were read back; "
                    "save the packed copy (tinykg.nn._saved.save) before changing the tensor in place")
            index, values = gather_exact(pending.flags, pending.source, self.meta.group_size)
            object.__setattr__(self, "exact_index", index)  # frozen for users; the one place it changes
            object.__setattr__(self, "exact_values", values)
        object.__setattr__(self, "pending", None)
        return self

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors to hand to ``ctx.save_for_backward`` (rebuild with `from_tensors`)."""
        self.resolve()
        return (self.codes, self.scale, self.zero_point, self.exact_index, self.exact_values)

    @classmethod
    def from_tensors(cls, tensors: tuple[torch.Tensor, ...] | list[torch.Tensor], meta: PackedMeta) -> "PackedActivation":
        codes, scale, zero_point, exact_index, exact_values = tensors
        return cls(codes, scale, zero_point, exact_index, exact_values, meta)

    def row_multiple(self) -> int:
        """Rows (along the first dim) whose elements fill whole groups and whole bytes of codes: `rows` may
        start at any multiple of this."""
        per_row, group = self.meta.shape[1:].numel(), self.meta.group_size
        aligned = math.lcm(group, 8 // math.gcd(self.meta.bits, 8))  # elements: whole groups, whole bytes
        return aligned // math.gcd(aligned, per_row) if per_row else 1

    def rows(self, first: int, last: int) -> "PackedActivation":
        """The packed copy of rows ``first:last`` (along the first dim), sharing this one's memory where the
        groups are not kept exactly: dequantizing it gives those rows of this one's dequantized tensor.
        ``first`` must be a multiple of `row_multiple`."""
        self.resolve()
        meta = self.meta
        last = min(last, meta.shape[0])
        per_row, group, bits = meta.shape[1:].numel(), meta.group_size, meta.bits
        if first % self.row_multiple():
            raise ValueError(f"rows from {first} start inside a group or byte; start at a multiple of {self.row_multiple()}")
        start, stop = first * per_row, last * per_row
        first_group, end_group = start // group, -(-stop // group)
        codes = self.codes[first_group * group * bits // 8 : -(-end_group * group * bits // 8)]
        exact_index, exact_values = self.exact_index, self.exact_values
        if exact_index.numel():
            inside = (exact_index.long() >= first_group) & (exact_index.long() < end_group)
            exact_values = exact_values[inside]
            exact_index = (exact_index.long()[inside] - first_group).to(narrowest_int_dtype(max(end_group - first_group - 1, 0)))
        shape = torch.Size((last - first, *meta.shape[1:]))
        return PackedActivation(
            codes, self.scale[first_group:end_group], self.zero_point[first_group:end_group], exact_index, exact_values,
            PackedMeta(shape, meta.dtype, bits, group),
        )

    def __repr__(self) -> str:
        """One line: the tensors themselves (thousands of values) are left out."""
        meta = self.meta
        state = ", exact groups pending" if self.pending is not None else f", {self.exact_index.numel()} exact groups"
        return (f"PackedActivation(shape={tuple(meta.shape)}, dtype={meta.dtype}, bits={meta.bits}, "
                f"group_size={meta.group_size}, metadata={self.scale.dtype}, device={self.device}{state})")

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


class ExactSignal(Protocol):
    def wait_any(self) -> bool | None:
        """Whether some group of the call must be kept exactly, once the device has said so (waits for it);
        None when the answer was lost (then the flags are read directly)."""


class PendingExact(NamedTuple):
    """An exact-group check the device has not answered yet (``quantize(..., defer_exact=True)``)."""

    flags: torch.Tensor  # (num_groups,) uint8: nonzero where the group must be kept exactly
    source: torch.Tensor  # the quantizer's contiguous input, kept until the check is read
    version: int  # source._version when quantized: an in-place change before `resolve` is an error
    signal: ExactSignal


def gather_exact(flags: torch.Tensor, flat: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of flagged groups (narrowest int dtype) and their padded values in ``flat``'s dtype.

    Args:
        flags: (num_groups,) nonzero where a group is kept exactly. flat: the input, contiguous (any shape,
            read as (numel,)).
    Returns:
        exact_index (num_exact,), exact_values (num_exact, group_size).
    """
    index_dtype = narrowest_int_dtype(max(flags.numel() - 1, 0))
    # One cheap reduction (and sync) in the usual case of no exact group, instead of nonzero's scan; the
    # empty results are the shared ones (each torch call costs a GPU host ~10 us).
    if not bool(flags.any()):
        return no_exact_groups(flat.device, index_dtype, flat.dtype, group_size)
    flat = flat.reshape(-1)
    index = flags.nonzero().squeeze(1)
    # Clamping to the last element is the reference's padding.
    positions = index.unsqueeze(1) * group_size + torch.arange(group_size, device=flat.device)
    values = flat[positions.clamp_(max=flat.numel() - 1)]
    return index.to(index_dtype), values


def scatter_exact(out: torch.Tensor, packed: PackedActivation) -> None:
    """Write the exactly-kept groups of ``packed`` into ``out`` ((numel,), the output dtype) in place."""
    group_size = packed.meta.group_size
    positions = packed.exact_index.long().unsqueeze(1) * group_size + torch.arange(group_size, device=out.device)
    keep = positions < out.numel()
    out[positions[keep]] = packed.exact_values.to(out.dtype)[keep]
