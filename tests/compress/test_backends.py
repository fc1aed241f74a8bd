"""Fast backends against the PyTorch reference (the specification).

Given the same seed, every backend must produce the same codes, scale, zero-point, exact-group index and
exact values as `quantize_ref`, and dequantize bit for bit like `dequantize_ref` (the counter-based noise
makes "same seed" mean "same draws"). Backends: the numba CPU kernel and Triton. Triton runs on a GPU when
one is present. Without one it runs on CPU tensors under its interpreter, which must be switched on before
Triton is first imported in a process (Triton decorates its own library at import): so
`test_triton_cases_under_interpreter` reruns this module's Triton cases in a child pytest with
``TRITON_INTERPRET=1``; the variable never touches this process or other test modules.

Unbiasedness tolerance as in test_quantize.py: by Hoeffding the mean of N draws lies within
k*s/(2*sqrt(N)) of x except with probability 2*exp(-k**2/2); k = 6.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tinykg.compress import (
    BACKENDS,
    Backend,
    BackendImpl,
    CompressionConfig,
    cpu_kernels,
    dequantize,
    dequantize_ref,
    quantize,
    quantize_ref,
    resolve_backend,
    triton_kernels,
)
from tinykg.compress.rng import draw_seed

BITS = (1, 2, 4, 8)
METADATA = ("fp16", "bf16", "fp32")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
K_SIGMA = 6.0
REPO = Path(__file__).resolve().parents[2]
# Set (with TRITON_INTERPRET=1) in the child process that runs the interpreted Triton cases.
CHILD_FLAG = "TINYKG_TRITON_INTERPRETER_CHILD"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1"

# The interpreter computes both sides of tl.where, so masked-out lanes overflow harmlessly in numpy.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _cuda() -> bool:
    return torch.cuda.is_available()


def _triton_device() -> str | None:
    """Where the Triton cases run in this process, or None when they run elsewhere (child) or not at all."""
    if _cuda():
        return "cuda"
    return "cpu" if IN_CHILD else None


@pytest.fixture(params=[Backend.CPU, Backend.TRITON], ids=lambda b: b.value)
def backend(request) -> tuple[Backend, str]:
    """(backend, device) for each fast backend available here; skipped with the reason otherwise."""
    kind = request.param
    if kind == Backend.CPU:
        if IN_CHILD:
            pytest.skip("the parent process runs the CPU-kernel cases")
        if not cpu_kernels.numba_installed():
            pytest.skip("numba is not installed (pip install numba): the fused CPU backend is off")
        device = "cpu"
    else:
        if not triton_kernels.triton_installed():
            pytest.skip("triton is not installed (pip install triton)")
        device = _triton_device()
        if device is None:
            pytest.skip("no GPU: these run under TRITON_INTERPRET=1 in test_triton_cases_under_interpreter")
    assert BACKENDS[kind].available(torch.device(device))
    return kind, device


def assert_same_packed(packed, ref) -> None:
    assert packed.meta == ref.meta
    for name in ("codes", "scale", "zero_point", "exact_index"):
        got, want = getattr(packed, name), getattr(ref, name)
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want), name
    assert packed.exact_values.dtype == ref.exact_values.dtype
    torch.testing.assert_close(packed.exact_values, ref.exact_values, rtol=0, atol=0, equal_nan=True)


def assert_same_dequantized(out, ref_out) -> None:
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0, equal_nan=True)


def check_backend(kind: Backend, x: torch.Tensor, config: CompressionConfig, seed: int = 1234) -> None:
    """The backend's packed form and dequantization equal the reference's (and it dequantizes the
    reference's packed form identically)."""
    impl = BACKENDS[kind]
    ref = quantize_ref(x, config, seed)
    packed = impl.quantize(x, config, seed)
    assert_same_packed(packed, ref)
    want = dequantize_ref(ref)
    assert_same_dequantized(impl.dequantize(ref), want)
    assert_same_dequantized(impl.dequantize(packed), want)


def _sample(shape, dtype, device, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.rand(shape[-1:], generator=g).mul(4).add(0.1)
    return x.to(dtype).to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size", (32, 256, "row"))
@pytest.mark.parametrize("metadata_dtype", METADATA)
@pytest.mark.parametrize("bits", BITS)
def test_backend_matches_reference(backend, bits, metadata_dtype, group_size, dtype):
    # (9, 77): the last 32- and 256-group is partial; 77-long rows do not fill whole bytes below 8 bits.
    kind, device = backend
    x = _sample((9, 77), dtype, device)
    check_backend(kind, x, CompressionConfig(bits=bits, group_size=group_size, metadata_dtype=metadata_dtype))


def _special_groups() -> torch.Tensor:
    """(num_groups * 32,) fp32: one group per case the metadata rules single out."""
    g = torch.Generator().manual_seed(1)
    r = torch.randn(32, generator=g)
    ramp = torch.linspace(0, 1, 32)
    cases = [
        r,
        torch.where(torch.arange(32) == 5, float("nan"), r),
        torch.where(torch.arange(32) == 7, float("inf"), r),
        torch.where(torch.arange(32) == 0, float("-inf"), r),
        torch.full((32,), 1.0),  # constant, exactly stored: s = 0
        torch.full((32,), 0.1),  # constant the 16-bit formats cannot hold: exact group
        torch.where(torch.arange(32) % 2 == 0, -0.0, 0.0),  # constant zero of both signs
        1e6 + r,  # beyond fp16: zero-point saturates, scale overflows
        -1e6 + r,  # zero-point rounds to -inf in fp16
        (ramp - 0.5) * 120000,  # range beyond fp16 at 1 bit only
        65000 + ramp * 519,  # max just below fp16's rounding to inf
        1e-6 * r,  # fp16 subnormal metadata
        ramp * 3e-45,  # fp32 subnormals: 1/s overflows for fp32 metadata
        2049 + ramp,  # fp16 round-to-even tie at the minimum
        257 + ramp,  # bf16 tie at the minimum
        3 * 2.0**-25 + ramp * 2.0**-20,  # fp16 subnormal tie
        -5 + ramp * 4,  # all negative
        torch.full((32,), 1e-40),  # constant fp32 subnormal
        (ramp - 0.5) * 131008,  # fp16's +-65504: the top level rounds past it (kept exactly in fp16)
        ramp * 65504,  # fp16's max only
        ramp * 3.38e38,  # fp32 and bf16 near their max: bf16 metadata rounds the top level past it
        -ramp * 3.38e38,
    ]
    return torch.cat(cases)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metadata_dtype", METADATA)
@pytest.mark.parametrize("bits", BITS)
def test_backend_matches_reference_on_special_groups(backend, bits, metadata_dtype, dtype):
    kind, device = backend
    x = _special_groups().to(dtype).to(device)
    config = CompressionConfig(bits=bits, group_size=32, metadata_dtype=metadata_dtype)
    check_backend(kind, x, config)
    assert quantize_ref(x, config, 0).exact_index.numel() >= 3  # the non-finite groups at least


@pytest.mark.parametrize("metadata_dtype", METADATA)
@pytest.mark.parametrize("bits", BITS)
def test_backend_round_to_nearest_matches_reference(backend, bits, metadata_dtype):
    kind, device = backend
    x = torch.cat([_special_groups(), _sample((300,), torch.float32, "cpu")]).to(device)
    config = CompressionConfig(bits=bits, group_size=32, metadata_dtype=metadata_dtype, stochastic=False)
    check_backend(kind, x, config, seed=0)


@pytest.mark.parametrize(
    "shape, group_size",
    [((0,), 32), ((4, 0), "row"), ((0, 5), "row"), ((3, 0, 2), 8)],
)
def test_backend_empty_tensor(backend, shape, group_size):
    kind, device = backend
    x = torch.empty(shape, device=device)
    config = CompressionConfig(bits=2, group_size=group_size)
    check_backend(kind, x, config)
    assert BACKENDS[kind].dequantize(BACKENDS[kind].quantize(x, config, 1)).shape == shape


@pytest.mark.parametrize("group_size", (1, 2, 4, 8, 32))
@pytest.mark.parametrize("numel", (1, 7, 1001))
@pytest.mark.parametrize("bits", BITS)
def test_backend_sizes_not_divisible_by_group_or_byte(backend, bits, numel, group_size):
    kind, device = backend
    check_backend(kind, _sample((numel,), torch.float32, device, seed=numel),
                  CompressionConfig(bits=bits, group_size=group_size))


@pytest.mark.parametrize("shape", [(5, 3), (4, 1), (3, 129), (2, 3, 20), (6, 64), (7,)])
@pytest.mark.parametrize("bits", BITS)
def test_backend_row_groups_of_any_length(backend, bits, shape):
    kind, device = backend
    check_backend(kind, _sample(shape, torch.float32, device), CompressionConfig(bits=bits, group_size="row"))


@pytest.mark.parametrize("shape", [(2, 4100), (2, 4099)])
def test_backend_groups_longer_than_one_tile(backend, shape):
    # Triton walks groups longer than its chunk twice; 4099 also leaves codes unaligned to bytes.
    kind, device = backend
    check_backend(kind, _sample(shape, torch.float32, device), CompressionConfig(bits=2, group_size="row"))


@pytest.mark.parametrize("tuning", [(1024, 2, True), (4096, 4, True), (16384, 8, True), (2048, 4, False)],
                         ids=lambda t: f"tile{t[0]}-w{t[1]}-{'word' if t[2] else 'byte'}")
@pytest.mark.parametrize("bits", BITS)
def test_triton_quantize_tuning_settings_match_reference(backend, monkeypatch, bits, tuning):
    # Every launch setting the GPU sweep may pick (32-bit word or byte stores, tile, warps) is the same
    # function: special groups at G=32, a partial 256-group, rows of 96 (fill whole 32-bit words at every
    # width without being a power of two), of 77 (bytes only) and rows longer than one chunk.
    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("Triton launch settings")
    monkeypatch.setitem(triton_kernels._QUANTIZE_TUNING, bits, tuning)
    check_backend(kind, _special_groups().to(device), CompressionConfig(bits=bits, group_size=32))
    check_backend(kind, _sample((9, 77), torch.float32, device), CompressionConfig(bits=bits, group_size=256))
    for shape in ((9, 77), (5, 96)):
        check_backend(kind, _sample(shape, torch.float32, device), CompressionConfig(bits=bits, group_size="row"))
    check_backend(kind, _sample((2, 4100), torch.float32, device), CompressionConfig(bits=bits, group_size="row"))


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.t(),
        lambda x: x[:, ::3],
        lambda x: x[1:, 2:],
        lambda x: x[:1].expand(40, 50),
    ],
    ids=["transpose", "stride", "slice", "expand"],
)
@pytest.mark.parametrize("group_size", (32, "row"))
def test_backend_non_contiguous_input(backend, make, group_size):
    kind, device = backend
    x = make(_sample((40, 50), torch.float32, device))
    assert not x.is_contiguous()
    check_backend(kind, x, CompressionConfig(bits=4, group_size=group_size))


