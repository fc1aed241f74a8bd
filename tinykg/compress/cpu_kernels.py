"""Fused CPU backend (``Backend.CPU``): numba kernels that reproduce `tinykg.compress.reference` code for code.

Why numba: it installs from PyPI as a wheel on every common platform (no compiler on the user's machine,
unlike a C++ extension), compiles to vectorized native code that releases the GIL (``nogil``), and, unlike
``torch.compile``, its output does not depend on the PyTorch version's fusion heuristics (fusing ``a*b + c``
into an FMA would change the codes). Without ``fastmath`` LLVM never contracts or reorders fp32 arithmetic,
so every fp32 operation rounds exactly as the reference's separate tensor ops do.

Threads: the kernels are serial functions over a range of tasks. Tensors below ``_SERIAL_BELOW`` (8M)
elements run on the calling thread: in training the kernels run right after PyTorch ops, whose OpenMP
threads spin-wait on the other cores for a while, and on this 2-core machine a second thread gained
nothing there up to that size. A larger tensor is split into pieces, taken from a shared counter by the
calling thread and a small pool of Python threads (the kernels release the GIL), ``torch.get_num_threads()``
threads in all, so ``torch.set_num_threads`` governs tinykg too. Why not numba's ``parallel=True``: its OpenMP runtime is a
second one beside PyTorch's, and its idle threads spin-wait after each kernel. Measured on this project's
2-core CI machine under load, that spinning burned 100x the CPU time of the fp32 step of KGAT on the toy
graph (511 ms vs 3 ms of process CPU time per step; 8 ms with idle threads that block instead).

quantize, one pass over memory. Threads take contiguous runs of "chunks"; a chunk is a run of whole groups
whose codes start and end on a byte boundary, about ``_CHUNK_ELEMENTS`` elements (a single group when it is
larger). Per group, while it sits in L1:

1. min / max over the fp32 bit patterns mapped to order-preserving int32 keys. Integer min/max reductions
   vectorize without fast-math, and NaN / +-inf show up as keys beyond those of +-inf, so the same
   reduction detects non-finite groups (the reference's ``amin``/``amax`` propagate NaN into an exact group);
2. zero-point / scale exactly as `reference.group_metadata`: fp16 and bf16 rounding and ``nextafter`` are
   done on bit patterns (round-to-nearest-even, subnormals and overflow to inf included);
3. t = (x - z) * (1/s), plus the counter-based noise u_i of `tinykg.compress.rng` (its hash on 32-bit lanes,
   exact), floor, clamp, into a per-thread scratch of codes; then the scratch is packed into bytes.

dequantize, one pass: unpack the bytes of each group and write ``code * s + z`` in fp32.

What stays in PyTorch (cheap or rare): fp16/bf16 inputs are widened to fp32 first and outputs narrowed after
(the benchmarked fp32 path has no extra pass), and exact groups are gathered / scattered by index after the
kernel flags them. Metadata needs no pass of its own: quantize writes the fp16/bf16/fp32 bit patterns straight
into the metadata tensors, and dequantize widens them per group inside the kernel.

Compilation: numba compiles one specialization per kernel on first use (a few seconds) and caches it on disk
(``cache=True``, in ``__pycache__``), so later processes load it in well under a second. See
`tinykg.compress.cpu_kernels.available` for how ``Backend.AUTO`` uses this backend.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .config import CompressionConfig
from .packed import PackedActivation, PackedMeta, gather_exact, narrowest_int_dtype, no_exact_groups, scatter_exact
from .reference import resolve_group_size
from .rng import HASH_MUL1, HASH_MUL2, NOISE_SCALE, NOISE_SHIFT, seed_key

log = logging.getLogger("tinykg.compress")

_MD_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Below this many elements the kernels run on the calling thread alone. In training they run right after
# PyTorch ops, whose OpenMP threads then spin-wait for the next op on the other cores: a worker woken then
# shares a core with a spinning thread. Measured on this 2-core machine with torch's 2 threads, a 2-bit
# quantize right after a matmul took as long on two threads as on one up to 8M elements (1M: 1.7 against
# 1.5 ms; 8M: 7.3 against 7.9 ms), and inside KGAT's step on Last.FM the serial kernels cut the quantize
# and dequantize time from 8.0 to 6.3 ms per step.
_SERIAL_BELOW = 1 << 23
_PIECES_PER_THREAD = 4  # `run_tasks`
# Elements per chunk of quantize (at least one run of groups that fills whole bytes): one packing loop per
# chunk rather than per group (2 bits, groups of 256, one thread: 0.80 -> 0.75 ns per element; groups of 64:
# 1.50 -> 1.26 ns).
_CHUNK_ELEMENTS = 4096
_reported_missing = False
_numba_ok: bool | None = None


def numba_installed() -> bool:
    """True when numba imports (checked once; an install that fails to import counts as missing)."""
    global _numba_ok
    if _numba_ok is None:
        try:
            import numba  # noqa: F401

            _numba_ok = True
        except Exception:
            _numba_ok = False
    return _numba_ok


def available(device: torch.device) -> bool:
    """True on CPU tensors when numba is installed. Never raises.

    ``Backend.AUTO`` on CPU takes this backend whenever it is available, whatever the tensor size: once
    compiled (the first call in a fresh install takes a few seconds; later processes load numba's disk
    cache in a fraction of a second) a call costs microseconds, far less than the dozen tensor ops of the
    reference even for tiny tensors. Tensors under ``_SERIAL_BELOW`` elements run on the calling thread,
    larger ones over ``torch.get_num_threads()`` threads (`run_tasks`); the saved-tensor hook already leaves tensors below
    ``CompressionConfig.min_numel`` uncompressed. Without numba, AUTO uses the reference and says so once
    in the log.
    """
    global _reported_missing
    if torch.device(device).type != "cpu":
        return False
    ok = numba_installed()
    if not ok and not _reported_missing:
        _reported_missing = True
        log.info("tinykg: numba is not installed; the fused CPU backend is off (pip install numba)")
    return ok


_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _forget_pool_in_child() -> None:
    # A forked child has none of the parent's threads: it must build its own pool.
    global _pool, _pool_workers, _pool_lock
    _pool, _pool_workers, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _worker_pool() -> ThreadPoolExecutor:
    """The shared pool of ``torch.get_num_threads() - 1`` workers (the caller is the other thread), rebuilt
    when ``torch.set_num_threads`` changes that number. The old pool is not shut down: a concurrent caller
    may still be submitting to it; its idle threads exit once it is garbage-collected."""
    global _pool, _pool_workers
    workers = max(1, torch.get_num_threads() - 1)
    with _pool_lock:
        if _pool is None or _pool_workers != workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinykg-cpu")
            _pool_workers = workers
        return _pool


def num_threads(numel: int) -> int:
    """Threads a kernel over ``numel`` elements uses: 1 below ``_SERIAL_BELOW``, else torch's thread count."""
    return 1 if numel < _SERIAL_BELOW else max(1, torch.get_num_threads())


