"""Rows of a parameter table, saved by reference and gathered again in backward.

An embedding lookup ``weight[index]`` of a parameter table needs no stored copy at all: the table is held
anyway (it is a parameter) and the lookup's own backward keeps ``index``. An op that saves the looked-up
rows for its backward (the score's dot product, a linear layer's input) can keep a reference to both
instead and gather the rows again when backward needs them. That costs no bytes and no noise, where a
quantized copy costs ``bits`` per value and adds rounding noise.

The same holds for an index that is itself a lookup in a table held anyway: KGCN's hop-h neighbours are
``adj_entity[hop h - 1 entities]``, rows of a module buffer, so an op that saves them can keep the buffer
and the smaller parent index instead.

The lookup marks its output (`mark_gathered`); whoever saves a tensor asks `gathered_rows` whether it is
still such a lookup: neither the output nor the table changed in place since (the version counters say),
and the tensor is the output or a view covering all of it in order (a reshape). Both tinykg's compressed
ops (`tinykg.nn`) and the generic saved-tensor hooks (`compress_saved_tensors`, which marks the outputs of
``F.embedding``) use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def gather_index(index: torch.Tensor) -> torch.Tensor:
    """``index`` in a dtype PyTorch's gather/scatter kernels accept (int32 or int64).

    Narrow (uint8/int16) indices are widened to int32 only for the duration of the op, so callers can
    hand the ops the narrow tensors they keep anyway.
    """
    return index if index.dtype in (torch.int32, torch.int64) else index.int()


@dataclass(frozen=True)
class Gathered:
    """``weight[index]`` viewed as ``shape``: rows of a parameter table saved by reference.

    ``version``: the table's version counter when the rows were saved; `gather` refuses a table changed
    since (an optimizer step between forward and backward), as autograd does for any saved tensor."""

    weight: torch.Tensor  # (N, *row): a parameter, or a buffer of integer indices
    index: "torch.Tensor | Gathered"  # any integer dtype, values in [0, N); itself a lookup when nested
    shape: torch.Size  # index.shape + row, or a view of it with the same elements in the same order
    version: int

    def gather(self) -> torch.Tensor:
        w = self.weight
        if w._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: [{w.type()} {list(w.shape)}] is at version {w._version}; expected version "
                f"{self.version} instead (a table whose rows tinykg gathers again in backward)")
        index = self.index.gather() if isinstance(self.index, Gathered) else self.index
        rows = F.embedding(gather_index(index), w.reshape(w.shape[0], -1))
        return rows.view(self.shape)

    def tensors(self) -> list[torch.Tensor]:
        """The tables, outermost lookup first, then the innermost index: what autograd must hold."""
        inner = self.index.tensors() if isinstance(self.index, Gathered) else [self.index]
        return [self.weight, *inner]

    def layout(self) -> tuple[tuple[torch.Size, int], ...]:
        """(shape, version) of each lookup, outermost first: with `tensors`, all `from_tensors` needs."""
        inner = self.index.layout() if isinstance(self.index, Gathered) else ()
        return ((self.shape, self.version), *inner)

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor], layout: tuple[tuple[torch.Size, int], ...]) -> "Gathered":
        index = tensors[-1]
        for weight, (shape, version) in zip(reversed(tensors[:-1]), reversed(layout)):
            index = cls(weight, index, shape, version)
        return index


def whole_base(x: torch.Tensor) -> torch.Tensor:
    """The base of ``x`` when ``x`` is a view covering all of it in the same order (``y.view(B, d)``;
    views share their base's version counter), else ``x`` itself: where notes about ``x`` are kept."""
    base = x._base
    if (
        base is not None
        and x.dtype == base.dtype
        and x.numel() == base.numel()
        and x.storage_offset() == base.storage_offset()
        and x.is_contiguous()
        and base.is_contiguous()
    ):
        return base
    return x


def mark_gathered(out: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, *, held: bool = False) -> torch.Tensor:
    """Note on ``out`` (the fresh result of ``weight[index]``) how to gather it again. Only for tables held
    anyway: parameters (leaves that require grad), or, with ``held=True``, a table the caller vouches for
    (a module's buffer, such as an adjacency table of neighbour indices). Gathering again from an
    activation would keep that activation alive. Returns ``out``."""
    if held or (weight.is_leaf and weight.requires_grad):
        out._tinykg_gathered = (weight, index, weight._version, out._version)
    return out


def gathered_rows(x: torch.Tensor) -> Gathered | None:
    """A `Gathered` reference for ``x`` when it is a marked lookup (or a whole view of one) that neither it
    nor its table changed in place since, else None. When the lookup's index is itself such a lookup
    (RippleNet's memories, KGCN's deeper hops), the reference nests: only the innermost index is held."""
    owner = whole_base(x)
    note = getattr(owner, "_tinykg_gathered", None)
    if note is None:
        return None
    weight, index, weight_version, out_version = note
    if weight._version != weight_version or owner._version != out_version:
        return None
    return Gathered(weight, gathered_rows(index) or index, x.shape, weight_version)
