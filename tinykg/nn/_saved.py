"""Saving mixed state (plain tensors, packed activations, bit masks, absent values) through
``ctx.save_for_backward`` so that autograd owns every byte and the accounting hooks see it."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..compress import (
    CompressionConfig,
    PackedActivation,
    PackedMeta,
    dequantize,
    is_parameter_like,
    quantize,
    saving_packed,
)
from ..compress.gathered import Gathered, gathered_rows, whole_base
from ..compress.gathered import gather_index, mark_gathered  # noqa: F401  (the ops import them from here)
from ..compress.masks import keep_bits, pack_greater, pack_mask, scale_by_mask, unpack_mask
from ..compress.packed import narrowest_int_dtype
from ..compress.reference import compact, packing_saves_memory


@dataclass(frozen=True)
class BitMask:
    """A bool tensor packed 8 per byte (1-bit storage of ReLU/LeakyReLU/dropout masks).

    `load` hands masks back packed: backwards apply them with `scale`, which reads the bits directly.
    """

    bits: torch.Tensor  # uint8 (ceil(numel / 8),)
    shape: torch.Size

    @classmethod
    def pack(cls, mask: torch.Tensor) -> "BitMask":
        return cls(pack_mask(mask), mask.shape)

    @classmethod
    def greater(cls, x: torch.Tensor, threshold: float = 0.0) -> "BitMask":
        """The mask of ``x > threshold``, packed without forming the bool tensor."""
        return cls(pack_greater(x, threshold), x.shape)

    @classmethod
    def keep(cls, shape: torch.Size, p: float, seed: int, device: torch.device) -> "BitMask":
        """A dropout keep-mask: each element kept with probability 1 - p, drawn from ``seed``
        (`tinykg.compress.masks.keep_bits`)."""
        return cls(keep_bits(shape.numel(), p, seed, device), shape)

    def unpack(self) -> torch.Tensor:
        return unpack_mask(self.bits, self.shape)

    def row_multiple(self) -> int:
        """Rows (along the first dim) that fill whole bytes: `rows` may start at any multiple of this."""
        return self.whole_bytes(self.shape[1:].numel())

    @staticmethod
    def whole_bytes(per_row: int) -> int:
        """The fewest rows of ``per_row`` bits that fill whole bytes."""
        return 8 // math.gcd(per_row, 8) if per_row else 1

    def rows(self, part: slice | None) -> "BitMask":
        """The mask of rows ``part`` (along the first dim; None: all of them). The start must fall on a whole
        byte: ``part.start * (elements per row)`` a multiple of 8."""
        if part is None:
            return self
        per_row, first, last = self.shape[1:].numel(), part.start, min(part.stop, self.shape[0])
        start, stop = first * per_row, last * per_row
        if first % self.row_multiple():
            raise ValueError(f"rows from {first} start inside a byte of the mask ({per_row} bits per row)")
        return BitMask(self.bits[start // 8 : (stop + 7) // 8], torch.Size((last - first, *self.shape[1:])))

    def scale(self, g: torch.Tensor, on: float, off: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``g * on`` where the mask is set, ``g * off`` elsewhere (`tinykg.compress.masks.scale_by_mask`);
        ``g`` has the mask's shape."""
        if g.shape != self.shape:
            raise ValueError(f"a mask of shape {tuple(self.shape)} applied to a tensor of shape {tuple(g.shape)}")
        return scale_by_mask(self.bits, g, on, off, out=out)