class _Pieces:
    """The pieces of one `run_tasks` call: handed out by a counter (``next`` on an ``itertools.count`` is
    atomic under the GIL), counted when done."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.next = itertools.count()
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.done = 0
        self.total = 0
        self.error: BaseException | None = None

    def drain(self, kernel, args: tuple) -> None:
        """Run pieces until none is left (the calling thread and the workers alike)."""
        while (piece := next(self.next)) < self.count:
            result = 0
            try:
                result = kernel(piece, self.count, *args)
            except BaseException as error:  # re-raised on the calling thread
                self.error = error
            with self.lock:
                self.total += result
                self.done += 1
                if self.done == self.count:
                    self.all_done.set()


def run_tasks(kernel, num_tasks: int, *args) -> int:
    """``kernel(task, pieces, *args)`` for every piece on up to ``num_tasks`` threads: the calling thread
    and ``num_tasks - 1`` pool workers take pieces from a shared counter until none is left, then the
    caller waits for the pieces still running. Returns the sum of the pieces' results (the kernels return
    counts). The kernels release the GIL.

    Why pieces (``_PIECES_PER_THREAD`` per thread) rather than one range per thread: right after a PyTorch
    op, its OpenMP threads spin-wait for the next one, and a worker woken then may not get a core for a
    while. With one range each, the caller finished its half and waited for the worker's: on this 2-core
    machine a 2-bit quantize of (11238, 64) inside KGAT's step took 722 us on two threads against 637 us on
    one. With pieces, a late worker takes fewer of them.
    """
    if num_tasks <= 1:
        return kernel(0, 1, *args)
    pool = _worker_pool()
    pieces = _Pieces(num_tasks * _PIECES_PER_THREAD)
    for _ in range(num_tasks - 1):
        pool.submit(pieces.drain, kernel, args)
    pieces.drain(kernel, args)
    pieces.all_done.wait()
    if pieces.error is not None:
        raise pieces.error
    return pieces.total


_compiled = False


def _get_kernels():
    """(quantize_task, dequantize_task), compiled on first use or loaded from numba's disk cache.

    The plain functions below are decorated here and bound to their own names in this module (numba
    resolves callees through module globals, and only module-level functions hit its disk cache), so
    importing tinykg does not import numba.
    """
    global _compiled, np, f32, i32, i64, ir, types, carray
    if not _compiled:
        import numpy
        from llvmlite import ir as llvm_ir
        from numba import carray as numba_carray, njit, types as numba_types
        from numba.extending import intrinsic

        np, f32, i32, i64 = numpy, numpy.float32, numpy.int32, numpy.int64
        ir, types, carray = llvm_ir, numba_types, numba_carray
        module = globals()
        for name, how in _DECORATIONS.items():
            module[name] = intrinsic(_RAW[name]) if how == "intrinsic" else njit(**how)(_RAW[name])
        _compiled = True
    return quantize_entry, dequantize_entry


# ---------------------------------------------------------------------------------------------------------
# Kernel bodies: plain Python, compiled by `_get_kernels`. Scalars are int64 holding 32-bit patterns
# (mixing numba's uint64 with int64 would promote to float64); every fp32 operation is wrapped in f32()
# so that nothing is silently widened to float64.

# Bound by _get_kernels: numpy (and its float32 / int32 / int64 scalar types), llvmlite.ir, numba.types, numba.carray.
np = f32 = i32 = i64 = ir = types = carray = None
KEY_POS_INF = 0x7F800000  # order-preserving key of +inf; NaN keys lie beyond +-inf
KEY_NEG_INF = (0xFF800000 - 2**32) ^ 0x7FFFFFFF  # key of -inf (bits 0xFF800000 as int32)


def f32_to_bits(typingctx, value):
    """Bit pattern of a float32 as uint32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


def bits_to_f32(typingctx, value):
    """float32 with the given uint32 bit pattern."""
    if value != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


