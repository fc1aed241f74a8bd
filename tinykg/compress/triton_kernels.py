"""Triton backend (``Backend.TRITON``): fused kernels that reproduce `tinykg.compress.reference` code for code.

quantize: one program takes a tile of ``ROWS`` whole groups, loads it once, reduces min / max (and a
non-finite flag) per group, computes the stored zero-point / scale exactly as `reference.group_metadata`
(fp16 through the hardware's round-to-nearest-even conversion, bf16 and ``nextafter`` on bit patterns),
then rounds ``(x - z) * (1/s) + u`` with the counter-based noise of `tinykg.compress.rng` and packs the
codes of ``8 // bits`` neighbours into each byte before the single store. Groups longer than
``_MAX_CHUNK`` are walked twice in chunks (min / max, then quantize). When ``group_size * bits`` is not a
multiple of 8 (odd "row" groups), codes are stored one per byte and packed by `pack_codes`.

dequantize: one pass over tiles of whole groups; each byte is loaded once and split into its codes (or,
for groups that do not fill whole bytes, each code reads its own byte); writes ``code * s + z``.

Measured on an H100 (64M fp32, G=256; benchmarks/gpu_check.py --sweep): with 32-bit word stores the
quantize kernel takes 0.73-0.8x the time of ``x.clone()`` at every width (byte stores: 1.1x / 1.4x at 4 / 8
bits); dequantize 0.6-0.7x (CUDA-event timings).

Bit-exactness with the reference: the kernels are launched with ``enable_fp_fusion=False`` (an FMA in
``s * B + z`` or ``code * s + z`` would round once instead of twice), and ``1/s`` and ``(M - z) / B`` use
``div_rn`` (Triton's plain ``/`` on NVIDIA may be the approximate ``div.full.f32``).

Exact groups are flagged by the kernel and gathered / scattered by index in PyTorch. ``exact_index`` has a
data-dependent size, so the host must learn whether any group is exact: the kernel also sets one word of
pinned host memory (`_FlagWords`), and the host reads it after an event, at once or, with ``defer_exact``
(what `tinykg.nn` uses), when the packed copy is saved (`PackedActivation.resolve`).

Inside `tinykg.compress.rng.device_salt` the seeded kernels (quantize, keep-mask) also read a salt from
device memory (`stream_key`), so that a CUDA graph's replays draw new noise; inside `exact_groups_to`
(a capture) quantize calls report exact groups to one device word instead of waiting.

fp16 inputs are loaded natively, bf16 ones through an int16 view (the interpreter has no bf16), and the same
for bf16 metadata and outputs.

Without a GPU the kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (the tests do this), which must
be set before Triton is imported. Triton is imported, and the kernels built, on first use.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import os
from functools import partial
from typing import Iterator, NamedTuple

import torch

from .config import CompressionConfig
from .packed import (
    PackedActivation,
    PackedMeta,
    PendingExact,
    gather_exact,
    narrowest_int_dtype,
    no_exact_groups,
    pack_codes,
    scatter_exact,
)
from .reference import resolve_group_size
from .rng import current_device_salt, seed_key

# ``triton.language``, bound by `_get_kernels` on first use (importing Triton costs time, and the kernel
# bodies below only need it when they run).
tl = None

_MD_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_MD_SIGN = {0: 0x80000000, 1: 0x8000, 2: 0x8000}
_MD_INF = {0: 0x7F800000, 1: 0x7C00, 2: 0x7F80}
_OUT_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# The input dtype's largest finite value (`reference.group_metadata`'s range check); each is exact in fp32,
# the type of a float kernel argument.
_VALUE_MAX = {dtype: torch.finfo(dtype).max for dtype in _OUT_KIND}
# Quantize launch settings per bit width: (elements per program, warps per program, store 32-bit words
# instead of bytes). Byte stores with 8 // bits lanes leave 4- and 8-bit tiles one or two elements wide
# per thread in the innermost dimension (narrow loads); words give every width 32 // bits lanes. Measured
# on an H100 (`benchmarks/gpu_check.py --sweep`, 64M fp32, G=256, kernel time as % of a copy): bytes
# 4096/4 gave 129 / 132 / 88 / 72% at 1 / 2 / 4 / 8 bits, words 4096/4 136 / 130 / 130 / 125%.
_QUANTIZE_TUNING: dict[int, tuple[int, int, bool]] = {1: (4096, 4, True), 2: (4096, 4, True),
                                                      4: (4096, 4, True), 8: (4096, 4, True)}
# Dequantize: elements per program and warps (tuned on an H200); the longest group chunk held in registers
# at once; the largest tile any launch uses (int32 index slack).
_TILE_D = 1024
_WARPS_D = 2
_MAX_CHUNK = 4096
_MAX_TILE = 16384

log = logging.getLogger("tinykg.compress")
_triton_ok: bool | None = None
_reported_missing = False


def triton_installed() -> bool:
    """True when Triton imports (checked once; an install that fails to import counts as missing)."""
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton.language  # noqa: F401

            _triton_ok = True
        except Exception:
            _triton_ok = False
    return _triton_ok


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET`` asks for Triton's CPU interpreter.

    Triton reads the variable when it decorates a function, its own library included, so it must be set
    before Triton is first imported in the process (the tests run the interpreted cases in a child process).
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def available(device: torch.device) -> bool:
    """CUDA tensors with Triton installed; CPU tensors too under ``TRITON_INTERPRET=1``. Never raises.

    ``Backend.AUTO`` takes this backend for every CUDA tensor when it is available; without Triton it uses
    the reference and says so once in the log.
    """
    global _reported_missing
    try:
        device = torch.device(device)
        if device.type == "cuda":
            ok = torch.cuda.is_available() and triton_installed()
            if not ok and not _reported_missing:
                _reported_missing = True
                log.info("tinykg: triton is not importable; the fused GPU backend is off (pip install triton)")
            return ok
        return device.type == "cpu" and interpret_mode() and triton_installed()
    except Exception:  # a broken Triton install must not break quantization: the reference takes over
        return False


class Kernels(NamedTuple):
    """The jitted kernels every launch takes from `_get_kernels` (one place to wrap them: the op counts of
    `benchmarks/gpu_check.py` and the tests)."""

    quantize: object
    dequantize: object
    pack_mask: object
    unpack_mask: object
    pack_greater: object
    keep_bits: object
    scale_by_mask: object


_kernels: Kernels | None = None

# TINYKG_TRITON_FAST_LAUNCH=0 sends every launch through Triton's own path (`_FastLaunch`).
_FAST_LAUNCH = os.environ.get("TINYKG_TRITON_FAST_LAUNCH", "1") != "0"


def _spec_key(arg) -> object:
    """What Triton specializes a non-constexpr argument on, or finer: a tensor's dtype and 16-byte
    alignment; an int's width (i32 / i64 / u64), divisibility by 16 and equality to 1 (which makes it a
    constant); for other scalars their type."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if type(arg) is int:
        return arg == 1, arg % 16 == 0, -(1 << 31) <= arg < 1 << 31, arg < 1 << 63
    return type(arg)