def test_backend_accepts_tensor_that_requires_grad(backend):
    kind, device = backend
    x = _sample((10, 64), torch.float32, device).requires_grad_()
    config = CompressionConfig(bits=2, group_size=64)
    packed = BACKENDS[kind].quantize(x * 2, config, 5)
    assert_same_packed(packed, quantize_ref((x * 2).detach(), config, 5))
    assert not packed.exact_values.requires_grad


def test_backend_public_quantize_under_no_grad_of_tensor_that_requires_grad(backend):
    # Inside an autograd Function's forward the inputs require grad while grad mode is off: `quantize`
    # hands them over undetached, and exact groups (the NaN) must come out as plain tensors.
    kind, device = backend
    x = _sample((10, 64), torch.float32, device).requires_grad_()
    config = CompressionConfig(bits=2, group_size=64, backend=kind)
    with torch.no_grad():
        y = x * 1.0
        y[3, 7] = float("nan")
        y.requires_grad_()
        packed = quantize(y, config, seed=5)
    assert_same_packed(packed, quantize_ref(y.detach(), config, 5))
    assert packed.exact_index.numel() == 1 and not packed.exact_values.requires_grad


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("metadata_dtype", ("fp16", "fp32"))
def test_backend_deferred_exact_check_matches_reference_on_special_groups(backend, metadata_dtype, dtype):
    """``defer_exact``: Triton returns a pending packed copy (the exact-group flags are read back later);
    resolved, or dequantized unresolved, it equals the reference, exact groups included. Backends whose
    results are always final (the CPU kernel) return them final."""
    kind, device = backend
    x = _special_groups().to(dtype).to(device)
    config = CompressionConfig(bits=2, group_size=32, metadata_dtype=metadata_dtype, backend=kind)
    ref = quantize_ref(x, config, 77)
    assert ref.exact_index.numel() >= 3
    packed = quantize(x, config, seed=77, defer_exact=True)
    assert (packed.pending is not None) == (kind == Backend.TRITON)
    assert_same_dequantized(dequantize(packed), dequantize_ref(ref))  # resolves on the way
    assert packed.pending is None
    assert_same_packed(packed, ref)
    plain = quantize(x, config, seed=78, defer_exact=True)
    assert_same_packed(plain.resolve(), quantize_ref(x, config, 78))
    assert plain.resolve() is plain  # resolving twice is a no-op