def _pointer_intrinsic(element):
    """An intrinsic turning an int64 address into a typed pointer (``element``: a numba.types name)."""

    def as_pointer(typingctx, address):
        if address != types.int64:
            return None
        pointer = types.CPointer(getattr(types, element))

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(types.int64), codegen

    as_pointer.__name__ = as_pointer.__qualname__ = f"ptr_{element}"
    return as_pointer


ptr_f32 = _pointer_intrinsic("float32")
ptr_i32 = _pointer_intrinsic("int32")
ptr_i16 = _pointer_intrinsic("int16")
ptr_u8 = _pointer_intrinsic("uint8")

# Scalars below are int64 holding 32-bit patterns (mixing numba's uint64 and int64 promotes to float).


def as_f32(bits):
    return bits_to_f32(np.uint32(bits & 0xFFFFFFFF))


def key_to_float(key):
    """Inverse of the order-preserving map bits -> key (an involution on int32)."""
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return as_f32(i64(bits) & 0xFFFFFFFF)


def f32_to_f16_bits(value):
    """IEEE half bit pattern of ``value`` rounded to nearest even (overflow -> inf, subnormals kept)."""
    b = i64(f32_to_bits(value))
    sign = (b >> 16) & 0x8000
    a = b & 0x7FFFFFFF
    if a > 0x7F800000:
        return sign | 0x7E00
    if a >= 0x477FF000:  # >= 65520 rounds to inf
        return sign | 0x7C00
    if a >= 0x38800000:  # normal half: rebias the exponent, round away 13 mantissa bits
        r = a - 0x38000000
        r = r + 0xFFF + ((r >> 13) & 1)
        return sign | (r >> 13)
    e = a >> 23
    if e < 102:  # below half the smallest subnormal
        return sign
    m = (a & 0x7FFFFF) | 0x800000
    shift = 126 - e
    h = m >> shift
    rem = m & ((i64(1) << shift) - 1)
    half = i64(1) << (shift - 1)
    if rem > half or (rem == half and (h & 1) == 1):
        h += 1
    return sign | h


def f16_bits_to_f32(h):
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        return as_f32(sign | i64(f32_to_bits(f32(m) * f32(2.0**-24))))
    if e == 31:
        return as_f32(sign | 0x7F800000 | (m << 13))
    return as_f32(sign | ((e + 112) << 23) | (m << 13))


def md_round(value, kind):
    """Bits of fp32 ``value`` rounded to nearest even in the metadata dtype (0 fp32, 1 fp16, 2 bf16)."""
    if kind == 0:
        return i64(f32_to_bits(value))
    if kind == 1:
        return f32_to_f16_bits(value)
    b = i64(f32_to_bits(value))
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


def md_value(bits, kind):
    if kind == 0:
        return as_f32(bits)
    if kind == 1:
        return f16_bits_to_f32(bits)
    return as_f32(bits << 16)


def md_next(bits, kind, up):
    """``torch.nextafter`` toward +inf (``up``) or -inf on a metadata bit pattern (finite or +inf)."""
    sign_bit = i64(0x80000000) if kind == 0 else i64(0x8000)
    inf_bits = i64(0x7F800000) if kind == 0 else (i64(0x7C00) if kind == 1 else i64(0x7F80))
    negative = (bits & sign_bit) != 0
    if (bits & (sign_bit - 1)) == 0:  # +-0
        return i64(1) if up else sign_bit | 1
    if up:
        if bits == inf_bits:
            return bits
        return bits - 1 if negative else bits + 1
    return bits + 1 if negative else bits - 1


def noise_bits(typingctx, index, seed_mix):
    """``hash32((index mod 2**32) ^ seed_mix) >> 8`` of `tinykg.compress.rng` as an int32 in [0, 2**24).

    Written as LLVM IR on 32-bit integers: numba types every integer operation as 64-bit, and LLVM then
    vectorized the hash with 64-bit multiplies over 8 lanes (``vpmullq``) instead of 32-bit ones over 16
    (``vpmulld``); the noise was 0.37 of the 0.45 ns per element of the rounding loop on this machine's
    AVX-512 cores, and this form brings the loop to 0.32 ns. 32-bit wrap-around is the reference's
    ``& MASK32``, so the values are the same.
    """
    if index != types.int64 or seed_mix != types.int64:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)

        def const(value):
            return ir.Constant(i32, value)

        h = builder.xor(builder.trunc(args[0], i32), builder.trunc(args[1], i32))
        h = builder.xor(h, builder.lshr(h, const(16)))
        h = builder.mul(h, const(HASH_MUL1))
        h = builder.xor(h, builder.lshr(h, const(15)))
        h = builder.mul(h, const(HASH_MUL2))
        h = builder.xor(h, builder.lshr(h, const(16)))
        return builder.lshr(h, const(NOISE_SHIFT))

    return types.int32(types.int64, types.int64), codegen


def noise(index, seed_mix):
    """u_i of `tinykg.compress.rng` for the padded flat index ``index``: exact, 24 bits times 2**-24."""
    return f32(f32(noise_bits(index, seed_mix)) * f32(NOISE_SCALE))


def code_of(v, zf, inv, offset, top):
    """clamp(floor((v - z) * inv + offset), 0, top) as the reference computes it, in fp32."""
    q = np.floor(f32(f32(f32(v - zf) * inv) + offset))
    if not q >= 0:  # also NaN (0 * inf when 1/s overflows), which the reference casts to 0
        q = f32(0.0)
    if q > top:
        q = top
    return np.uint8(q)