# Keys `_FastLaunch` keeps per kernel; later new keys take Triton's path (a bound, not a working size: a
# training run uses a handful per kernel).
_MAX_KEYS = 256


class _FastLaunch:
    """A jitted kernel, launched as one (``kernel[grid](*args, **constexprs_and_options)``), without Triton's
    per-launch argument binding once that specialization has been compiled.

    Triton's ``JITFunction.run`` binds every argument, asks its specializer about each, builds and looks up
    a cache key from their string forms, checks the kernel's globals and builds launch metadata, on every
    launch. A training step makes dozens of launches and is bound by the host on a GPU, so that cost counts
    (on an H200's host a launch took 34-49 us through it and 23-36 us past it; benchmarks/RESULTS.md,
    session 14). Here the first launch of each key goes through Triton and keeps the compiled kernel; later
    ones call its launcher directly, with the arguments in signature order (constexprs included), as
    Triton's own ``run`` does.

    The key (`_spec_key` of each positional argument, the keyword values, the current device) tells apart
    at least what Triton's specialization does, so a hit is the kernel Triton would have chosen. Keyword
    arguments are constexprs and launch options, compared by value (the call sites pass each with one
    type: ``True`` and ``1`` are the same key here, not in Triton); grids are tuples. Keys are few, since
    `_spec_key` is coarse; at most ``_MAX_KEYS`` per kernel are kept. Launch hooks (profilers), pre-run
    hooks and compiled kernels without the launcher attributes of Triton 3.6-3.9 take Triton's path every
    time. Not followed after the first launch of a key: changes to Triton's debug and instrumentation knobs,
    and to the globals a kernel reads (tinykg's are constants).
    """

    __slots__ = ("jit", "names", "compiled", "driver", "runtime", "pre_run_hooks")

    def __init__(self, jit):
        from triton import knobs
        from triton.runtime import driver

        self.jit = jit
        self.names = tuple(param.name for param in jit.params)
        self.compiled: dict[tuple, tuple | None] = {}
        self.driver, self.runtime = driver, knobs.runtime
        self.pre_run_hooks = getattr(jit, "pre_run_hooks", ())  # the JITFunction's own list: additions show

    def __getitem__(self, grid: tuple[int, ...]):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid: tuple[int, ...], args: tuple, kwargs: dict):
        active = self.driver.active
        device = active.get_current_device()
        key = (device, tuple(map(_spec_key, args)), tuple(kwargs.items()))
        hit = self.compiled.get(key, False)
        if hit and not (_hooked(self.runtime.launch_enter_hook) or _hooked(self.runtime.launch_exit_hook)
                        or self.pre_run_hooks):
            run, function, metadata, tail, _ = hit
            grid3 = tuple(grid) + (1,) * (3 - len(grid))
            run(*grid3, active.get_current_stream(device), function, metadata, None, None, None, *args,
                *[kwargs[name] for name in tail])
            return None
        kernel = self.jit[grid](*args, **kwargs)
        if hit is False and len(self.compiled) < _MAX_KEYS:
            self.compiled[key] = self._launcher(kernel, len(args), kwargs)
        return kernel

    def _launcher(self, kernel, num_args: int, kwargs: dict) -> tuple | None:
        tail = self.names[num_args:]
        try:
            if not all(name in kwargs for name in tail):
                return None
            # The kernel rides along: some Tritons unload its module when it is collected.
            return kernel.run, kernel.function, kernel.packed_metadata, tail, kernel
        except AttributeError:  # another Triton's compiled kernel: its own path only
            return None


def _fast(jit):
    """``jit`` behind `_FastLaunch` where it applies: compiled kernels (not the interpreter's) of a Triton
    with ``knobs``, unless TINYKG_TRITON_FAST_LAUNCH=0."""
    if not _FAST_LAUNCH or interpret_mode():
        return jit
    try:
        return _FastLaunch(jit)
    except (ImportError, AttributeError) as err:
        log.info("tinykg: Triton launches take Triton's own path (%s)", err)
        return jit