def test_triton_deferred_exact_check_rejects_input_changed_in_place(backend):
    """The flagged groups are gathered from the input when the check is read: an input changed in place
    before then would give wrong exact values, so resolving raises. Without exact groups there is nothing
    to gather and the codes were taken before the change: no error."""
    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("only Triton defers the check")
    config = CompressionConfig(bits=2, group_size=32, backend=kind)
    x = _special_groups().to(device)
    packed = quantize(x, config, seed=5, defer_exact=True)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        packed.resolve()
    y = _sample((4, 64), torch.float32, device)
    want = quantize_ref(y, config, 6)
    packed = quantize(y, config, seed=6, defer_exact=True)
    y.zero_()
    assert_same_packed(packed.resolve(), want)


def test_triton_exact_answer_survives_its_word_being_reused(backend, monkeypatch):
    """The kernel's exact-group words are handed out round robin: a pending copy whose word was taken again
    reads its answer as unknown and falls back to the flags, so its exact groups are still kept."""
    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("Triton's flag words")
    words = triton_kernels._FlagWords(torch.device(device), size=2)
    monkeypatch.setitem(triton_kernels._FLAG_WORDS, torch.device(device).type, words)
    config = CompressionConfig(bits=2, group_size=32, backend=kind)
    x = _special_groups().to(device)
    packed = quantize(x, config, seed=9, defer_exact=True)
    later = [quantize(_sample((4, 64), torch.float32, device), config, seed=s, defer_exact=True) for s in (1, 2)]
    assert packed.pending.signal.wait_any() is None  # its word now belongs to a later call
    assert later[1].pending.signal.wait_any() is False
    assert_same_packed(packed.resolve(), quantize_ref(x, config, 9))