def quantize_group(xs, ks, G, g_flat, levels_i, kind, value_max, stochastic, seed_mix, codes, scale_out, zp_out,
                   flags_out, g):
    """One group: its codes into ``codes`` (length G), its metadata and (when ``flags_out`` is not empty)
    exact flag at ``g``. Returns 1 when the group must be kept exactly, else 0.

    ``xs``, ``ks``: the group's real elements as fp32 and as int32 bit patterns (1 to G of them).
    ``value_max``: the input dtype's largest finite value; every stored level must lie within +-value_max.
    Loops index slices from 0 so that numba drops its negative-index checks and LLVM vectorizes them.
    """
    n_real = xs.shape[0]
    # 1. min / max (and non-finite detection) on order-preserving int32 keys
    # (int32 throughout: with int64 keys LLVM vectorized 8 lanes instead of 16, at twice the time)
    kmin = i32(0x7FFFFFFF)
    kmax = i32(-0x80000000)
    for j in range(n_real):
        k = ks[j]
        k = i32(k ^ ((k >> i32(31)) & i32(0x7FFFFFFF)))
        kmin = min(kmin, k)
        kmax = max(kmax, k)
    nonfinite = kmin <= KEY_NEG_INF or kmax >= KEY_POS_INF
    mn = key_to_float(i64(kmin))
    mx = key_to_float(i64(kmax))
    levels = f32(levels_i)

    # 2. metadata, as reference.group_metadata
    zb = md_round(mn, kind)
    zf = md_value(zb, kind)
    if zf > mn:
        zb = md_next(zb, kind, False)
        zf = md_value(zb, kind)
    constant = mx == mn
    sb = md_round(f32(f32(mx - zf) / levels), kind)
    if constant and zf == mn:
        sb = i64(0)
    for _ in range(4):
        sf = md_value(sb, kind)
        if f32(f32(sf * levels) + zf) < mx:
            sb = md_next(sb, kind, True)
    sf = md_value(sb, kind)
    top = f32(f32(sf * levels) + zf)
    covered = top >= mx
    in_range = top <= value_max and zf >= -value_max
    exact = (nonfinite or not (np.isfinite(zf) and np.isfinite(sf) and covered and in_range)
             or (constant and zf != mn))
    if exact:
        scale_out[g] = 0
        zp_out[g] = 0
        if flags_out.shape[0]:
            flags_out[g] = 1
        codes[:] = 0
        return 1
    scale_out[g] = sb
    zp_out[g] = zb
    if flags_out.shape[0]:
        flags_out[g] = 0
    inv = f32(f32(1.0) / sf) if sf > 0 else f32(0.0)

    # 3. round (stochastically) and clamp; the padding repeats the final element. Separate loops
    # keep the hot one branch-free so that LLVM vectorizes it.
    top = f32(levels_i)
    last = xs[n_real - 1]
    if stochastic:
        for j in range(n_real):
            codes[j] = code_of(xs[j], zf, inv, noise(g_flat + j, seed_mix), top)
        for j in range(n_real, G):
            codes[j] = code_of(last, zf, inv, noise(g_flat + j, seed_mix), top)
    else:
        for j in range(n_real):
            codes[j] = code_of(xs[j], zf, inv, f32(0.5), top)
        for j in range(n_real, G):
            codes[j] = code_of(last, zf, inv, f32(0.5), top)
    return 0


def pack_scratch(scratch, n, bits, codes, byte_off):
    """Pack ``scratch[:n]`` little-endian into ``codes[byte_off:]``, zero-padding the last byte."""
    if bits == 8:
        for j in range(n):
            codes[byte_off + j] = scratch[j]
        return
    per_byte = 8 // bits
    full = n // per_byte
    if bits == 1:
        for b in range(full):
            s = b * 8
            codes[byte_off + b] = (scratch[s] | (scratch[s + 1] << 1) | (scratch[s + 2] << 2)
                                   | (scratch[s + 3] << 3) | (scratch[s + 4] << 4) | (scratch[s + 5] << 5)
                                   | (scratch[s + 6] << 6) | (scratch[s + 7] << 7))
    elif bits == 2:
        for b in range(full):
            s = b * 4
            codes[byte_off + b] = scratch[s] | (scratch[s + 1] << 2) | (scratch[s + 2] << 4) | (scratch[s + 3] << 6)
    else:
        for b in range(full):
            s = b * 2
            codes[byte_off + b] = scratch[s] | (scratch[s + 1] << 4)
    rest = n - full * per_byte
    if rest:
        v = 0
        for k in range(rest):
            v |= scratch[full * per_byte + k] << (k * bits)
        codes[byte_off + full] = v