def _hooked(hook) -> bool:
    """Whether a Triton launch hook is set (None in some versions, an empty `HookChain` in others)."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _get_kernels() -> Kernels:
    """The jitted kernels, built on first use.

    The interpreter resolves a kernel's helpers through its module's globals (closures are not seen), so
    the plain functions below are decorated here and bound to their own names in this module.
    """
    global _kernels, tl
    if _kernels is None:
        import triton
        import triton.language

        tl = triton.language
        module = globals()
        for name, fn in _RAW.items():
            # The key is a run-time value: no recompilation when it happens to be 1 or divisible by 16.
            arguments = fn.__code__.co_varnames[: fn.__code__.co_argcount]
            module[name] = triton.jit(fn, do_not_specialize=["key_i32"] if "key_i32" in arguments else ())
        _kernels = Kernels(*(_fast(module[f"{field}_kernel"]) for field in Kernels._fields))
    return _kernels


# Kernel bodies: plain functions, jitted by `_get_kernels` (annotations stay strings, so Triton need not be
# installed to import this module).


def md_round(v, MD: tl.constexpr):
    """uint32 bits of fp32 ``v`` rounded to nearest even in the metadata dtype (0 fp32, 1 fp16, 2 bf16)."""
    if MD == 0:
        bits = v.to(tl.uint32, bitcast=True)
    elif MD == 1:
        bits = v.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)
    else:
        b = v.to(tl.uint32, bitcast=True)
        bits = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    return bits


def md_value(bits, MD: tl.constexpr):
    """fp32 value of uint32 metadata bits."""
    if MD == 0:
        v = bits.to(tl.float32, bitcast=True)
    elif MD == 1:
        v = bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        v = (bits << 16).to(tl.float32, bitcast=True)
    return v


def md_store(ptr, bits, mask, MD: tl.constexpr):
    """Store uint32 metadata bits into an fp32 (MD 0) or fp16 (MD 1) tensor, or a bf16 one seen as int16."""
    if MD == 0:
        tl.store(ptr, bits.to(tl.float32, bitcast=True), mask=mask)
    elif MD == 1:
        tl.store(ptr, bits.to(tl.uint16).to(tl.float16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, bits.to(tl.int16), mask=mask)


def md_load(ptr, mask, MD: tl.constexpr):
    """uint32 bits of the metadata at ``ptr`` (the inverse of `md_store`)."""
    if MD == 0:
        bits = tl.load(ptr, mask=mask, other=0.0).to(tl.uint32, bitcast=True)
    elif MD == 1:
        bits = tl.load(ptr, mask=mask, other=0.0).to(tl.uint16, bitcast=True).to(tl.uint32)
    else:  # int16 patterns are sign-extended by the widening
        bits = tl.load(ptr, mask=mask, other=0).to(tl.uint32) & 0xFFFF
    return bits


def md_next(bits, SIGN: tl.constexpr, INF: tl.constexpr, UP: tl.constexpr):
    """``torch.nextafter`` toward +inf (UP) or -inf on metadata bits (values finite or +inf)."""
    negative = (bits & SIGN) != 0
    zero = (bits & (SIGN - 1)) == 0
    if UP:
        res = tl.where(zero, 1, tl.where(bits == INF, bits, tl.where(negative, bits - 1, bits + 1)))
    else:
        res = tl.where(zero, SIGN | 1, tl.where(negative, bits + 1, bits - 1))
    return res.to(tl.uint32)


def hash32(h):
    """`tinykg.compress.rng.hash32` of uint32 values (uint32 arithmetic wraps)."""
    h = h ^ (h >> 16)
    h = h * 0x7FEB352D
    h = h ^ (h >> 15)
    h = h * 0x2C1B3C6D
    return h ^ (h >> 16)


def noise(offs, key):
    """u_i of `tinykg.compress.rng` for int64 padded flat indices ``offs``."""
    return (hash32(offs.to(tl.uint32) ^ key) >> 8).to(tl.float32) * 5.9604644775390625e-08


def stream_key(key_i32, salt_ptr, SALTED: tl.constexpr):
    """The noise key: ``key_i32`` itself, or (SALTED) the key of `rng.salted_seed` of the seed ``key_i32``
    and the salt at ``salt_ptr`` (int64, its low 32 bits), read when the kernel runs (CUDA-graph replays)."""
    key = key_i32.to(tl.uint32)
    if SALTED:
        key = hash32(key ^ hash32(tl.load(salt_ptr).to(tl.uint32)))
    return key


def load_x(ptrs, mask, IN_BF16: tl.constexpr):
    """fp32 values at ``ptrs`` (bf16 arrives as int16 bit patterns)."""
    if IN_BF16:
        raw = tl.load(ptrs, mask=mask, other=0)
        v = (raw.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return v


def load_tile(x_ptr, g, col, row_ok, numel, G, IN_BF16: tl.constexpr):
    """fp32 values of columns ``col`` of groups ``g``; the padding repeats the final element.

    Addresses stay ``g * G + col`` (no clamping) so that Triton sees them contiguous and vectorizes loads.
    """
    valid = row_ok & (col < G)
    offs = g * G + col
    v = load_x(x_ptr + offs, valid & (offs < numel), IN_BF16)
    if IN_BF16:
        last = (tl.load(x_ptr + (numel - 1)).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        last = tl.load(x_ptr + (numel - 1)).to(tl.float32)
    return tl.where(offs < numel, v, last), valid


def tile_extremes(v, valid):
    """Per-row min, max and non-finite flag of a (ROWS, NB, PB) tile."""
    mn = tl.min(tl.min(tl.where(valid, v, float("inf")), axis=2), axis=1)
    mx = tl.max(tl.max(tl.where(valid, v, float("-inf")), axis=2), axis=1)
    # v * 0 is NaN exactly for NaN and +-inf, and a NaN makes the sum NaN.
    probe = tl.sum(tl.sum(tl.where(valid, v * 0.0, 0.0), axis=2), axis=1)
    nonfinite = (probe != probe).to(tl.int32)
    return mn, mx, nonfinite


def store_codes(v, rows, col, num_groups, zf, inv, exact, key, G, codes_ptr, c, bytes_per_group,
                BITS: tl.constexpr, LEVELS: tl.constexpr, PB: tl.constexpr, NB: tl.constexpr,
                PACKED: tl.constexpr, STOCHASTIC: tl.constexpr, WORD: tl.constexpr):
    """Round a (ROWS, NB, PB) tile to codes; store them packed (or one per byte when not PACKED).

    ``bytes_per_group`` counts the stored units of a group: 32-bit words when WORD, bytes otherwise.
    """
    g = rows[:, None, None]
    offs = g * G + col
    t = (v - zf[:, None, None]) * inv[:, None, None]
    t = tl.where(exact[:, None, None], 0.0, t)
    if STOCHASTIC:
        t = t + noise(offs, key)
    else:
        t = t + 0.5
    q = tl.floor(t)
    q = tl.where(q >= 0.0, q, 0.0)  # also NaN (0 * inf when 1/s overflows), which the reference casts to 0
    q = tl.where(q > LEVELS, LEVELS, q).to(tl.int32)
    if PACKED:
        lane = tl.arange(0, PB)[None, None, :]
        b = c * NB + tl.arange(0, NB)[None, :]
        mask = (rows[:, None] < num_groups) & (b * PB < G)
        if WORD:  # PB = 32 // BITS codes per little-endian 32-bit word: 4-byte stores at every width
            word = tl.sum(q.to(tl.uint32) << (lane * BITS).to(tl.uint32), axis=2)  # disjoint bits: sum == or
            words_ptr = codes_ptr.to(tl.pointer_type(tl.int32))  # the uint8 codes seen as words: no host view
            tl.store(words_ptr + rows[:, None] * bytes_per_group + b, word.to(tl.int32, bitcast=True), mask=mask)
        else:
            byte = tl.sum(q << (lane * BITS), axis=2)  # (ROWS, NB): codes do not overlap, so sum == or
            tl.store(codes_ptr + rows[:, None] * bytes_per_group + b, byte.to(tl.uint8), mask=mask)
    else:
        tl.store(codes_ptr + offs, q.to(tl.uint8), mask=(g < num_groups) & (col < G))


def quantize_kernel(x_ptr, codes_ptr, scale_ptr, zp_ptr, flags_ptr, any_ptr, salt_ptr, numel, num_groups, G,
                    bytes_per_group, key_i32, value_max, BITS: tl.constexpr, LEVELS: tl.constexpr, MD: tl.constexpr,
                    MD_SIGN: tl.constexpr, MD_INF: tl.constexpr, IN_BF16: tl.constexpr,
                    STOCHASTIC: tl.constexpr, PACKED: tl.constexpr, ROWS: tl.constexpr, NB: tl.constexpr,
                    PB: tl.constexpr, NUM_CHUNKS: tl.constexpr, IDX64: tl.constexpr, WORD: tl.constexpr,
                    SALTED: tl.constexpr):
    pid = tl.program_id(0)
    if IDX64:  # element indices beyond int32
        pid = pid.to(tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    g = rows[:, None, None]  # (ROWS, 1, 1)
    row_ok = g < num_groups
    col0 = tl.arange(0, NB)[None, :, None] * PB + tl.arange(0, PB)[None, None, :]  # (1, NB, PB)
    key = stream_key(key_i32, salt_ptr, SALTED)

    # 1. min / max / non-finite per group
    if NUM_CHUNKS == 1:
        v, valid = load_tile(x_ptr, g, col0, row_ok, numel, G, IN_BF16)
        mn, mx, nonfinite = tile_extremes(v, valid)
    else:
        mn = tl.full((ROWS,), float("inf"), tl.float32)
        mx = tl.full((ROWS,), float("-inf"), tl.float32)
        nonfinite = tl.zeros((ROWS,), tl.int32)
        for c in range(NUM_CHUNKS):
            v, valid = load_tile(x_ptr, g, col0 + c * (NB * PB), row_ok, numel, G, IN_BF16)
            cmn, cmx, cnf = tile_extremes(v, valid)
            mn = tl.minimum(mn, cmn)
            mx = tl.maximum(mx, cmx)
            nonfinite = tl.maximum(nonfinite, cnf)

    # 2. stored metadata, as reference.group_metadata
    levels = LEVELS * 1.0
    zb = md_round(mn, MD)
    zf = md_value(zb, MD)
    zb = tl.where(zf > mn, md_next(zb, MD_SIGN, MD_INF, False), zb)
    zf = md_value(zb, MD)
    constant = mx == mn
    sb = md_round(tl.math.div_rn(mx - zf, tl.full((ROWS,), levels, tl.float32)), MD)
    sb = tl.where(constant & (zf == mn), 0, sb).to(tl.uint32)
    for _ in tl.static_range(4):
        sf = md_value(sb, MD)
        short = sf * levels + zf < mx
        sb = tl.where(short, md_next(sb, MD_SIGN, MD_INF, True), sb)
    sf = md_value(sb, MD)
    top = sf * levels + zf
    covered = top >= mx
    in_range = (top <= value_max) & (zf >= -value_max)  # every level finite in the input dtype
    finite = (zf == zf) & (tl.abs(zf) != float("inf")) & (sf == sf) & (tl.abs(sf) != float("inf"))
    exact = (nonfinite != 0) | ~(finite & covered & in_range) | (constant & (zf != mn))
    zb = tl.where(exact, 0, zb)
    sb = tl.where(exact, 0, sb)
    zf = tl.where(exact, 0.0, zf)
    sf = tl.where(exact, 0.0, sf)
    ok = rows < num_groups
    md_store(scale_ptr + rows, sb, ok, MD)
    md_store(zp_ptr + rows, zb, ok, MD)
    tl.store(flags_ptr + rows, exact.to(tl.uint8), mask=ok)
    # One int32 word per call set to 1 if any group is exact: only exact rows store (all the same value).
    tl.store(any_ptr + rows * 0, tl.full((ROWS,), 1, tl.int32), mask=ok & exact)
    safe = tl.where(sf > 0.0, sf, 1.0)
    inv = tl.where(sf > 0.0, tl.math.div_rn(tl.full((ROWS,), 1.0, tl.float32), safe), 0.0)

    # 3. codes
    if NUM_CHUNKS == 1:
        store_codes(v, rows, col0, num_groups, zf, inv, exact, key, G, codes_ptr, 0, bytes_per_group,
                    BITS, LEVELS, PB, NB, PACKED, STOCHASTIC, WORD)
    else:
        for c in range(NUM_CHUNKS):
            col = col0 + c * (NB * PB)
            v, valid = load_tile(x_ptr, g, col, row_ok, numel, G, IN_BF16)
            store_codes(v, rows, col, num_groups, zf, inv, exact, key, G, codes_ptr, c, bytes_per_group,
                        BITS, LEVELS, PB, NB, PACKED, STOCHASTIC, WORD)


def dequantize_kernel(codes_ptr, scale_ptr, zp_ptr, out_ptr, numel, num_groups, G, bytes_per_group,
                      BITS: tl.constexpr, LEVELS: tl.constexpr, MD: tl.constexpr, OUT_KIND: tl.constexpr,
                      PACKED: tl.constexpr, ROWS: tl.constexpr, NB: tl.constexpr, PB: tl.constexpr,
                      NUM_CHUNKS: tl.constexpr, IDX64: tl.constexpr):
    pid = tl.program_id(0)
    if IDX64:  # element indices beyond int32
        pid = pid.to(tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    ok = rows < num_groups
    s = md_value(md_load(scale_ptr + rows, ok, MD), MD)[:, None, None]
    z = md_value(md_load(zp_ptr + rows, ok, MD), MD)[:, None, None]
    g = rows[:, None, None]
    lane = tl.arange(0, PB)[None, None, :]
    for c in range(NUM_CHUNKS):
        b = c * NB + tl.arange(0, NB)[None, :, None]  # byte (PACKED) or code index within the group
        col = b * PB + lane  # (1, NB, PB)
        offs = g * G + col  # (ROWS, NB, PB) padded flat index
        mask = (g < num_groups) & (col < G) & (offs < numel)
        if PACKED:  # each byte loaded once and split into its PB codes
            byte = tl.load(codes_ptr + g * bytes_per_group + b, mask=mask, other=0).to(tl.int32)
            code = (byte >> (lane * BITS)) & LEVELS
        else:  # groups that do not start on a byte boundary: each code reads its own byte
            pos = offs * BITS
            byte = tl.load(codes_ptr + (pos >> 3), mask=mask, other=0).to(tl.int32)
            code = (byte >> (pos & 7).to(tl.int32)) & LEVELS
        val = code.to(tl.float32) * s + z
        if OUT_KIND == 0:
            tl.store(out_ptr + offs, val, mask=mask)
        elif OUT_KIND == 1:
            tl.store(out_ptr + offs, val.to(tl.float16), mask=mask)
        else:  # bf16 by round-to-nearest-even on the bits (values are finite or inf, never NaN)
            bits = val.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            tl.store(out_ptr + offs, bits.to(tl.int16), mask=mask)


def mask_bytes(BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """This program's (BLOCK,) output bytes, their (BLOCK, 8) element indices (bit j of byte i: 8i + j) and
    the (1, 8) bit positions."""
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    lane = tl.arange(0, 8)[None, :]
    return offs, offs[:, None] * 8 + lane, lane


def store_bits(out_ptr, offs, hit, lane, num_bytes):
    """Pack the (BLOCK, 8) booleans ``hit`` into the bytes ``offs``."""
    byte = tl.sum(hit.to(tl.int32) << lane, axis=1)  # the lanes' bits are disjoint: the sum is their or
    tl.store(out_ptr + offs, byte.to(tl.uint8), mask=offs < num_bytes)


def mask_elements(bits_ptr, numel, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """This program's (BLOCK,) element indices, which of them exist, and their bits (int32 0 / 1)."""
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    ok = idx < numel
    byte = tl.load(bits_ptr + (idx >> 3), mask=ok, other=0).to(tl.int32)
    return idx, ok, (byte >> (idx & 7).to(tl.int32)) & 1