def test_triton_reads_flags_back_where_the_kernel_cannot_write_host_memory(backend, monkeypatch):
    """Where the probe found that the kernel cannot write pinned host memory (`_flag_words` gives None), the
    flags are read back at once: results are final and equal the reference."""
    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("Triton's flag words")
    monkeypatch.setitem(triton_kernels._FLAG_WORDS, torch.device(device).type, None)
    config = CompressionConfig(bits=2, group_size=32, backend=kind)
    x = _special_groups().to(device)
    packed = quantize(x, config, seed=9, defer_exact=True)
    assert packed.pending is None
    assert_same_packed(packed, quantize_ref(x, config, 9))


def test_triton_flag_word_probe(backend, monkeypatch):
    """The first-use probe passes when the kernel's write arrives and raises when it does not."""
    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("Triton's flag words")
    device = torch.device(device)
    triton_kernels._probe_flag_words(triton_kernels._FlagWords(device, size=4), device)
    lost = triton_kernels._FlagWords(device, size=4)
    lost.views = tuple(torch.zeros(1, dtype=torch.int32, device=device) for _ in range(4))  # not the host's words
    with pytest.raises(RuntimeError, match="did not arrive"):
        triton_kernels._probe_flag_words(lost, device)


def test_backend_saved_exact_groups_give_reference_gradients(backend):
    """`tinykg.nn` quantizes with the check deferred and resolves at save: an op whose saved input has exact
    groups (values beyond fp16 metadata) computes the same weight gradient on the backend as on the
    reference, seed for seed."""
    from tinykg.nn import compressed_linear

    kind, device = backend
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, generator=g)
    x[2, :32] += 1e6  # one group the fp16 metadata cannot hold
    weight0 = torch.randn(16, 64, generator=g)
    grads = []
    for name in (Backend.TORCH, kind):
        weight = weight0.clone().to(device).requires_grad_()
        torch.manual_seed(11)
        config = CompressionConfig(bits=2, group_size=32, backend=name)
        compressed_linear(x.to(device), weight, None, config).sum().backward()
        grads.append(weight.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    assert grads[0][:, :32].abs().max() > 1e5  # the exact group reached the gradient


class _TorchCalls(TorchDispatchMode):
    """Names of the torch ops dispatched while active, except inside Triton kernel launches (under the
    interpreter a launch runs torch ops of its own)."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_triton_host_calls_per_quantize_and_dequantize(backend, monkeypatch):
    """On a GPU every torch call costs the host ~10 us, and the host sets the pace of a sampled model's
    compressed step: a quantize of a contiguous tensor without exact groups makes 6 calls besides its one
    kernel launch (the seed draw and its read, 4 allocations; the kernel writes the exact-group answer to
    host memory), a dequantize 1 (its output), and packing or unpacking a mask 1 (its output)."""
    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("Triton host path")
    calls = _TorchCalls()
    real_get = triton_kernels._get_kernels

    class Paused:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def run(*args, **kwargs):
                calls.paused += 1
                try:
                    return launch(*args, **kwargs)
                finally:
                    calls.paused -= 1

            return run

    monkeypatch.setattr(triton_kernels, "_get_kernels", lambda: triton_kernels.Kernels(*map(Paused, real_get())))
    x = _sample((256, 64), torch.float32, device)
    for metadata_dtype in ("fp16", "fp32", "bf16"):
        config = CompressionConfig(bits=2, metadata_dtype=metadata_dtype, backend=kind)
        quantize(x, config)  # warm-up: compile, resolve the backend
        calls.names.clear()
        torch.manual_seed(3)
        with calls:
            packed = quantize(x, config)
        quantize_calls, calls.names = calls.names, []
        with calls:
            out = dequantize(packed, config)
        views = 4 if metadata_dtype == "bf16" else 0  # bf16 metadata goes to the kernels as int16 views (2 calls each)
        assert len(quantize_calls) <= 6 + views, (metadata_dtype, quantize_calls)
        assert len(calls.names) <= 1 + views, (metadata_dtype, calls.names)
        torch.manual_seed(3)
        ref = quantize_ref(x, config, draw_seed())  # the seed the counted call drew
        assert_same_packed(packed, ref)
        assert_same_dequantized(out, dequantize_ref(ref))
        # Deferred (what tinykg.nn uses): the same calls; resolving reads the kernel's word in host memory
        # after an event, with no torch call.
        torch.manual_seed(3)
        calls.names = []
        with calls:
            deferred = quantize(x, config, defer_exact=True)
        deferred_calls, calls.names = calls.names, []
        assert deferred.pending is not None
        with calls:
            deferred.resolve()
        assert deferred_calls == quantize_calls and calls.names == [], (deferred_calls, calls.names)
        assert_same_packed(deferred, ref)
    mask = x > 0  # a ReLU mask: one allocation each way besides the launch
    calls.names = []
    with calls:
        bits = triton_kernels.pack_mask_triton(mask)
    pack_calls, calls.names = calls.names, []
    with calls:
        restored = triton_kernels.unpack_mask_triton(bits, mask.shape)
    assert pack_calls == ["empty"] and calls.names == ["empty"], (pack_calls, calls.names)
    assert torch.equal(restored, mask)
    # The fused mask ops: one allocation each besides the launch (the masked product writes into the
    # output it is given, which `masks.scale_by_mask` allocates: one call there too).
    for fn in (
        lambda: triton_kernels.pack_greater_triton(x, 0.0, False),
        lambda: triton_kernels.keep_bits_triton(x.numel(), 0.1, 5, x.device),
    ):
        calls.names = []
        with calls:
            fn()
        assert calls.names == ["empty"], calls.names
    out = torch.empty_like(x)
    calls.names = []
    with calls:
        triton_kernels.scale_by_mask_triton(bits, x, 1.0, 0.2, out)
    assert calls.names == [], calls.names


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 1001), (2, 4096 * 2 + 5)], ids=str)
def test_triton_mask_kernels_match_reference_layout(backend, shape):
    """The Triton mask kernels write `pack_codes(mask, 1)`'s bytes and read them back, for sizes that end
    mid-byte and span several programs, and for a non-contiguous mask."""
    from tinykg.compress.masks import pack_mask_ref

    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("Triton mask kernels")
    g = torch.Generator().manual_seed(sum(shape))
    mask = (torch.rand(shape, generator=g) > 0.5).to(device)
    bits = triton_kernels.pack_mask_triton(mask)
    assert bits.dtype == torch.uint8 and torch.equal(bits, pack_mask_ref(mask))
    restored = triton_kernels.unpack_mask_triton(bits, mask.shape)
    assert restored.dtype == torch.bool and restored.shape == mask.shape and torch.equal(restored, mask)
    if mask.dim() == 2:
        t = mask.t()
        assert torch.equal(triton_kernels.pack_mask_triton(t), pack_mask_ref(t))


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (9,), (3, 1001), (2, 4096 * 2 + 5)], ids=str)
def test_triton_fused_mask_kernels_match_their_expressions(backend, shape):
    """`masks.pack_greater`, `keep_bits` and `scale_by_mask` on Triton: the bits and values (compared as
    int32 patterns) of the PyTorch expressions that specify them, for sizes that end mid-byte and span
    several programs, with NaN, infinities and signed zeros."""
    from tinykg.compress.masks import pack_mask_ref, unpack_mask_ref
    from tinykg.compress.rng import uniform_noise

    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("Triton mask kernels")
    numel = math.prod(shape)
    x = _sample(shape, torch.float32, "cpu", seed=numel).reshape(-1)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 0.1, -0.1])
    x[: min(len(specials), numel)] = specials[:numel]
    x = x.reshape(shape)
    for threshold, or_equal in ((0.0, False), (0.1, True), (-0.1, False)):
        want = pack_mask_ref(x >= threshold if or_equal else x > threshold)
        assert torch.equal(triton_kernels.pack_greater_triton(x.to(device), threshold, or_equal).cpu(), want)
    for p, seed in ((0.1, 0), (0.5, 2**32 - 1)):
        want = pack_mask_ref(uniform_noise(numel, seed) >= p)
        assert torch.equal(triton_kernels.keep_bits_triton(numel, p, seed, torch.device(device)).cpu(), want)
    bits = pack_mask_ref(x > 0)
    mask = unpack_mask_ref(bits, x.shape)
    g = x.flip(0)
    for on, off in ((1.0, 0.2), (1.0, 0.0), (1 / 0.9, 0.0)):
        want = torch.where(mask, g if on == 1.0 else g * on, g * off)
        g_dev = g.contiguous().to(device)
        got = triton_kernels.scale_by_mask_triton(bits.to(device), g_dev, on, off, torch.empty_like(g_dev)).cpu()
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_backend_many_groups_across_threads(backend, monkeypatch):
    # The CPU kernel's parallel path (its threshold lowered to below this tensor), split over all its
    # tasks (with multi-group chunks for 33-long rows); small for the interpreter.
    monkeypatch.setattr(cpu_kernels, "_SERIAL_BELOW", 1 << 16)
    kind, device = backend
    rows = 6061 if kind == Backend.CPU else 120
    x = _sample((rows, 33), torch.float32, device, seed=3)
    x[23, 5] = float("nan")
    for bits in BITS:
        check_backend(kind, x, CompressionConfig(bits=bits, group_size=64), seed=2**32 - 1)
        check_backend(kind, x, CompressionConfig(bits=bits, group_size="row"), seed=7)


@pytest.mark.parametrize("metadata_dtype", METADATA)
@pytest.mark.parametrize("bits", BITS)
def test_cpu_kernel_threaded_path_matches_reference_on_small_input(monkeypatch, bits, metadata_dtype):
    # Small tensors normally run on the calling thread; force the split over threads on the special groups.
    if IN_CHILD or not cpu_kernels.numba_installed():
        pytest.skip("needs numba, in the parent process")
    # Three tasks whatever the machine's core count: two run on the pool, one on the calling thread.
    monkeypatch.setattr(cpu_kernels, "num_threads", lambda numel: 3)
    x = torch.cat([_special_groups(), _sample((1000,), torch.float32, "cpu")])
    check_backend(Backend.CPU, x, CompressionConfig(bits=bits, group_size=32, metadata_dtype=metadata_dtype))
    rows = x[: x.numel() // 3 * 3].view(-1, 3)  # 3-long rows: their codes do not fill whole bytes
    check_backend(Backend.CPU, rows, CompressionConfig(bits=bits, group_size="row"))


def test_cpu_kernel_concurrent_callers_get_their_own_codes(monkeypatch):
    # Autograd, DataLoader workers or user threads may quantize at the same time; the shared pool must keep
    # every call's tasks apart.
    from concurrent.futures import ThreadPoolExecutor

    if IN_CHILD or not cpu_kernels.numba_installed():
        pytest.skip("needs numba, in the parent process")
    monkeypatch.setattr(cpu_kernels, "num_threads", lambda numel: 3)
    config = CompressionConfig(bits=2, group_size=64)
    inputs = [_sample((257, 31), torch.float32, "cpu", seed=s) for s in range(8)]
    with ThreadPoolExecutor(max_workers=4) as callers:
        packed = list(callers.map(lambda i: cpu_kernels.quantize_cpu(inputs[i], config, seed=i), range(8)))
        restored = list(callers.map(cpu_kernels.dequantize_cpu, packed))
    for i in range(8):
        assert_same_packed(packed[i], quantize_ref(inputs[i], config, i))
        assert_same_dequantized(restored[i], dequantize_ref(packed[i]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", BITS)
def test_backend_public_roundtrip_dispatches_to_backend(backend, bits, dtype):
    kind, device = backend
    config = CompressionConfig(bits=bits, group_size=64, backend=kind)
    assert resolve_backend(kind, torch.device(device)) is BACKENDS[kind]
    x = _sample((33, 20), dtype, device, seed=bits)
    packed = quantize(x, config, seed=99)
    assert_same_packed(packed, quantize_ref(x, config, 99))
    out = dequantize(packed, config)
    assert_same_dequantized(out, dequantize_ref(packed))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    # Error bounded by one step per element.
    step = packed.scale.float().repeat_interleave(64)[: x.numel()].view(x.shape)
    assert ((out.float() - x.float()).abs() <= step * 1.001 + 1e-2 * x.float().abs()).all()


@pytest.mark.parametrize("bits", (1, 2))
def test_backend_unbiased(backend, bits):
    kind, device = backend
    num_draws = 16 if IN_CHILD else 48  # the interpreter is slow; the tolerance scales with 1/sqrt(draws)
    x = _sample((8, 64), torch.float32, device, seed=5)
    config = CompressionConfig(bits=bits, group_size=64, backend=kind)
    total = torch.zeros_like(x, dtype=torch.float64)
    step = None
    for seed in range(num_draws):
        packed = quantize(x, config, seed=seed)
        total += dequantize(packed, config).double()
        step = packed.scale.double().repeat_interleave(64).view(x.shape)
    mean = total / num_draws
    assert ((mean - x.double()).abs() <= K_SIGMA * step / (2 * math.sqrt(num_draws)) + 1e-6).all()


def test_fast_backends_never_raise_on_other_devices():
    for kind in (Backend.CPU, Backend.TRITON):
        assert BACKENDS[kind].available(torch.device("meta")) is False


def test_auto_on_cpu_uses_cpu_kernel_when_numba_present():
    impl = resolve_backend(Backend.AUTO, torch.device("cpu"))
    if cpu_kernels.numba_installed():
        assert impl is BACKENDS[Backend.CPU]
    else:
        assert impl is BACKENDS[Backend.TORCH]


def test_auto_falls_back_to_reference_when_kernel_unavailable(monkeypatch):
    off = BackendImpl(quantize_ref, dequantize_ref, lambda device: False)
    monkeypatch.setitem(BACKENDS, Backend.CPU, off)
    assert resolve_backend(Backend.AUTO, torch.device("cpu")) is BACKENDS[Backend.TORCH]
    x = torch.randn(300)
    config = CompressionConfig(backend=Backend.CPU)
    assert_same_packed(quantize(x, config, seed=3), quantize_ref(x, config, 3))


def test_triton_unavailable_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert BACKENDS[Backend.TRITON].available(torch.device("cpu")) is False


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_triton_cases_under_interpreter():
    """Every ``[triton-...]`` case of this module, on CPU tensors under Triton's interpreter."""
    if _cuda():
        pytest.skip("a GPU is present: the Triton cases ran on it in this process")
    if not triton_kernels.triton_installed():
        pytest.skip("triton is not installed (pip install triton)")
    env = {**os.environ, "TRITON_INTERPRET": "1", CHILD_FLAG: "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "triton", __file__],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    tail = "\n".join(result.stdout.splitlines()[-40:])
    assert result.returncode == 0, f"interpreted Triton cases failed:\n{tail}\n{result.stderr[-2000:]}"
    passed = re.search(r"(\d+) passed", tail)
    assert passed and int(passed.group(1)) >= 200, tail  # the Triton cases really ran


def test_bench_kernels_smoke_runs(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_kernels.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| torch |" in result.stdout
    assert out.exists()


@pytest.mark.skipif(IN_CHILD or not cpu_kernels.numba_installed(), reason="needs numba (runs in the parent)")
def test_cpu_dequantize_rejects_malformed_packed():
    """The CPU kernels read raw buffers without bounds checks: a packed activation whose codes or metadata
    are too short, or of the wrong dtype, is refused with a ValueError before the kernel runs."""
    from dataclasses import replace

    packed = cpu_kernels.quantize_cpu(torch.randn(1000), CompressionConfig(bits=2, group_size=64), 1)
    for broken in (
        replace(packed, codes=packed.codes[:200]),  # 1000 2-bit codes need 250 bytes
        replace(packed, codes=packed.codes.to(torch.int16)),
        replace(packed, scale=packed.scale[:-1]),
        replace(packed, zero_point=packed.zero_point.float()),
        replace(packed, scale=packed.scale.double(), zero_point=packed.zero_point.double()),
    ):
        with pytest.raises(ValueError, match="malformed PackedActivation"):
            cpu_kernels.dequantize_cpu(broken)
    assert torch.equal(cpu_kernels.dequantize_cpu(packed), dequantize_ref(packed))


@pytest.mark.skipif(IN_CHILD or not cpu_kernels.numba_installed(), reason="needs numba (runs in the parent)")
def test_cpu_quantize_follows_torch_thread_count_after_its_plan_is_cached(monkeypatch):
    """The per-(shape, config) plan must not freeze the thread count: torch.set_num_threads between two
    calls of the same shape changes how many tasks the second call runs."""
    calls = []
    original = cpu_kernels.run_tasks

    def recording(kernel, num_tasks, *args):
        calls.append(num_tasks)
        return original(kernel, num_tasks, *args)

    monkeypatch.setattr(cpu_kernels, "run_tasks", recording)
    monkeypatch.setattr(cpu_kernels, "_SERIAL_BELOW", 1 << 16)
    x = torch.randn(1 << 18)  # above the (lowered) serial threshold
    config = CompressionConfig(bits=2, group_size=256)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = cpu_kernels.quantize_cpu(x, config, 3)
        torch.set_num_threads(1)
        second = cpu_kernels.quantize_cpu(x, config, 3)
    finally:
        torch.set_num_threads(threads)
    assert calls == [2]  # the one-thread call runs the kernel directly, not through run_tasks
    assert torch.equal(first.codes, second.codes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("seed, salt", [(1234, 0), (1234, 1), (0, 2**32 - 1), (2**32 - 1, 2**40 + 7), (7, -1),
                                        (2**31, -(2**40) - 3)])
def test_triton_device_salt_gives_the_reference_codes_of_the_salted_seed(backend, bits, seed, salt):
    """Inside `device_salt`, the quantize and keep-mask kernels read the salt from device memory and give
    the reference's codes and masks for `salted_seed(seed, salt)` (the salt's low 32 bits, negative ones
    as two's complement; a CUDA graph advances it at every replay). Different salts give different codes."""
    from tinykg.compress.masks import pack_mask_ref
    from tinykg.compress.rng import device_salt, salted_seed, uniform_noise

    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("only the Triton kernels read a device salt")
    config = CompressionConfig(bits=bits, group_size=32, backend=kind)
    x = _sample((6, 100), torch.float32, device)
    salt_tensor = torch.tensor([salt], dtype=torch.int64, device=device)
    with device_salt(salt_tensor):
        packed = quantize(x, config, seed=seed)
        mask = triton_kernels.keep_bits_triton(1001, 0.3, seed, torch.device(device))
    salted = salted_seed(seed, salt)
    assert_same_packed(packed, quantize_ref(x, config, salted))
    assert torch.equal(mask.cpu(), pack_mask_ref(uniform_noise(1001, salted) >= 0.3))
    with device_salt(salt_tensor + 1):
        other = quantize(x, config, seed=seed)
    assert not torch.equal(other.codes, packed.codes)


def test_triton_capture_word_collects_exact_groups_without_waiting(backend):
    """Inside `exact_groups_to` (a CUDA graph's capture), quantize returns a final result with no exact
    group and no pending check, and sets the word exactly when some group had to be kept exactly; the
    codes of the other groups are the reference's."""
    kind, device = backend
    if kind != Backend.TRITON:
        pytest.skip("Triton's exact-group word")
    config = CompressionConfig(bits=2, group_size=32, backend=kind)
    word = torch.zeros(1, dtype=torch.int32, device=device)
    y = _sample((4, 64), torch.float32, device)
    with triton_kernels.exact_groups_to(word):
        packed = quantize(y, config, seed=3, defer_exact=True)
    assert packed.pending is None and int(word) == 0
    assert_same_packed(packed, quantize_ref(y, config, 3))
    x = _special_groups().to(device)
    with triton_kernels.exact_groups_to(word):
        packed = quantize(x, config, seed=3, defer_exact=True)
    want = quantize_ref(x, config, 3)
    assert want.exact_index.numel() and packed.exact_index.numel() == 0 and int(word) == 1
    assert torch.equal(packed.codes, want.codes)


def test_device_salt_is_refused_by_backends_that_cannot_read_it():
    """A backend that takes its seed as a host value only would freeze the noise into a captured graph:
    inside `device_salt` it raises instead (the stochastic quantizer and the keep-mask); round to nearest
    draws no noise and is allowed."""
    from tinykg.compress.masks import keep_bits
    from tinykg.compress.rng import device_salt

    x = torch.randn(4, 32)
    with device_salt(torch.zeros(1, dtype=torch.int64)):
        with pytest.raises(RuntimeError, match="Triton backend only"):
            quantize(x, CompressionConfig(bits=2, backend="torch"))
        with pytest.raises(RuntimeError, match="Triton kernels only"):
            keep_bits(100, 0.5, 1, "cpu")
        quantize(x, CompressionConfig(bits=2, backend="torch", stochastic=False))
    with pytest.raises(ValueError, match="one int64"):
        with device_salt(torch.zeros(2, dtype=torch.int64)):
            pass
