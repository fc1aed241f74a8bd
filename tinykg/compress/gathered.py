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
still such a lookup: neither the output, the table nor the index changed since (their version counters,
and the table's and index's memory addresses, say so), and the tensor is the output or a view covering
all of it in order (a reshape). A reference held as it is (the generic hooks) checks the table and index
again when backward gathers; one saved through ``save_for_backward`` (the ops) leaves that to autograd. Both tinykg's compressed
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


def scatter_index(index: torch.Tensor) -> torch.Tensor:
    """``index`` for ``index_add_``: int64 on the CPU, where an int32 index sends it down a path 2.5-4x
    slower (torch 2.13, one thread, (n, 16) rows into a table: n = 1,024, 57 us against 15 us; n = 65,536,
    9.0 ms against 3.6 ms), while gathers (`gather_index`) run as fast with int32. Elsewhere as
    `gather_index` gives it (int32 stays int32): not measured there, and a conversion is one more launch."""
    return index.long() if index.device.type == "cpu" else gather_index(index)


Stamp = tuple[int, int]  # (data_ptr, version counter)


def _stamp(t: torch.Tensor) -> Stamp:
    """What must not change for a saved reference to stay valid: the memory behind ``t`` (``t.data = ...``
    swaps it without a version bump) and its version counter (every in-place op bumps it)."""
    return (t.data_ptr(), t._version)


def _check(t: torch.Tensor, stamp: Stamp, what: str) -> None:
    if t.data_ptr() != stamp[0]:
        raise RuntimeError(
            f"tinykg: the {what} [{t.type()} {list(t.shape)}] whose rows are gathered again in backward was "
            "replaced (its .data or storage) between forward and backward")
    if t._version != stamp[1]:
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an inplace "
            f"operation: [{t.type()} {list(t.shape)}] is at version {t._version}; expected version "
            f"{stamp[1]} instead (the {what} whose rows tinykg gathers again in backward)")


@dataclass(frozen=True, eq=False)
class Gathered:
    """``weight[index]`` viewed as ``shape``: rows of a table held anyway, saved by reference.

    ``weight_stamp`` / ``index_stamp``: the table's and the index's memory and version when the rows were
    looked up (``index_stamp`` is None when the index is itself a reference, which checks its own).
    `gather` refuses a table or index changed since (unless autograd checks them: ``check=False``). Unlike fp32, which keeps a copy of the rows, a
    compressed step therefore cannot change its tables between forward and backward (an optimizer step
    or an EMA write there raises). Edits through ``.data`` in place bump no version and go unseen, as
    they do for every tensor autograd saves."""

    weight: torch.Tensor  # (N, *row): a parameter, or a buffer of integer indices
    index: "torch.Tensor | Gathered"  # any integer dtype, values in [0, N); itself a lookup when nested
    shape: torch.Size  # index.shape + row, or a view of it with the same elements in the same order
    weight_stamp: Stamp
    index_stamp: Stamp | None

    def gather(self, check: bool = True) -> torch.Tensor:
        """The rows again. ``check``: compare table and index with their stamps, for a reference held as it
        is (the generic hooks). Ops that saved the reference's tensors with ``save_for_backward`` pass
        False: autograd checks those itself, and what it hands back may be a faithful copy at another
        address (non-reentrant checkpointing recomputes them; ``save_on_cpu`` moves them)."""
        w = self.weight
        if check:
            _check(w, self.weight_stamp, "table")
        if isinstance(self.index, Gathered):
            index = self.index.gather(check)
        else:
            index = self.index
            if check:
                _check(index, self.index_stamp, "index")
        rows = F.embedding(gather_index(index), w.reshape(w.shape[0], -1))
        return rows.view(self.shape)

    def tensors(self) -> list[torch.Tensor]:
        """The tables, outermost lookup first, then the innermost index: what autograd must hold."""
        inner = self.index.tensors() if isinstance(self.index, Gathered) else [self.index]
        return [self.weight, *inner]

    def layout(self) -> tuple[tuple, ...]:
        """(shape, weight_stamp, index_stamp) of each lookup, outermost first: with `tensors`, all
        `from_tensors` needs."""
        inner = self.index.layout() if isinstance(self.index, Gathered) else ()
        return ((self.shape, self.weight_stamp, self.index_stamp), *inner)

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor], layout: tuple[tuple, ...]) -> "Gathered":
        index = tensors[-1]
        for weight, (shape, weight_stamp, index_stamp) in zip(reversed(tensors[:-1]), reversed(layout)):
            index = cls(weight, index, shape, weight_stamp, index_stamp)
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
    activation would keep that activation alive. Inference tensors (no version counter) are not marked.
    Returns ``out``."""
    if (held or (weight.is_leaf and weight.requires_grad)) and not (
        out.is_inference() or index.is_inference() or weight.is_inference()
    ):
        out._tinykg_gathered = (weight, index, _stamp(weight), _stamp(index), out._version)
    return out


def gathered_rows(x: torch.Tensor) -> Gathered | None:
    """A `Gathered` reference for ``x`` when it is a marked lookup (or a whole view of one) that neither it,
    its table nor its index changed since, else None. When the lookup's index is itself such a lookup
    (RippleNet's memories, KGCN's deeper hops), the reference nests: only the innermost index is held."""
    owner = whole_base(x)
    note = getattr(owner, "_tinykg_gathered", None)
    if note is None:
        return None
    weight, index, weight_stamp, index_stamp, out_version = note
    if owner._version != out_version or _stamp(weight) != weight_stamp or _stamp(index) != index_stamp:
        return None
    inner = gathered_rows(index)
    if inner is not None:
        return Gathered(weight, inner, x.shape, weight_stamp, None)
    return Gathered(weight, index, x.shape, weight_stamp, index_stamp)