def quantize_task(task, num_tasks, x, keys, numel, G, num_groups, groups_per_chunk, bits, kind, value_max,
                  stochastic, seed_mix, codes, scale_out, zp_out, flags_out):
    """Task ``task`` of ``num_tasks``: a contiguous run of chunks, quantized and packed. Returns the number
    of its groups to keep exactly."""
    num_chunks = (num_groups + groups_per_chunk - 1) // groups_per_chunk
    num_exact = 0
    levels_i = (1 << bits) - 1
    c0 = task * num_chunks // num_tasks
    c1 = (task + 1) * num_chunks // num_tasks
    scratch = np.empty(groups_per_chunk * G, np.uint8)
    for c in range(c0, c1):
        g0 = c * groups_per_chunk
        g1 = min(g0 + groups_per_chunk, num_groups)
        for g in range(g0, g1):
            start = g * G
            end = min(start + G, numel)
            off = (g - g0) * G
            num_exact += quantize_group(x[start:end], keys[start:end], G, start, levels_i, kind, value_max,
                                        stochastic, seed_mix, scratch[off:off + G], scale_out, zp_out,
                                        flags_out, g)
        pack_scratch(scratch, (g1 - g0) * G, bits, codes, (g0 * G * bits) // 8)
    return num_exact


def quantize_entry(task, num_tasks, x_addr, numel, G, num_groups, groups_per_chunk, bits, kind, value_max,
                   stochastic, seed_mix, codes_addr, num_bytes, scale_addr, zp_addr, flags_addr):
    """`quantize_task` on raw addresses of contiguous buffers: fp32 input (numel), uint8 codes (num_bytes),
    metadata bit patterns (num_groups; int32 for fp32 metadata, else int16) and, unless ``flags_addr``
    is 0, uint8 exact flags (num_groups).

    Why addresses: numba's dispatcher checks every array argument's type on each call; with four arrays
    that took ~3.5 us, plus ~0.5 us per tensor-to-numpy conversion, against ~0.5 us for this call and
    0.06 us per ``data_ptr()``. Small saved tensors are quantized in the tens of microseconds, so this is
    most of the cost (`benchmarks/bench_step.py`, KGCN at batch 128). The callers own and keep the
    buffers alive for the call.
    """
    x = carray(ptr_f32(x_addr), numel)
    keys = carray(ptr_i32(x_addr), numel)
    codes = carray(ptr_u8(codes_addr), num_bytes)
    flags = carray(ptr_u8(flags_addr), num_groups if flags_addr != 0 else 0)
    if kind == 0:
        return quantize_task(task, num_tasks, x, keys, numel, G, num_groups, groups_per_chunk, bits, kind,
                             value_max, stochastic, seed_mix, codes, carray(ptr_i32(scale_addr), num_groups),
                             carray(ptr_i32(zp_addr), num_groups), flags)
    return quantize_task(task, num_tasks, x, keys, numel, G, num_groups, groups_per_chunk, bits, kind,
                         value_max, stochastic, seed_mix, codes, carray(ptr_i16(scale_addr), num_groups),
                         carray(ptr_i16(zp_addr), num_groups), flags)


def dequantize_group(cs, s, z, bits, os):
    """``os[j] = code_j * s + z`` in fp32 for the codes packed in ``cs`` (which start on a byte).

    Below 8 bits the loop runs over whole bytes, writing all of a byte's codes (unrolled), then over the
    codes of a final partial byte: measured 2.2x faster at 2 bits than one iteration per code (whose
    byte index and shift vary per lane). The arithmetic per code is the same, so is the output.
    """
    n = os.shape[0]
    if bits == 8:
        for j in range(n):
            os[j] = f32(f32(cs[j]) * s) + z
        return
    mask = (1 << bits) - 1
    per_byte = 8 // bits
    full = n // per_byte
    if bits == 4:
        for b in range(full):
            v = cs[b]
            os[2 * b] = f32(f32(v & 15) * s) + z
            os[2 * b + 1] = f32(f32((v >> 4) & 15) * s) + z
    elif bits == 2:
        for b in range(full):
            v = cs[b]
            os[4 * b] = f32(f32(v & 3) * s) + z
            os[4 * b + 1] = f32(f32((v >> 2) & 3) * s) + z
            os[4 * b + 2] = f32(f32((v >> 4) & 3) * s) + z
            os[4 * b + 3] = f32(f32((v >> 6) & 3) * s) + z
    else:
        for b in range(full):
            v = cs[b]
            os[8 * b] = f32(f32(v & 1) * s) + z
            os[8 * b + 1] = f32(f32((v >> 1) & 1) * s) + z
            os[8 * b + 2] = f32(f32((v >> 2) & 1) * s) + z
            os[8 * b + 3] = f32(f32((v >> 3) & 1) * s) + z
            os[8 * b + 4] = f32(f32((v >> 4) & 1) * s) + z
            os[8 * b + 5] = f32(f32((v >> 5) & 1) * s) + z
            os[8 * b + 6] = f32(f32((v >> 6) & 1) * s) + z
            os[8 * b + 7] = f32(f32((v >> 7) & 1) * s) + z
    for j in range(full * per_byte, n):
        os[j] = f32(f32((cs[j // per_byte] >> ((j % per_byte) * bits)) & mask) * s) + z


def dequantize_task(task, num_tasks, codes, scale_bits, zp_bits, kind, numel, G, num_groups, bits, out):
    """Task ``task`` of ``num_tasks``: a contiguous run of groups, unpacked and dequantized.

    ``scale_bits``, ``zp_bits``: the metadata's bit patterns (int32 for fp32, int16 for fp16 / bf16).
    """
    mask = (1 << bits) - 1
    width = i64(0xFFFFFFFF) if kind == 0 else i64(0xFFFF)
    g0 = task * num_groups // num_tasks
    g1 = (task + 1) * num_groups // num_tasks
    for g in range(g0, g1):
        start = g * G
        end = min(start + G, numel)
        s = md_value(i64(scale_bits[g]) & width, kind)
        z = md_value(i64(zp_bits[g]) & width, kind)
        if (start * bits) % 8 == 0:
            b0 = (start * bits) // 8
            b1 = (end * bits + 7) // 8
            dequantize_group(codes[b0:b1], s, z, bits, out[start:end])
        else:  # a group that does not start on a byte boundary (tiny or odd "row" groups)
            for i in range(start, end):
                pos = i * bits
                out[i] = f32(f32((codes[pos >> 3] >> (pos & 7)) & mask) * s) + z
    return 0


def dequantize_entry(task, num_tasks, codes_addr, num_bytes, scale_addr, zp_addr, kind, numel, G, num_groups,
                     bits, out_addr):
    """`dequantize_task` on raw addresses of contiguous buffers (see `quantize_entry` for why)."""
    codes = carray(ptr_u8(codes_addr), num_bytes)
    out = carray(ptr_f32(out_addr), numel)
    if kind == 0:
        return dequantize_task(task, num_tasks, codes, carray(ptr_i32(scale_addr), num_groups),
                               carray(ptr_i32(zp_addr), num_groups), kind, numel, G, num_groups, bits, out)
    return dequantize_task(task, num_tasks, codes, carray(ptr_i16(scale_addr), num_groups),
                           carray(ptr_i16(zp_addr), num_groups), kind, numel, G, num_groups, bits, out)


# 1-bit masks (`tinykg.compress.masks`): bit k of byte b is element 8b + k, the last byte's tail zero.
# Tasks take contiguous runs of whole bytes. Each loop writes a byte's eight elements unrolled, as
# `dequantize_group` does.


def byte_range(task, num_tasks, numel):
    """Task ``task``'s bytes [b0, b1) of the mask of ``numel`` elements, and ``full``: its bytes below it
    whose eight elements all exist."""
    num_bytes = (numel + 7) // 8
    b0 = task * num_bytes // num_tasks
    b1 = (task + 1) * num_bytes // num_tasks
    return b0, b1, max(b0, min(b1, numel // 8))


def pack_greater_task(task, num_tasks, x, numel, threshold, or_equal, bits):
    """Bits of ``x > threshold`` (``>=`` when ``or_equal``; the threshold compared in fp32, as PyTorch's
    comparison of an fp32 tensor with a Python float). NaN is never greater."""
    b0, b1, full = byte_range(task, num_tasks, numel)
    t = f32(threshold)
    if or_equal:
        for b in range(b0, full):
            v = 0
            for k in range(8):
                v |= (1 if x[8 * b + k] >= t else 0) << k
            bits[b] = v
    else:
        for b in range(b0, full):
            v = 0
            for k in range(8):
                v |= (1 if x[8 * b + k] > t else 0) << k
            bits[b] = v
    for b in range(full, b1):
        v = 0
        for i in range(8 * b, numel):
            hit = x[i] >= t if or_equal else x[i] > t
            v |= (1 if hit else 0) << (i - 8 * b)
        bits[b] = v
    return 0


def keep_bits_task(task, num_tasks, numel, seed_mix, p, bits):
    """Bits of ``u_i >= p``: u_i the noise of `tinykg.compress.rng` (dropout's keep-mask)."""
    b0, b1, full = byte_range(task, num_tasks, numel)
    t = f32(p)
    for b in range(b0, full):
        v = 0
        for k in range(8):
            v |= (1 if noise(8 * b + k, seed_mix) >= t else 0) << k
        bits[b] = v
    for b in range(full, b1):
        v = 0
        for i in range(8 * b, numel):
            v |= (1 if noise(i, seed_mix) >= t else 0) << (i - 8 * b)
        bits[b] = v
    return 0


def scale_by_mask_task(task, num_tasks, bits, g, numel, on, off, out):
    """``out[i] = g[i] * (on if bit i else off)`` in fp32 (``out`` may be ``g``)."""
    b0, b1, full = byte_range(task, num_tasks, numel)
    a = f32(on)
    c = f32(off)
    for b in range(b0, full):
        v = bits[b]
        for k in range(8):
            out[8 * b + k] = g[8 * b + k] * (a if (v >> k) & 1 else c)
    for b in range(full, b1):
        v = bits[b]
        for i in range(8 * b, numel):
            out[i] = g[i] * (a if (v >> (i - 8 * b)) & 1 else c)
    return 0


def pack_greater_entry(task, num_tasks, x_addr, numel, threshold, or_equal, bits_addr):
    """`pack_greater_task` on raw addresses (see `quantize_entry`): fp32 ``x``, uint8 bits."""
    return pack_greater_task(task, num_tasks, carray(ptr_f32(x_addr), numel), numel, threshold, or_equal,
                             carray(ptr_u8(bits_addr), (numel + 7) // 8))


def keep_bits_entry(task, num_tasks, numel, seed_mix, p, bits_addr):
    """`keep_bits_task` into the uint8 bits at ``bits_addr``."""
    return keep_bits_task(task, num_tasks, numel, seed_mix, p, carray(ptr_u8(bits_addr), (numel + 7) // 8))


def scale_by_mask_entry(task, num_tasks, bits_addr, g_addr, numel, on, off, out_addr):
    """`scale_by_mask_task` on raw addresses: uint8 bits, fp32 ``g`` and ``out``."""
    return scale_by_mask_task(task, num_tasks, carray(ptr_u8(bits_addr), (numel + 7) // 8),
                              carray(ptr_f32(g_addr), numel), numel, on, off, carray(ptr_f32(out_addr), numel))


_RAW = {name: globals()[name] for name in (
    "f32_to_bits", "bits_to_f32", "as_f32", "key_to_float", "f32_to_f16_bits", "f16_bits_to_f32", "md_round",
    "md_value", "md_next", "noise_bits", "noise", "code_of", "quantize_group", "pack_scratch", "quantize_task",
    "dequantize_group", "dequantize_task", "ptr_f32", "ptr_i32", "ptr_i16", "ptr_u8", "quantize_entry",
    "dequantize_entry", "byte_range", "pack_greater_task", "keep_bits_task", "scale_by_mask_task",
    "pack_greater_entry", "keep_bits_entry", "scale_by_mask_entry",
)}
# How each function is compiled: "intrinsic", or keyword arguments of numba.njit. Only the entry points
# carry cache=True (their callees are compiled into them) and nogil=True (they run on the thread pool).
_DECORATIONS = {
    "f32_to_bits": "intrinsic",
    "bits_to_f32": "intrinsic",
    "as_f32": {"inline": "always"},
    "key_to_float": {"inline": "always"},
    "f32_to_f16_bits": {},
    "f16_bits_to_f32": {},
    "md_round": {},
    "md_value": {},
    "md_next": {},
    "noise_bits": "intrinsic",
    "noise": {"inline": "always"},
    "code_of": {"inline": "always"},
    "quantize_group": {"inline": "always"},
    "pack_scratch": {},
    "quantize_task": {},
    "dequantize_group": {"inline": "always"},
    "dequantize_task": {},
    "ptr_f32": "intrinsic",
    "ptr_i32": "intrinsic",
    "ptr_i16": "intrinsic",
    "ptr_u8": "intrinsic",
    "quantize_entry": {"nogil": True, "cache": True},
    "dequantize_entry": {"nogil": True, "cache": True},
    "byte_range": {"inline": "always"},
    "pack_greater_task": {},
    "keep_bits_task": {},
    "scale_by_mask_task": {},
    "pack_greater_entry": {"nogil": True, "cache": True},
    "keep_bits_entry": {"nogil": True, "cache": True},
    "scale_by_mask_entry": {"nogil": True, "cache": True},
}


@dataclass(frozen=True)
class _QuantizePlan:
    """Everything about a quantize call that follows from (shape, dtype, config): computed once per setting."""

    meta: PackedMeta
    numel: int
    num_groups: int
    num_bytes: int
    groups_per_chunk: int  # whole groups whose codes fill whole bytes, about _CHUNK_ELEMENTS elements
    num_chunks: int
    md: torch.dtype
    kind: int
    value_max: float  # the input dtype's largest finite value (`reference.group_metadata`'s range check)
    stochastic: bool
    no_exact: tuple[torch.Tensor, torch.Tensor]  # `packed.no_exact_groups` for this setting


_PLANS: dict[tuple, _QuantizePlan] = {}
_MAX_PLANS = 4096  # distinct (shape, dtype, config) settings kept; a model has a few dozen


def _quantize_plan(shape: torch.Size, dtype: torch.dtype, config: CompressionConfig) -> _QuantizePlan:
    key = (shape, dtype, config)
    plan = _PLANS.get(key)
    if plan is None:
        group_size = resolve_group_size(shape, config)
        meta = PackedMeta(shape=shape, dtype=dtype, bits=config.bits, group_size=group_size)
        num_groups = meta.num_groups
        per_byte = 8 // config.bits
        groups_per_chunk = per_byte // math.gcd(group_size, per_byte)
        groups_per_chunk *= max(1, _CHUNK_ELEMENTS // (groups_per_chunk * group_size))
        md = config.torch_metadata_dtype
        plan = _QuantizePlan(
            meta=meta,
            numel=meta.numel,
            num_groups=num_groups,
            num_bytes=-(-num_groups * group_size * config.bits // 8),
            groups_per_chunk=groups_per_chunk,
            num_chunks=-(-num_groups // groups_per_chunk),
            md=md,
            kind=_MD_KIND[md],
            value_max=float(torch.finfo(dtype).max),
            stochastic=config.stochastic,
            no_exact=no_exact_groups(torch.device("cpu"), narrowest_int_dtype(max(num_groups - 1, 0)), dtype, group_size),
        )
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def quantize_cpu(x: torch.Tensor, config: CompressionConfig, seed: int) -> PackedActivation:
    """`reference.quantize_ref` as one fused pass over ``x`` (a CPU tensor). Same codes, same metadata.

    Written for small tensors too (a sampled model's step saves a dozen of ~2k elements): the sizes come
    from a plan cached per (shape, dtype, config), the kernel gets buffer addresses, and a call without
    exact groups (the usual case) makes three allocations and no other tensor op.
    """
    kernel, _ = _get_kernels()
    plan = _quantize_plan(x.shape, x.dtype, config)
    if plan.numel == 0:
        return PackedActivation(
            codes=x.new_empty(0, dtype=torch.uint8),
            scale=x.new_empty(0, dtype=plan.md),
            zero_point=x.new_empty(0, dtype=plan.md),
            exact_index=x.new_empty(0, dtype=torch.uint8),
            exact_values=x.new_empty((0, plan.meta.group_size)),
            meta=plan.meta,
        )
    # The kernel reads fp32 from a contiguous buffer; other inputs are converted first (held in ``flat32``
    # until the kernel returns).
    flat32 = x if x.dtype == torch.float32 and x.is_contiguous() else x.detach().reshape(-1).float().contiguous()
    codes = torch.empty(plan.num_bytes, dtype=torch.uint8)
    # The kernel writes metadata bit patterns straight into the metadata tensors: no conversion pass.
    scale = torch.empty(plan.num_groups, dtype=plan.md)
    zero_point = torch.empty(plan.num_groups, dtype=plan.md)
    args = (
        flat32.data_ptr(), plan.numel, plan.meta.group_size, plan.num_groups, plan.groups_per_chunk, config.bits,
        plan.kind, plan.value_max, plan.stochastic, seed_key(seed) if plan.stochastic else 0,
        codes.data_ptr(), plan.num_bytes, scale.data_ptr(), zero_point.data_ptr(),
    )
    # Threads per call, not per plan: torch.set_num_threads may change between calls.
    num_tasks = min(num_threads(plan.numel), plan.num_chunks)
    num_exact = kernel(0, 1, *args, 0) if num_tasks == 1 else run_tasks(kernel, num_tasks, *args, 0)
    if num_exact:
        # Rare (non-finite values, unrepresentable ranges): run again to get the per-group flags; the
        # second run writes the same codes and metadata.
        flags = torch.empty(plan.num_groups, dtype=torch.uint8)
        run_tasks(kernel, num_tasks, *args, flags.data_ptr())
        exact_index, exact_values = gather_exact(flags, x.detach().reshape(-1), plan.meta.group_size)
    else:
        exact_index, exact_values = plan.no_exact
    return PackedActivation(codes, scale, zero_point, exact_index, exact_values, plan.meta)


def dequantize_cpu(packed: PackedActivation) -> torch.Tensor:
    """`reference.dequantize_ref` as one fused pass (bitwise identical output)."""
    _, kernel = _get_kernels()
    meta = packed.meta
    numel = meta.numel
    if numel == 0:
        return torch.empty(meta.shape, dtype=meta.dtype, device=packed.device)
    num_groups = meta.num_groups
    out = torch.empty(size=meta.shape, dtype=torch.float32)  # size= takes a torch.Size ~2x faster than positionally
    codes = packed.codes.contiguous()
    scale = packed.scale.contiguous()
    zero_point = packed.zero_point.contiguous()
    # The kernel reads raw buffers without bounds checks: a malformed PackedActivation must fail here.
    if (
        codes.dtype != torch.uint8
        or codes.numel() < -(-numel * meta.bits // 8)
        or scale.dtype not in _MD_KIND
        or zero_point.dtype != scale.dtype
        or min(scale.numel(), zero_point.numel()) < num_groups
    ):
        raise ValueError(
            f"malformed PackedActivation for {num_groups} groups of {meta.group_size} at {meta.bits} bits: codes "
            f"{codes.dtype} x {codes.numel()}, scale {scale.dtype} x {scale.numel()}, zero_point "
            f"{zero_point.dtype} x {zero_point.numel()}"
        )
    # Metadata is read as bit patterns and widened inside the kernel (exactly as ``.float()`` would).
    args = (
        codes.data_ptr(), codes.numel(), scale.data_ptr(), zero_point.data_ptr(), _MD_KIND[scale.dtype], numel,
        meta.group_size, num_groups, meta.bits, out.data_ptr(),
    )
    num_tasks = min(num_threads(numel), num_groups)
    kernel(0, 1, *args) if num_tasks == 1 else run_tasks(kernel, num_tasks, *args)
    if meta.dtype != torch.float32:
        out = out.to(meta.dtype)
    if packed.exact_index.numel():
        scatter_exact(out.view(-1), packed)
    return out


def _get_mask_kernels():
    """(pack_greater_entry, keep_bits_entry, scale_by_mask_entry), compiled as `_get_kernels` does."""
    _get_kernels()
    return pack_greater_entry, keep_bits_entry, scale_by_mask_entry


def _run_mask_kernel(kernel, numel: int, *args) -> None:
    run_tasks(kernel, min(num_threads(numel), -(-numel // 8)), *args)


def pack_greater_cpu(x: torch.Tensor, threshold: float, or_equal: bool) -> torch.Tensor:
    """`masks.pack_greater` of a contiguous fp32 CPU tensor: (ceil(numel / 8),) uint8."""
    numel = x.numel()
    bits = torch.empty(-(-numel // 8), dtype=torch.uint8)
    if numel:
        _run_mask_kernel(_get_mask_kernels()[0], numel, x.data_ptr(), numel, float(threshold), bool(or_equal),
                         bits.data_ptr())
    return bits


def keep_bits_cpu(numel: int, p: float, seed: int) -> torch.Tensor:
    """`masks.keep_bits` on the CPU: (ceil(numel / 8),) uint8."""
    bits = torch.empty(-(-numel // 8), dtype=torch.uint8)
    if numel:
        _run_mask_kernel(_get_mask_kernels()[1], numel, numel, seed_key(seed), float(p), bits.data_ptr())
    return bits


def scale_by_mask_cpu(bits: torch.Tensor, g: torch.Tensor, on: float, off: float, out: torch.Tensor) -> torch.Tensor:
    """`masks.scale_by_mask` of contiguous fp32 CPU tensors ``g`` and ``out`` (which may be ``g``)."""
    numel = g.numel()
    if bits.dtype != torch.uint8 or not bits.is_contiguous() or bits.numel() < -(-numel // 8):
        raise ValueError(f"a mask of {numel} elements needs {-(-numel // 8)} contiguous uint8 bytes, got "
                         f"{bits.dtype} x {bits.numel()}")
    if numel:
        _run_mask_kernel(_get_mask_kernels()[2], numel, bits.data_ptr(), g.data_ptr(), numel, float(on), float(off),
                         out.data_ptr())
    return out


def _register() -> None:
    from .config import Backend
    from .quantize import BackendImpl, register_backend

    register_backend(Backend.CPU, BackendImpl(quantize_cpu, dequantize_cpu, available))


_register()