def narrow_index(index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``index`` (values in [0, num_rows)) in the narrowest integer dtype; no copy if already narrow.

    The dtype follows from ``num_rows`` rather than ``index.max()``, which would need a device sync.
    """
    dtype = narrowest_int_dtype(max(num_rows - 1, 0))
    return index if index.dtype == dtype else index.to(dtype)


def keep_index(index: torch.Tensor, num_rows: int) -> torch.Tensor | Gathered:
    """What an op saves of an index into a table of ``num_rows`` rows: a `Gathered` reference when the
    index is itself a lookup in a table held anyway (KGCN's neighbours, ``adj_entity[parent]``, marked
    with `mark_gathered`), whose backward gets it back by gathering again; else the narrowed index."""
    rows = gathered_rows(index)
    return rows if rows is not None else narrow_index(index, num_rows)


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``: itself when it already is. A no-op ``.to`` still costs ~1 us of dispatch, and
    the hand-written backwards cast a dozen loaded tensors per step to the gradient's dtype (mixed
    precision) where almost all of them already have it."""
    return t if t.dtype == dtype else t.to(dtype)


def maybe_quantize(x: torch.Tensor, config: CompressionConfig, *, is_output: bool = False) -> torch.Tensor | PackedActivation | Gathered:
    """Packed copy of an activation, or a `Gathered` reference when ``x`` is rows of a parameter table
    (`tinykg.compress.gathered`): those are gathered again, exactly, in backward.

    ``is_output``: ``x`` is the op's own fresh output (it has no grad_fn yet inside ``forward``).
    A packed copy may be pending (`quantize`'s ``defer_exact``): `save` resolves it, so ``x`` must not be
    changed in place between this call and `save`.
    Kept as is: parameters (held anyway, so a copy would only add memory), float64 tensors (the
    quantizer's inputs are fp32/fp16/bf16; float64 runs are gradchecks of the hand-written backwards),
    integer or bool tensors (a mask is already one byte per value) and tensors whose packed copy would be
    larger (`packing_saves_memory`: tiny tensors), as they are or as a compact copy (`compact`).
    """
    if is_parameter_like(x) or x.dtype == torch.float64 or not x.is_floating_point():  # masks, indices: as they are
        return x
    rows = gathered_rows(x)
    if rows is not None:
        return rows
    if not packing_saves_memory(x, config):
        return compact(x)
    if x.grad_fn is None and not is_output:
        # Inputs may be fed again next step: they need fresh noise every time, so no caching.
        return quantize(x, config, defer_exact=True)
    # An intermediate saved by two ops (tanh's output, which the next linear saves too) is quantized
    # once: the packed copy rides on the tensor object, valid while its version counter is unchanged.
    # Intermediates are created anew by every forward pass, so no noise is reused across steps.
    owner = whole_base(x)
    cached = getattr(owner, "_tinykg_packed", None)
    if cached is not None and (cached[0] is config or cached[0] == config) and cached[1] == x._version:
        packed = cached[2]
        if packed.shape == x.shape:
            return packed
        meta = packed.meta  # a view of another shape: the same codes (built directly: `replace` is slower)
        return PackedActivation.from_tensors(packed.tensors(), PackedMeta(x.shape, meta.dtype, meta.bits, meta.group_size))
    packed = quantize(x, config, defer_exact=True)  # resolved by `save`
    owner._tinykg_packed = (config, x._version, packed)
    return packed


_PACKED_PARTS = 5  # codes, scale, zero_point, exact_index, exact_values

Item = torch.Tensor | PackedActivation | BitMask | Gathered | None


def save(ctx, *items: Item) -> None:
    """Save a mix of items; restore them with `load`. Non-tensor layout goes on ``ctx`` as plain data."""
    tensors: list[torch.Tensor] = []
    layout: list[tuple] = []
    for item in items:
        if item is None:
            layout.append(("none",))
        elif isinstance(item, PackedActivation):
            item.resolve()
            if item.exact_index.numel():
                layout.append(("packed", item.meta))
                tensors.extend(item.tensors())
            else:  # the usual case: the two empty exact-group tensors ride on the layout (no bytes), unsaved
                layout.append(("packed_dense", item.meta, item.exact_index, item.exact_values))
                tensors.extend((item.codes, item.scale, item.zero_point))
            if item.meta.numel < _SHARE_BELOW:
                item.codes._tinykg_uses = getattr(item.codes, "_tinykg_uses", 0) + 1
        elif isinstance(item, BitMask):
            layout.append(("mask", item.shape))
            tensors.append(item.bits)
        elif isinstance(item, Gathered):
            parts = item.tensors()
            layout.append(("gathered", len(parts), item.layout()))
            tensors.extend(parts)
        else:
            layout.append(("tensor",))
            tensors.append(item)
    ctx.tinykg_layout = layout
    with saving_packed():
        ctx.save_for_backward(*tensors)


def load(ctx, *, packed: bool = False) -> list:
    """Items saved by `save`, packed activations dequantized; masks stay `BitMask` (apply with ``scale``).

    A small packed activation saved by several ops (a model's score operands, attention weights) is
    dequantized once: the loaded tensor may be shared between their backward passes, so callers never
    modify loaded tensors in place.

    ``packed=True``: packed activations of `_SHARE_BELOW` elements or more stay packed, for a backward that
    dequantizes them a few rows at a time (`loaded_rows`) instead of holding the whole fp32 copy.
    """
    tensors = list(ctx.saved_tensors)
    out: list = []
    pos = 0
    for entry in ctx.tinykg_layout:
        kind = entry[0]
        if kind == "none":
            out.append(None)
        elif kind == "packed":
            out.append(_load_packed(tensors[pos : pos + _PACKED_PARTS], entry[1], packed))
            pos += _PACKED_PARTS
        elif kind == "packed_dense":
            out.append(_load_packed([*tensors[pos : pos + 3], entry[2], entry[3]], entry[1], packed))
            pos += 3
        elif kind == "mask":
            out.append(BitMask(tensors[pos], entry[1]))
            pos += 1
        elif kind == "gathered":
            out.append(Gathered.from_tensors(tensors[pos : pos + entry[1]], entry[2]).gather(check=False))
            pos += entry[1]
        else:
            out.append(tensors[pos])
            pos += 1
    return out


# Packed activations below this many elements that several ops saved are dequantized once per backward
# pass, the fp32 copy held on the codes tensor from the first consumer's backward to the last one's (at
# most 256 KB each; larger tensors are dequantized per consumer, so that backward never holds more than
# one op's worth of them). Each dequantize of a small tensor costs a few microseconds of per-call work:
# KGCN at batch 128 dequantized its 4 packed tensors 7 times per step.
_SHARE_BELOW = 1 << 16


def _load_packed(parts: list[torch.Tensor], meta: PackedMeta, keep_packed: bool = False) -> torch.Tensor | PackedActivation:
    if keep_packed and meta.numel >= _SHARE_BELOW:  # never shared (`save` counts uses below that size only)
        return PackedActivation.from_tensors(parts, meta)
    codes = parts[0]
    uses = getattr(codes, "_tinykg_uses", 0)  # consumers whose backward has not loaded it yet
    shared = getattr(codes, "_tinykg_dequantized", None)
    x = shared.view(meta.shape) if shared is not None else dequantize(PackedActivation.from_tensors(parts, meta))
    if uses > 1:
        codes._tinykg_uses = uses - 1
        if shared is None:
            codes._tinykg_dequantized = x
    elif shared is not None:  # the last consumer: drop the copy with its use
        del codes._tinykg_dequantized
        codes._tinykg_uses = 0
    return x


def row_multiple(*items: torch.Tensor | PackedActivation | BitMask | None) -> int:
    """The smallest row count that every row chunk of ``items`` (along their first dim) may start at a
    multiple of: whole groups and bytes of a packed activation's codes, whole bytes of a mask."""
    multiple = 1
    for item in items:
        if isinstance(item, (PackedActivation, BitMask)):
            multiple = math.lcm(multiple, item.row_multiple())
    return multiple


def loaded_rows(item: torch.Tensor | PackedActivation, part: slice | None, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``part`` (None: all) of a loaded item in ``dtype``: a packed one (`load(ctx, packed=True)`)
    dequantized for those rows only, the same values as those rows of the whole dequantized tensor."""
    if isinstance(item, PackedActivation):
        item = dequantize(item if part is None else item.rows(part.start, part.stop))
        return as_dtype(item, dtype)
    return as_dtype(item if part is None else item[part], dtype)


def first_order(backward):
    """Decorator for an autograd Function's ``backward``: the hand-written backwards read dequantized
    copies and are not themselves differentiable, so a backward that would build a graph
    (``create_graph=True``, for double backward) is an error here instead of a wrong second-order number."""

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "tinykg: compressed ops give first-order gradients only; double backward (create_graph=True) "
                "through them is not supported: run that part with compression off (config=None)")
        return backward(ctx, *grads)

    return checked


def needs_graph(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record an op on these inputs: grad mode on and some input needs a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def compression_active(config: CompressionConfig | None, *tensors: torch.Tensor | None) -> bool:
    """Compressed path only when a config is given, grad mode is on and some input needs a gradient."""
    return config is not None and needs_graph(*tensors)
