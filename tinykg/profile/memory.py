"""Exact accounting of the memory autograd holds for the backward pass.

`ActivationTracker` observes every tensor autograd saves inside its block (through tinykg's saved-tensor
hooks, so it sees packed codes when compression is on), and reports the bytes of the distinct storages
still alive: each memory block is counted once however many ops saved it, and blocks that exist without a
pending backward -- parameters, module buffers, anything passed in ``exclude`` -- are not counted.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..compress import is_parameter_like, observe_saved_tensors, storage_key


def tensor_storage_bytes(t: torch.Tensor) -> int:
    """Bytes of the memory block(s) behind ``t``: the whole storage for a view, indices + values if sparse."""
    if t.layout == torch.sparse_coo:
        return tensor_storage_bytes(t._indices()) + tensor_storage_bytes(t._values())
    if t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        compressed, plain = (
            (t.crow_indices(), t.col_indices()) if t.layout in (torch.sparse_csr, torch.sparse_bsr) else (t.ccol_indices(), t.row_indices())
        )
        return sum(tensor_storage_bytes(p) for p in (compressed, plain, t.values()))
    return t.untyped_storage().nbytes()


@dataclass
class _Record:
    ref: weakref.ref
    nbytes: int
    label: str


@dataclass
class ActivationReport:
    """Bytes held for backward: ``total_bytes`` and a per-op (module path) breakdown."""

    total_bytes: int
    by_op: dict[str, int] = field(default_factory=dict)
    num_tensors: int = 0
    cuda_peak_bytes: int | None = None

    def table(self) -> str:
        width = max((len(k) for k in (*self.by_op, "total")))
        rows = [f"{op:<{width}}  {n:>14,d} B" for op, n in sorted(self.by_op.items(), key=lambda kv: -kv[1])]
        rows.append(f"{'total':<{width}}  {self.total_bytes:>14,d} B")
        return "\n".join(rows)


class ActivationTracker:
    """Context manager counting the bytes autograd holds for backward.

    Args:
        model: optional module; its parameters and buffers are excluded and each saved tensor is
            attributed to the innermost module running when it was saved (its qualified name).
        exclude: more tensors whose storages are held anyway (e.g. graph buffers kept outside modules).

    Example::

        with ActivationTracker(model) as tracker:
            loss = model(batch)
        print(tracker.report().total_bytes)   # before loss.backward()
    """

    def __init__(self, model: nn.Module | None = None, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.model = model
        self._excluded = {storage_key(t) for t in exclude}
        if model is not None:
            self._excluded |= {storage_key(t) for t in model.parameters()}
            self._excluded |= {storage_key(t) for t in model.buffers()}
        self._records: dict[tuple, _Record] = {}
        self._stack: list[str] = []
        self._handles: list = []
        self._context = None

    def _observe(self, t: torch.Tensor, source: torch.Tensor) -> None:
        if is_parameter_like(source):
            return
        key = storage_key(t)
        if key in self._excluded:
            return
        old = self._records.get(key)
        if old is not None and old.ref() is not None:
            return
        label = self._stack[-1] if self._stack else "<root>"
        self._records[key] = _Record(weakref.ref(t), tensor_storage_bytes(t), label)

    def _enter_module(self, label: str):
        def hook(module, args) -> None:
            self._stack.append(label)

        return hook

    def _leave_module(self, module, args, output) -> None:
        self._stack.pop()

    def __enter__(self) -> "ActivationTracker":
        if self.model is not None:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._enter_module(name or type(module).__name__)))
                self._handles.append(module.register_forward_hook(self._leave_module))
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._context = observe_saved_tensors(self._observe)
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()

    def report(self) -> ActivationReport:
        """Bytes of the saved storages that are still alive (call between forward and backward)."""
        by_op: dict[str, int] = defaultdict(int)
        alive = [r for r in self._records.values() if r.ref() is not None]
        for r in alive:
            by_op[r.label] += r.nbytes
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        return ActivationReport(sum(r.nbytes for r in alive), dict(by_op), len(alive), peak)


def activation_bytes(fn, *args, model: nn.Module | None = None, **kwargs) -> tuple[object, ActivationReport]:
    """Run ``fn(*args, **kwargs)`` under an `ActivationTracker`; return its output and the report."""
    with ActivationTracker(model) as tracker:
        out = fn(*args, **kwargs)
    return out, tracker.report()


def peak_allocated(fn, *args, **kwargs) -> tuple[object, int]:
    """``(fn(*args, **kwargs), peak)``: how far the bytes allocated by PyTorch's allocators rise above their
    level at the call's start, at most, while ``fn`` runs -- on the CPU what ``torch.cuda.max_memory_allocated``
    minus the starting allocation is on a GPU, which PyTorch does not count for the CPU.

    Exact and deterministic: it replays the allocator's own events (PyTorch's profiler with
    ``profile_memory=True``: one event per allocation and per free, with its size), not the process's
    resident memory, which moves by pages and with the C allocator's caching. A block allocated before the
    call and freed inside it is subtracted only if an earlier profiled call saw it allocated; otherwise its
    size is unknown and the count is an upper bound. So clear older tensors (gradients) before the call
    for a count that does not depend on what ran before. Allocations on the calling thread are counted
    (and on threads that take over its profiling state, as PyTorch's intra-op workers do); a backward run
    by autograd's own device threads (a GPU's) is not. It slows ``fn`` down: a measurement, not a timing.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(*args, **kwargs)
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return out, peak
