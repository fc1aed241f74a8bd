"""Saved-tensor hooks: compress what autograd keeps for backward, and let observers count it.

PyTorch applies only the innermost pair of ``saved_tensors_hooks``. tinykg therefore installs one hook
implementation that does both jobs: it compresses eligible tensors when a `CompressionConfig` is given,
and reports every tensor it finally keeps to the observers registered with `observe_saved_tensors`
(the exact memory accounting in `tinykg.profile`). Entering either context inside the other composes.

tinykg's compressed ops (`tinykg.nn`) save their already-packed state inside `saving_packed()`, so the
generic hook observes it but never compresses it a second time.

`cast_saved_tensors` is the same machinery with a plain dtype cast (e.g. bf16) instead of quantization:
the usual baseline that activation compression is measured against.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from typing import Callable, Iterable, Iterator

import torch

from .config import CompressionConfig
from .packed import PackedActivation
from .quantize import dequantize, quantize

# observer(stored, source): ``stored`` is the tensor autograd now holds, ``source`` the tensor it was
# asked to save (the same data, or the original of a packed part).
Observer = Callable[[torch.Tensor, torch.Tensor], None]

_observers: contextvars.ContextVar[tuple[Observer, ...]] = contextvars.ContextVar("tinykg_observers", default=())
_hooks_installed: contextvars.ContextVar[int] = contextvars.ContextVar("tinykg_hooks_installed", default=0)
_saving_packed: contextvars.ContextVar[bool] = contextvars.ContextVar("tinykg_saving_packed", default=False)

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class saving_packed:
    """Context manager: mark saves made inside as final: observed, never compressed again by the generic
    hook. (A class, not a generator-based contextmanager: every compressed op enters it once per step,
    and this costs a third as much.)"""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _saving_packed.set(True)

    def __exit__(self, *exc) -> None:
        _saving_packed.reset(self._token)


def is_parameter_like(t: torch.Tensor) -> bool:
    """True for leaves that require grad (parameters) and views of them: they exist without backward."""
    if t.is_leaf and t.requires_grad:
        return True
    base = t._base
    return base is not None and base.is_leaf and base.requires_grad


def storage_key(t: torch.Tensor) -> tuple[str, int]:
    """Identity of the memory block behind ``t`` (views of one storage share it; a sparse tensor, which
    has no single storage, is its own block)."""
    if t.layout != torch.strided:
        return ("sparse", id(t))
    return (str(t.device), t.untyped_storage().data_ptr())


def _notify(stored: torch.Tensor, source: torch.Tensor) -> None:
    for observer in _observers.get():
        observer(stored, source)


class _CastActivation:
    """A saved tensor stored in a narrower floating dtype; ``dtype`` is the one to restore."""

    __slots__ = ("stored", "dtype")

    def __init__(self, stored: torch.Tensor, dtype: torch.dtype) -> None:
        self.stored = stored
        self.dtype = dtype


class _SavedTensorHooks:
    """One pack/unpack pair: optional compression (quantization or a dtype cast), always observation."""

    def __init__(
        self,
        config: CompressionConfig | None,
        exclude: Iterable[torch.Tensor] = (),
        *,
        cast_dtype: torch.dtype | None = None,
        cast_min_numel: int = 0,
    ) -> None:
        if config is not None and cast_dtype is not None:
            raise ValueError("one saved-tensor hook either quantizes or casts, not both")
        self.config = config
        self.cast_dtype = cast_dtype
        self.min_numel = max(config.min_numel if config is not None else cast_min_numel, 1)
        self.excluded = {storage_key(t) for t in exclude}
        # Dedupe within one context: a tensor saved by several ops is compressed once. Entries hold a
        # weak reference to the saved tensor, so a freed block reused at the same address cannot hit.
        self.cache: dict[tuple, tuple[weakref.ref, PackedActivation | _CastActivation]] = {}

    def eligible(self, t: torch.Tensor) -> bool:
        if self.config is None and self.cast_dtype is None:
            return False
        if self.cast_dtype is not None and t.element_size() <= self.cast_dtype.itemsize:
            return False  # already as narrow as the cast would make it
        return (
            not _saving_packed.get()
            and t.layout == torch.strided
            and t.dtype in _FLOAT_DTYPES
            and t.numel() >= self.min_numel
            and not is_parameter_like(t)
            and storage_key(t) not in self.excluded
        )

    def pack(self, t: torch.Tensor) -> torch.Tensor | PackedActivation:
        if not self.eligible(t):
            # Returning ``t`` itself would make a saved output reference its own grad_fn: a cycle that
            # keeps the whole graph alive after it is dropped. A detached alias shares the data only.
            stored = t.detach()
            _notify(stored, t)
            return stored
        key = (storage_key(t), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t._version)
        hit = self.cache.get(key)
        if hit is not None and hit[0]() is not None:
            return hit[1]
        if self.config is not None:
            packed = quantize(t, self.config)
            parts = packed.tensors()
        else:
            packed = _CastActivation(t.detach().to(self.cast_dtype), t.dtype)
            parts = (packed.stored,)
        self.cache[key] = (weakref.ref(t), packed)
        for part in parts:
            _notify(part, t)
        return packed

    @staticmethod
    def unpack(obj: torch.Tensor | PackedActivation | _CastActivation) -> torch.Tensor:
        if isinstance(obj, PackedActivation):
            return dequantize(obj)
        if isinstance(obj, _CastActivation):
            return obj.stored.to(obj.dtype)
        return obj


@contextlib.contextmanager
def _installed(hooks: _SavedTensorHooks) -> Iterator[_SavedTensorHooks]:
    token = _hooks_installed.set(_hooks_installed.get() + 1)
    try:
        with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
            yield hooks
    finally:
        _hooks_installed.reset(token)
        hooks.cache.clear()


@contextlib.contextmanager
def compress_saved_tensors(
    config: CompressionConfig, *, exclude: Iterable[torch.Tensor] = ()
) -> Iterator[None]:
    """Compress every floating tensor autograd saves inside this block.

    Left alone: parameters (leaves requiring grad) and views of them, integer/bool tensors, tensors with
    fewer than ``config.min_numel`` elements, and anything sharing storage with ``exclude`` (pass
    ``model.buffers()`` to spare module buffers). Example::

        with tinykg.compress.compress_saved_tensors(CompressionConfig(bits=2)):
            loss = model(batch).sum()
        loss.backward()
    """
    if not isinstance(config, CompressionConfig):
        raise TypeError(f"compress_saved_tensors expects a CompressionConfig, got {type(config).__name__}")
    with _installed(_SavedTensorHooks(config, exclude)):
        yield


@contextlib.contextmanager
def cast_saved_tensors(
    dtype: torch.dtype = torch.bfloat16, *, min_numel: int = 0, exclude: Iterable[torch.Tensor] = ()
) -> Iterator[None]:
    """Store every floating tensor autograd saves inside this block in ``dtype`` (bf16 or fp16), and
    cast it back to its own dtype when backward reads it.

    The plain-cast baseline for activation compression: bf16 halves fp32 activation memory and rounds
    to nearest (8 significant bits; biased, unlike tinykg's stochastic rounding). Left alone, as by
    `compress_saved_tensors`: parameters and views of them, integer/bool tensors, tensors already as
    narrow as ``dtype``, tensors with fewer than ``min_numel`` elements, anything sharing storage with
    ``exclude``. Observers (`observe_saved_tensors`, `tinykg.profile.ActivationTracker`) see the
    narrow copies, so the bytes they count are the bytes kept. Example::

        with tinykg.compress.cast_saved_tensors(torch.bfloat16):
            loss = model(batch).sum()
        loss.backward()
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"cast_saved_tensors stores activations in torch.bfloat16 or torch.float16, got {dtype}")
    if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
        raise ValueError(f"min_numel must be a non-negative int, got {min_numel!r}")
    with _installed(_SavedTensorHooks(None, exclude, cast_dtype=dtype, cast_min_numel=min_numel)):
        yield


@contextlib.contextmanager
def observe_saved_tensors(observer: Observer) -> Iterator[None]:
    """Call ``observer(stored, source)`` for every tensor autograd keeps for backward inside this block.

    Composes with `compress_saved_tensors` in either nesting order: inside a compression block the
    observer sees the packed parts (codes, scale, zero-point, ...), not the original tensor.
    """
    token = _observers.set(_observers.get() + (observer,))
    try:
        if _hooks_installed.get():
            yield
        else:
            with _installed(_SavedTensorHooks(None)):
                yield
    finally:
        _observers.reset(token)