def pack_mask_kernel(mask_ptr, out_ptr, numel, num_bytes, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """Byte ``i`` of the output holds bools ``8i .. 8i+7`` of the mask, element ``8i + j`` in bit ``j``."""
    offs, idx, lane = mask_bytes(BLOCK, IDX64)
    store_bits(out_ptr, offs, tl.load(mask_ptr + idx, mask=idx < numel, other=0), lane, num_bytes)


def unpack_mask_kernel(bits_ptr, out_ptr, numel, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """Inverse of `pack_mask_kernel`: bool ``i`` is bit ``i % 8`` of byte ``i // 8``."""
    idx, ok, bit = mask_elements(bits_ptr, numel, BLOCK, IDX64)
    tl.store(out_ptr + idx, bit != 0, mask=ok)


def pack_greater_kernel(x_ptr, out_ptr, numel, num_bytes, threshold, OR_EQUAL: tl.constexpr, BLOCK: tl.constexpr,
                        IDX64: tl.constexpr):
    """`pack_mask_kernel` of ``x > threshold`` (``>=`` when ``OR_EQUAL``) for fp32 ``x``, compared in fp32."""
    offs, idx, lane = mask_bytes(BLOCK, IDX64)
    ok = idx < numel
    v = tl.load(x_ptr + idx, mask=ok, other=0.0)
    hit = (v >= threshold) if OR_EQUAL else (v > threshold)
    store_bits(out_ptr, offs, hit & ok, lane, num_bytes)


def keep_bits_kernel(out_ptr, numel, num_bytes, key_i32, p, salt_ptr, BLOCK: tl.constexpr, IDX64: tl.constexpr,
                     SALTED: tl.constexpr):
    """`pack_mask_kernel` of ``u_i >= p``, u the noise of `tinykg.compress.rng` under `stream_key`."""
    offs, idx, lane = mask_bytes(BLOCK, IDX64)
    key = stream_key(key_i32, salt_ptr, SALTED)
    store_bits(out_ptr, offs, (noise(idx, key) >= p) & (idx < numel), lane, num_bytes)


def scale_by_mask_kernel(bits_ptr, g_ptr, out_ptr, numel, on, off, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """``out_i = g_i * (on if bit i else off)`` for fp32 ``g``; ``out`` may be ``g``."""
    idx, ok, bit = mask_elements(bits_ptr, numel, BLOCK, IDX64)
    g = tl.load(g_ptr + idx, mask=ok, other=0.0)
    tl.store(out_ptr + idx, g * tl.where(bit != 0, on, off), mask=ok)


_RAW = {fn.__name__: fn for fn in (md_round, md_value, md_store, md_load, md_next, hash32, noise, stream_key, load_x, load_tile, tile_extremes, store_codes,
                                   quantize_kernel, dequantize_kernel, mask_bytes, store_bits, mask_elements, pack_mask_kernel,
                                   unpack_mask_kernel, pack_greater_kernel, keep_bits_kernel, scale_by_mask_kernel)}


def _tiling(group_size: int, lanes: int, tile: int) -> tuple[int, int, int]:
    """(rows per program, columns per chunk, number of chunks) for groups of ``group_size``."""
    block = max(triton_next_pow2(group_size), lanes)
    chunk = min(block, _MAX_CHUNK)
    return max(1, tile // chunk), chunk, -(-group_size // chunk)


def triton_next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _needs_int64(num_groups: int, group_size: int) -> bool:
    """Whether padded element indices (plus a tile of slack) can pass int32."""
    return (num_groups + _MAX_TILE) * group_size >= 2**31


def _as_i32(key: int) -> int:
    """A 32-bit key as a signed int32 value, so that Triton always types the argument as i32."""
    return key - (1 << 32) if key >= 1 << 31 else key


def _seed_arg(seed: int, salt: torch.Tensor | None) -> int:
    """The ``key_i32`` argument: the seed's key, or with a device salt the seed itself (the kernel derives
    the key from both, `stream_key`)."""
    return _as_i32(seed_key(seed) if salt is None else seed & 0xFFFFFFFF)


def _md_arg(t: torch.Tensor) -> torch.Tensor:
    """Metadata as the kernels take it: fp32 and fp16 as they are, bf16 as int16 bit patterns (the
    interpreter has no bf16). No view in the usual case: each costs a GPU host a few microseconds."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def launch_quantize(flat: torch.Tensor, config: CompressionConfig, seed: int, group_size: int,
                    tuning: tuple[int, int, bool] | None = None, any_word: torch.Tensor | None = None):
    """Run the quantize kernel on a contiguous ``flat`` (any shape, read as 1-D; numel > 0).

    ``tuning`` (elements per program, warps, word stores) overrides ``_QUANTIZE_TUNING[bits]`` (sweeps).
    ``any_word``: a (1,) int32 the kernel sets to 1 if some group is exact (left as it is otherwise); None:
    a scratch word on the device.

    Returns:
        codes (packed uint8), scale and zero_point ((num_groups,) metadata dtype), flags ((num_groups,)
        uint8, 1 for groups to keep exactly).
    """
    quantize_kernel = _get_kernels().quantize
    numel = flat.numel()
    num_groups = -(-numel // group_size)
    bits = config.bits
    tile, warps, words = tuning or _QUANTIZE_TUNING[bits]
    if tile > _MAX_TILE:
        raise ValueError(f"tile {tile} exceeds _MAX_TILE={_MAX_TILE}")
    md = config.torch_metadata_dtype
    device = flat.device
    per_byte = 8 // bits
    packed_in_kernel = group_size % per_byte == 0
    words = bool(words) and (group_size * bits) % 32 == 0
    lanes = 32 // bits if words else per_byte if packed_in_kernel else 1
    rows, chunk, num_chunks = _tiling(group_size, lanes, tile)
    codes = torch.empty(num_groups * group_size // (per_byte if packed_in_kernel else 1), dtype=torch.uint8,
                        device=device)
    scale = torch.empty(num_groups, dtype=md, device=device)
    zero_point = torch.empty(num_groups, dtype=md, device=device)
    flags = torch.empty(num_groups, dtype=torch.uint8, device=device)
    if any_word is None:
        any_word = torch.empty(1, dtype=torch.int32, device=device)
    salt = current_device_salt() if config.stochastic else None
    kind = _MD_KIND[md]
    units_per_group = group_size * bits // 32 if words else group_size // per_byte
    quantize_kernel[(-(-num_groups // rows),)](
        flat.view(torch.int16) if flat.dtype == torch.bfloat16 else flat,
        codes, _md_arg(scale), _md_arg(zero_point), flags, any_word, any_word if salt is None else salt, numel,
        num_groups, group_size, units_per_group, _seed_arg(seed, salt) if config.stochastic else 0,
        _VALUE_MAX[flat.dtype], BITS=bits, LEVELS=(1 << bits) - 1, MD=kind, MD_SIGN=_MD_SIGN[kind], MD_INF=_MD_INF[kind],
        IN_BF16=flat.dtype == torch.bfloat16, STOCHASTIC=config.stochastic, PACKED=packed_in_kernel,
        ROWS=rows, NB=chunk // lanes, PB=lanes, NUM_CHUNKS=num_chunks, IDX64=_needs_int64(num_groups, group_size),
        WORD=words, SALTED=salt is not None, num_warps=warps, enable_fp_fusion=False,
    )
    if not packed_in_kernel:
        codes = pack_codes(codes, bits)
    return codes, scale, zero_point, flags


def quantize_triton(x: torch.Tensor, config: CompressionConfig, seed: int, *,
                    defer_exact: bool = False) -> PackedActivation:
    """`reference.quantize_ref` as one fused kernel. Same codes, same metadata, same exact groups.

    ``defer_exact``: return before the device has said whether some group must be kept exactly; the result
    is pending until `PackedActivation.resolve` (see `_FlagWords`).
    """
    group_size = resolve_group_size(x.shape, config)
    meta = PackedMeta(shape=x.shape, dtype=x.dtype, bits=config.bits, group_size=group_size)
    md = config.torch_metadata_dtype
    if x.numel() == 0:
        return PackedActivation(
            codes=x.new_empty(0, dtype=torch.uint8),
            scale=x.new_empty(0, dtype=md),
            zero_point=x.new_empty(0, dtype=md),
            exact_index=x.new_empty(0, dtype=torch.uint8),
            exact_values=x.new_empty((0, group_size)),
            meta=meta,
        )
    if x.requires_grad and torch.is_grad_enabled():  # direct callers (benchmarks) may pass such tensors
        x = x.detach()
    # The kernel reads flat indices from the data pointer: a contiguous tensor is used as it is (no view).
    flat = x if x.is_contiguous() else x.reshape(-1).contiguous()
    captured = _captured_signal.get()
    if captured is not None:  # inside a CUDA graph's capture: nothing may wait (`exact_groups_to`)
        codes, scale, zero_point, flags = launch_quantize(flat, config, seed, group_size, any_word=captured.word)
        empty = no_exact_groups(flat.device, narrowest_int_dtype(max(meta.num_groups - 1, 0)), flat.dtype, group_size)
        return PackedActivation(codes, scale, zero_point, *empty, meta)
    words = _flag_words(flat.device)
    if words is None:  # this device cannot write host memory: read the flags back at once
        codes, scale, zero_point, flags = launch_quantize(flat, config, seed, group_size)
        return PackedActivation(codes, scale, zero_point, *gather_exact(flags, flat, group_size), meta)
    signal = words.take()
    codes, scale, zero_point, flags = launch_quantize(flat, config, seed, group_size, any_word=signal.word)
    signal.record(flat.device)
    empty = no_exact_groups(flat.device, narrowest_int_dtype(max(meta.num_groups - 1, 0)), flat.dtype, group_size)
    packed = PackedActivation(codes, scale, zero_point, *empty, meta,
                              pending=PendingExact(flags, flat, flat._version, signal))
    return packed if defer_exact else packed.resolve()


class _Signal:
    """One quantize call's answer to "is some group exact?": its word of a `_FlagWords` and, on a GPU, an
    event recorded after the kernel."""

    __slots__ = ("words", "index", "ticket", "word", "event")

    def __init__(self, words: "_FlagWords", index: int, ticket: int):
        self.words, self.index, self.ticket = words, index, ticket
        self.word = words.views[index]
        self.event = None

    def record(self, device: torch.device) -> None:
        if device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(device))

    def wait_any(self) -> bool | None:
        if self.event is not None:
            self.event.synchronize()  # this kernel only: work queued after it keeps the device busy
        words = self.words
        if words.owner[self.index] != self.ticket:
            return None  # the word was handed out again since (thousands of calls later): unknown
        return bool(words.host[self.index])


class _CapturedSignal(NamedTuple):
    word: torch.Tensor  # (1,) int32 on the device, set to 1 by any quantize call with an exact group


_captured_signal: contextvars.ContextVar[_CapturedSignal | None] = contextvars.ContextVar(
    "tinykg_captured_signal", default=None)


@contextlib.contextmanager
def exact_groups_to(word: torch.Tensor) -> Iterator[None]:
    """Inside the block (the capture of a CUDA graph), each quantize call sets ``word`` ((1,) int32, on the
    device) to 1 if some group must be kept exactly, and its result keeps no exact group, without waiting.

    A capture may not wait for the device, and ``exact_index`` has a data-dependent size. Groups are kept
    exactly only where an activation is non-finite or its group's range passes the input dtype's largest
    value; a replay that met one computed with wrong values there. Whoever replays the graph must read
    ``word`` after each replay and refuse the step if it is set (`tinykg.train.graphed.GraphedStep` does).
    """
    if word.dtype != torch.int32 or word.numel() != 1:
        raise ValueError(f"the exact-group word is one int32, got {word.dtype} x {tuple(word.shape)}")
    token = _captured_signal.set(_CapturedSignal(word))
    try:
        yield
    finally:
        _captured_signal.reset(token)


class _FlagWords:
    """int32 words the quantize kernel sets when a call has an exact group, read by the host with no copy.

    The host must learn whether a call kept some group exactly (``exact_index`` has a data-dependent size).
    ``bool(flags.any())`` costs two host calls and a stream-wide sync per quantized tensor. On a GPU these
    words are pinned host memory, which unified addressing maps into the device's address space: the kernel
    writes the answer straight to the host, an event marks when, and `PackedActivation.resolve` waits for
    that event only when the packed copy is saved, with the op's remaining work queued behind it. No copy,
    no extra launch, no stream-wide sync. (On an H200 this left the 2-bit step times unchanged within the
    noise, session 9: those steps are bound by host calls, not by the syncs; see benchmarks/RESULTS.md.)

    Words are handed out round robin; each remembers its last taker, so a pending answer whose word was
    taken again (only after ``size`` more calls) reads as unknown and the flags are read instead.
    """

    def __init__(self, device: torch.device, size: int = 4096):
        self.words = torch.zeros(size, dtype=torch.int32, pin_memory=device.type == "cuda")
        self.host = self.words.numpy()
        self.views = self.words.split(1)  # (1,) views made once: a view costs a GPU host a few us
        self.owner = [0] * size
        self.counter = itertools.count(1)

    def take(self) -> _Signal:
        ticket = next(self.counter)
        index = ticket % len(self.owner)
        self.owner[index] = ticket
        self.host[index] = 0
        return _Signal(self, index, ticket)


# device type -> words, or None where the device cannot take host memory (see `_flag_words`)
_FLAG_WORDS: dict[str, _FlagWords | None] = {}


def _flag_words(device: torch.device) -> _FlagWords | None:
    """The words for ``device``'s kind. On a GPU, the first use checks that a kernel can write them (mapped
    pinned memory needs unified addressing; Triton checks every pointer it is given); where it cannot, the
    flags are read back at once, with one log line."""
    words = _FLAG_WORDS.get(device.type, False)
    if words is not False:
        return words
    words = _FlagWords(device)
    if device.type == "cuda":
        try:
            _probe_flag_words(words, device)
        except Exception as err:  # a pointer Triton rejects, or a write that does not arrive
            log.warning("tinykg: the quantize kernel cannot write pinned host memory on %s (%s); reading "
                        "exact-group flags back with a sync instead", device, err)
            words = None
    _FLAG_WORDS[device.type] = words
    return words


def _probe_flag_words(words: _FlagWords, device: torch.device) -> None:
    """Quantize a group that must be kept exactly (a NaN) and check that its word says so."""
    probe = torch.full((32,), float("nan"), device=device)
    signal = words.take()
    launch_quantize(probe, CompressionConfig(bits=8, group_size=32), 0, 32, any_word=signal.word)
    signal.record(device)
    if signal.wait_any() is not True:
        raise RuntimeError("the kernel's write to pinned memory did not arrive")


def launch_dequantize(packed: PackedActivation) -> torch.Tensor:
    """Run the dequantize kernel: the original shape and dtype, exact groups not yet restored."""
    dequantize_kernel = _get_kernels().dequantize
    meta = packed.meta
    out = torch.empty(meta.shape, dtype=meta.dtype, device=packed.device)
    per_byte = 8 // meta.bits
    packed_groups = meta.group_size % per_byte == 0
    lanes = per_byte if packed_groups else 1
    rows, chunk, num_chunks = _tiling(meta.group_size, lanes, _TILE_D)
    dequantize_kernel[(-(-meta.num_groups // rows),)](
        packed.codes, _md_arg(packed.scale), _md_arg(packed.zero_point),
        out.view(torch.int16) if meta.dtype == torch.bfloat16 else out,
        meta.numel, meta.num_groups, meta.group_size, meta.group_size // per_byte,
        BITS=meta.bits, LEVELS=(1 << meta.bits) - 1, MD=_MD_KIND[packed.scale.dtype],
        OUT_KIND=_OUT_KIND[meta.dtype], PACKED=packed_groups, ROWS=rows, NB=chunk // lanes, PB=lanes,
        NUM_CHUNKS=num_chunks, IDX64=_needs_int64(meta.num_groups, meta.group_size), num_warps=_WARPS_D,
        enable_fp_fusion=False,
    )
    return out


def dequantize_triton(packed: PackedActivation) -> torch.Tensor:
    """`reference.dequantize_ref` as one kernel (bitwise identical output)."""
    meta = packed.meta
    if meta.numel == 0:
        return torch.empty(meta.shape, dtype=meta.dtype, device=packed.device)
    out = launch_dequantize(packed)
    if packed.exact_index.numel():
        scatter_exact(out.view(-1), packed)
    return out


# Mask kernels: output bytes per program (pack), mask elements per program (unpack).
_MASK_BYTES = 1024
_MASK_ELEMENTS = 4096


def pack_mask_triton(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor (any shape, read in row-major order) packed 8 per byte: (ceil(numel / 8),) uint8, the
    layout of ``pack_codes(mask, 1)``. One launch and one allocation (the reference, `masks.pack_mask_ref`,
    makes 6 torch calls, 3 of them launches)."""
    pack_mask_kernel = _get_kernels().pack_mask
    if not mask.is_contiguous():
        mask = mask.reshape(-1)
    numel = mask.numel()
    num_bytes = -(-numel // 8)
    out = torch.empty(num_bytes, dtype=torch.uint8, device=mask.device)
    if num_bytes:
        pack_mask_kernel[(-(-num_bytes // _MASK_BYTES),)](
            mask, out, numel, num_bytes, BLOCK=_MASK_BYTES, IDX64=numel + 8 * _MASK_BYTES >= 2**31)
    return out


def unpack_mask_triton(bits: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of `pack_mask_triton`: a bool tensor of ``shape``."""
    unpack_mask_kernel = _get_kernels().unpack_mask
    out = torch.empty(shape, dtype=torch.bool, device=bits.device)
    numel = out.numel()
    if numel:
        unpack_mask_kernel[(-(-numel // _MASK_ELEMENTS),)](
            bits, out, numel, BLOCK=_MASK_ELEMENTS, IDX64=numel + _MASK_ELEMENTS >= 2**31)
    return out


def pack_greater_triton(x: torch.Tensor, threshold: float, or_equal: bool) -> torch.Tensor:
    """`masks.pack_greater` of a contiguous fp32 tensor: one launch and one allocation."""
    numel = x.numel()
    num_bytes = -(-numel // 8)
    out = torch.empty(num_bytes, dtype=torch.uint8, device=x.device)
    if num_bytes:
        _get_kernels().pack_greater[(-(-num_bytes // _MASK_BYTES),)](
            x, out, numel, num_bytes, float(threshold), OR_EQUAL=bool(or_equal), BLOCK=_MASK_BYTES,
            IDX64=numel + 8 * _MASK_BYTES >= 2**31)
    return out


def keep_bits_triton(numel: int, p: float, seed: int, device: torch.device) -> torch.Tensor:
    """`masks.keep_bits`: one launch and one allocation (the reference builds the noise in ~10 torch ops)."""
    num_bytes = -(-numel // 8)
    out = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    if num_bytes:
        salt = current_device_salt()
        _get_kernels().keep_bits[(-(-num_bytes // _MASK_BYTES),)](
            out, numel, num_bytes, _seed_arg(seed, salt), float(p), out if salt is None else salt,
            BLOCK=_MASK_BYTES, IDX64=numel + 8 * _MASK_BYTES >= 2**31, SALTED=salt is not None)
    return out


def scale_by_mask_triton(bits: torch.Tensor, g: torch.Tensor, on: float, off: float, out: torch.Tensor) -> torch.Tensor:
    """`masks.scale_by_mask` of contiguous fp32 ``g`` into ``out`` (which may be ``g``): one launch."""
    numel = g.numel()
    if numel:
        _get_kernels().scale_by_mask[(-(-numel // _MASK_ELEMENTS),)](
            bits, g, out, numel, float(on), float(off), BLOCK=_MASK_ELEMENTS, IDX64=numel + _MASK_ELEMENTS >= 2**31)
    return out


def _register() -> None:
    from .config import Backend
    from .quantize import BackendImpl, register_backend

    register_backend(Backend.TRITON, BackendImpl(quantize_triton, dequantize_triton, available,
                                                 deferred_quantize=partial(quantize_triton, defer_exact=True),
                                                 reads_device_salt=True))


_register()
