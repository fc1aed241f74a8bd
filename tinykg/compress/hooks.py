"""Saved-tensor hooks: compress what autograd keeps for backward, and let observers count it.

PyTorch applies only the innermost pair of ``saved_tensors_hooks``. tinykg therefore installs one hook
implementation that does both jobs: it compresses eligible tensors when a `CompressionConfig` is given,
and reports every tensor it finally keeps to the observers registered with `observe_saved_tensors`
(the exact memory accounting in `tinykg.profile`). Entering either context inside the other composes.

tinykg's compressed ops (`tinykg.nn`) save their already-packed state inside `saving_packed()`, so the
generic hook observes it but never compresses it a second time.

`cast_saved_tensors` is the same machinery with a plain dtype cast (e.g. bf16) instead of quantization:
the usual baseline that activation compression is measured against.

Quantizing a saved value is safe when backward uses it linearly (a linear layer's input, a product's
factor): the gradient is then unbiased. Some functions' backward does not: ReLU and LeakyReLU test
``x > 0``, so a small positive value rounded down to the group's zero drops its gradient (a 2-bit MLP's
first-layer gradient, averaged over 200 seeds, was 27.6% off, 15x what noise leaves:
benchmarks/bench_hooks.py); clamps test other thresholds; log-softmax,
cross-entropy and fused attention take ``exp`` of what they saved. Inside `compress_saved_tensors` a
torch-function mode sees these functions called (`SAVE_POLICIES`): what ReLU and LeakyReLU save is kept
as its sign (a 1-bit mask, which is all their backward reads), and what the others save is kept as it is.
Tanh and sigmoid read their saved output y through 1 - y**2 and y (1 - y), which a rounded y biases by its
variance (E[y_q**2] = y**2 + Var); below 8 bits their output is kept as the quantized square (y - c)**2,
restored as c + sqrt(v_q), whose square is unbiased (a tanh MLP's gradient: z 6.0 -> 1.1 at 2 bits,
bench_hooks).

Autograd does not check the version of a tensor saved through hooks; the tensors these hooks keep as
they are (aliases of the originals) are checked here, with PyTorch's error, so that an in-place change
after the save cannot give a silently wrong gradient.

Rows looked up in a parameter table by ``F.embedding`` (``nn.Embedding``) are saved as a reference to the
table and the index and gathered again in backward (`tinykg.compress.gathered`): exact and free. The
reference checks the table and the index the same way, so a step cannot change them between forward and
backward (an optimizer step there raises; fp32, which keeps a copy of the rows, would not).
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from typing import Callable, Iterable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from .config import CompressionConfig
from .gathered import Gathered, gathered_rows, mark_gathered
from .masks import pack_greater, unpack_mask
from .packed import PackedActivation
from .quantize import dequantize, quantize
from .reference import compact, packing_saves_memory

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


# What the hooks do with what a function saves while it runs (see the module docstring).
SIGN, EXACT, SQUARE, CENTRED_SQUARE = "sign", "exact", "square", "centred_square"
# From this width on the squares' policies keep the output itself (one copy, deduplicated with the next
# layer's): the bias is at most Var <= (range / 255)**2 / 4 (bench_hooks: z 1.0 at 8 bits either way).
SQUARE_BELOW_BITS = 8
# The centre c of the square each policy keeps: tanh reads y**2, sigmoid y (1 - y) = 1/4 - (y - 1/2)**2.
SQUARE_CENTRES = {SQUARE: 0.0, CENTRED_SQUARE: 0.5}


def centred_square(y: torch.Tensor, centre: float) -> torch.Tensor:
    """(y - centre)**2 as a new tensor (one pass when centre is 0): what tanh and sigmoid keep below 8 bits."""
    return (y - centre).square_() if centre else y.square()
_save_policy: contextvars.ContextVar[str | None] = contextvars.ContextVar("tinykg_save_policy", default=None)


def _policy_table() -> dict[object, str]:
    """Functions (as a torch-function mode receives them) whose backward reads saved values non-linearly."""
    F, T, nn_ops = torch.nn.functional, torch.Tensor, torch._C._nn
    sign = [  # backward reads only ``saved > 0``
        torch.relu, torch.relu_, F.relu, F.relu_, T.relu, T.relu_,
        F.leaky_relu, F.leaky_relu_, nn_ops.leaky_relu, nn_ops.leaky_relu_,
    ]
    exact = [
        # thresholds other than 0, or a sign (|x|, L1): a rounded value can cross them
        F.hardtanh, F.hardtanh_, F.relu6, F.threshold, F.threshold_, torch.threshold, torch.threshold_,
        F.hardswish, F.hardsigmoid, F.rrelu, F.rrelu_,
        torch.clamp, torch.clamp_, torch.clip, torch.clip_, torch.clamp_min, torch.clamp_max,
        T.clamp, T.clamp_, T.clip, T.clip_, T.clamp_min, T.clamp_max,
        torch.abs, T.abs, T.__abs__, F.l1_loss, F.smooth_l1_loss, F.huber_loss,
        torch.maximum, torch.minimum, T.maximum, T.minimum,
        # exp of a saved log-probability or score
        F.log_softmax, torch.log_softmax, T.log_softmax, F.cross_entropy, F.nll_loss,
        torch.logsumexp, T.logsumexp, F.scaled_dot_product_attention, F.multi_head_attention_forward,
        # 1 / x of a saved value: a value rounded towards 0 explodes
        torch.log, T.log, torch.reciprocal, T.reciprocal, torch.rsqrt, T.rsqrt, torch.sqrt, T.sqrt,
        torch.div, T.div, T.__truediv__, T.__rtruediv__, torch.true_divide, T.true_divide,
    ]
    square = [torch.tanh, torch.tanh_, F.tanh, T.tanh, T.tanh_]  # backward reads 1 - y**2
    centred_square = [torch.sigmoid, torch.sigmoid_, F.sigmoid, T.sigmoid, T.sigmoid_]  # y (1 - y)
    return {**{f: EXACT for f in exact}, **{f: SIGN for f in sign}, **{f: SQUARE for f in square},
            **{f: CENTRED_SQUARE for f in centred_square}}


SAVE_POLICIES: dict[object, str] = _policy_table()

# Lookups in a parameter table: their output is marked (`tinykg.compress.gathered`), so a later save of it
# keeps a reference to the table and the index instead of a quantized copy. ``max_norm`` renormalises the
# table's rows in place at every lookup, so such lookups are not marked.
_LOOKUPS = frozenset({torch.nn.functional.embedding})


def _marked_lookup(func, args, kwargs) -> torch.Tensor:
    """``F.embedding(input, weight, padding_idx, max_norm, ...)`` run and marked (see `_LOOKUPS`)."""
    out = func(*args, **kwargs)
    index = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    max_norm = args[3] if len(args) > 3 else kwargs.get("max_norm")
    if max_norm is None and isinstance(index, torch.Tensor) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        mark_gathered(out, weight, index)
    return out


class _SavePolicyMode(TorchFunctionMode):
    """Marks the saves made while a function of `SAVE_POLICIES` runs (one dict lookup per torch call), and
    the outputs of parameter-table lookups (`_LOOKUPS`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            policy = SAVE_POLICIES.get(func)
        except TypeError:  # an unhashable callable
            policy = None
        if policy is None:
            if func in _LOOKUPS:
                return _marked_lookup(func, args, kwargs)
            return func(*args, **kwargs)
        token = _save_policy.set(policy)
        try:
            return func(*args, **kwargs)
        finally:
            _save_policy.reset(token)


class _Kept:
    """A saved tensor kept as it is: a detached alias (it shares the version counter) and its version then."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor, version: int) -> None:
        self.tensor = tensor
        self.version = version

    def get(self) -> torch.Tensor:
        t = self.tensor
        if t._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: [{t.type()} {list(t.shape)}] is at version {t._version}; expected version "
                f"{self.version} instead (checked by tinykg's saved-tensor hooks, which PyTorch leaves unchecked)")
        return t


class _SignActivation:
    """A saved tensor of which backward reads only ``> 0`` (ReLU, LeakyReLU): a 1-bit mask, restored as
    1.0 / 0.0, which gives the same ``> 0`` answers."""

    __slots__ = ("bits", "shape", "dtype")

    def __init__(self, t: torch.Tensor) -> None:
        self.bits = pack_greater(t.detach())
        self.shape = t.shape
        self.dtype = t.dtype


class _SquareActivation:
    """A saved output of which backward reads only its square: tanh's 1 - y**2 (``SQUARE``), or sigmoid's
    y (1 - y) = 1/4 - (y - 1/2)**2 (``CENTRED_SQUARE``, y centred on 1/2).

    Quantizing y itself gives E[y_q**2] = y**2 + Var(y_q): the backward is biased, and no function of one
    rounded copy of y is unbiased for y**2. So the square v = (y - c)**2 is quantized (E[v_q] = v) and the
    output restored as c + sqrt(v_q), whose square is v_q: the backward's estimate is unbiased. The next
    layer, which needs y itself, keeps its own quantized copy.
    """

    __slots__ = ("packed", "centre")

    def __init__(self, t: torch.Tensor, config: CompressionConfig, centre: float) -> None:
        self.packed = quantize(centred_square(t.detach(), centre), config)
        self.centre = centre

    def restore(self) -> torch.Tensor:
        if torch.is_grad_enabled():  # a backward with create_graph=True differentiates through y itself
            raise RuntimeError(
                "tinykg: double backward (create_graph=True) through tanh / sigmoid under compress_saved_tensors "
                "is not supported below 8 bits: their output is kept as its square, which has lost its sign; "
                "remove the 'square' and 'centred_square' entries of tinykg.compress.hooks.SAVE_POLICIES, or use 8 bits")
        y = dequantize(self.packed).sqrt_()
        return y.add_(self.centre) if self.centre else y


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

    def pack(self, t: torch.Tensor) -> _Kept | Gathered | PackedActivation | _CastActivation | _SignActivation | _SquareActivation:
        policy = _save_policy.get() if self.config is not None else None
        if self.config is not None and not _saving_packed.get():
            rows = gathered_rows(t)  # rows of a parameter table: exact, and no bytes beyond the lookup's index
            if rows is not None:
                _notify(rows.tensors()[-1], t)  # the innermost index: the one tensor held for it
                return rows
        if policy == EXACT or not self.eligible(t):
            # Returning ``t`` itself would make a saved output reference its own grad_fn: a cycle that
            # keeps the whole graph alive after it is dropped. A detached alias shares the data only.
            stored = t.detach()
            _notify(stored, t)
            return _Kept(stored, t._version)
        if policy == SIGN:  # 1 bit per value whatever the group size
            sign = _SignActivation(t)
            _notify(sign.bits, t)
            return sign
        if self.config is not None and not packing_saves_memory(t, self.config):
            # Padded to one large group (or cut into short rows) it would take more bytes packed.
            stored = compact(t)
            if stored is t:
                stored = t.detach()
            _notify(stored, t)
            return _Kept(stored, stored._version)
        if policy in (SQUARE, CENTRED_SQUARE) and self.config.bits < SQUARE_BELOW_BITS:
            square = _SquareActivation(t, self.config, SQUARE_CENTRES[policy])
            for part in square.packed.tensors():
                _notify(part, t)
            return square
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
    def unpack(obj: _Kept | Gathered | PackedActivation | _CastActivation | _SignActivation | _SquareActivation) -> torch.Tensor:
        if isinstance(obj, _Kept):
            return obj.get()
        if isinstance(obj, Gathered):
            return obj.gather()
        if isinstance(obj, PackedActivation):
            return dequantize(obj)
        if isinstance(obj, _SquareActivation):
            return obj.restore()
        if isinstance(obj, _CastActivation):
            return obj.stored.to(obj.dtype)
        return unpack_mask(obj.bits, obj.shape).to(obj.dtype)


@contextlib.contextmanager
def _installed(hooks: _SavedTensorHooks) -> Iterator[_SavedTensorHooks]:
    token = _hooks_installed.set(_hooks_installed.get() + 1)
    try:
        with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack), (
            _SavePolicyMode() if hooks.config is not None else contextlib.nullcontext()
        ):
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
    fewer than ``config.min_numel`` elements, anything sharing storage with ``exclude`` (pass
    ``model.buffers()`` to spare module buffers), and what the functions of `SAVE_POLICIES` save, whose
    backward is not linear in it: ReLU's and LeakyReLU's saved tensor is kept as its sign (1 bit per value),
    tanh's and sigmoid's output as its quantized (centred) square, that of clamps, |x|, log-softmax,
    cross-entropy, fused attention, log, division and square roots as it is. A function not in that table is quantized whatever its backward does: where a model's backward
    thresholds or divides by an activation through another function, add it (``SAVE_POLICIES[fn] =
    "exact"``) or use `tinykg.nn.compress_`, whose modules each know what they need. Example::

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
