"""Counter-based random source for stochastic rounding.

The noise for element ``i`` of a tensor quantized with seed ``s`` is

    u_i = (hash32(i mod 2**32  XOR  hash32(s mod 2**32)) >> 8) * 2**-24        in [0, 1 - 2**-24]

where ``hash32`` is an xorshift-multiply integer hash (two rounds, odd multipliers below 2**31). ``u`` is a
multiple of 2**-24, so it is exact in fp32 and never reaches 1.0: a draw can never push a value past the
top bin (a flaw of ``torch.rand``-based quantizers when a draw rounds up to 1.0).

Because the noise is a pure function of (seed, index), any implementation -- this PyTorch reference, a
Triton kernel, a CPU kernel -- produces identical noise and therefore identical codes, with no random
state to carry between kernels. The multipliers are below 2**31 so the products of 32-bit values fit in
int64 without overflow, which lets the reference compute it exactly with int64 tensor arithmetic. The
index wraps at 2**32 elements: noise repeats only within tensors larger than that.

The per-tensor seed is drawn on the CPU (no device sync): from the ``torch.Generator`` passed to
`draw_seed`, else from the quantizer's own stream once `seed_quantizer` has set it (`QuantizerStream`,
counter-based like the noise), else from the global CPU generator (so ``torch.manual_seed`` alone makes
compression reproducible). tinykg's training loops set the
quantizer's own: drawn from the global generator, a compressed run would consume random numbers that the
fp32 run of the same seed does not, and every later dropout mask and sampled negative drawn from it would
differ between the two runs, so their paired comparison would measure those draws as well. (Compressed
dropout does draw other masks than F.dropout, for speed: one seed per mask from the generator it is given,
else the global one (`draw_torch_seed`), whose bits come from this noise; `tinykg.nn.compressed_dropout`.) The setting
is a context variable: each thread has its own, and a new thread starts from the global generator.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Iterator

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
HASH_MUL1 = 0x7FEB352D
HASH_MUL2 = 0x2C1B3C6D
NOISE_SHIFT = 8
NOISE_SCALE = 2.0**-24


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Integer hash of int64 values in [0, 2**32); returns int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * HASH_MUL1) & MASK32
    x = x ^ (x >> 15)
    x = (x * HASH_MUL2) & MASK32
    return x ^ (x >> 16)


def hash32_int(x: int) -> int:
    """`hash32` of one Python int (used to derive the per-tensor key without a device round-trip)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * HASH_MUL1) & MASK32
    x ^= x >> 15
    x = (x * HASH_MUL2) & MASK32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """The 32-bit key mixed into every element index."""
    return hash32_int(seed)


def uniform_noise(numel: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise u_0 .. u_{numel-1} in [0, 1) as fp32, defined by the module docstring."""
    index = torch.arange(numel, device=device, dtype=torch.int64) & MASK32
    bits = hash32(index ^ seed_key(seed))
    return (bits >> NOISE_SHIFT).to(torch.float32) * NOISE_SCALE


_seed_buffers = threading.local()
_QUANTIZER_STREAM = 0x71_6B67  # "qkg": separates the quantizer's stream from other uses of a run's seed
MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15  # splitmix64's increment


class QuantizerStream:
    """The quantizer's own seeds: seed ``i`` is the top 32 bits of splitmix64(key + (i + 1) * golden).

    Counter-based, like the noise: the state is two ints (``get_state`` / ``set_state`` carry them through
    a checkpoint as a 2-element int64 tensor, as a ``torch.Generator``'s state would be carried). A draw is
    a few Python integer operations, ~0.4 us against ~1.4 us for a draw from a ``torch.Generator`` into a
    tensor and back (every compressed tensor draws one; a small step draws a few).
    """

    __slots__ = ("key", "counter", "_lock")

    def __init__(self, key: int, counter: int = 0) -> None:
        self.key, self.counter = key & MASK64, counter
        # Two threads share a stream only through a copied context; the lock keeps their draws distinct
        # (a torch.Generator's draws are serialised the same way).
        self._lock = threading.Lock()

    def draw(self) -> int:
        with self._lock:
            self.counter += 1
            counter = self.counter
        z = (self.key + counter * _GOLDEN64) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return (z ^ (z >> 31)) >> 32

    def get_state(self) -> torch.Tensor:
        key = self.key - (1 << 64) if self.key >= 1 << 63 else self.key  # as a signed int64
        return torch.tensor([key, self.counter], dtype=torch.int64)

    def set_state(self, state: torch.Tensor) -> None:
        self.check_state(state)
        key, counter = (int(v) for v in state)
        with self._lock:
            self.key, self.counter = key & MASK64, counter

    @staticmethod
    def check_state(state: torch.Tensor) -> None:
        """Raise ValueError unless ``state`` is a `get_state` result (a checkpoint loader calls this before
        it changes any global state)."""
        if not isinstance(state, torch.Tensor) or state.dtype != torch.int64 or tuple(state.shape) != (2,):
            raise ValueError(
                "tinykg: this quantizer state is not a QuantizerStream's (2 int64 values) but "
                f"{getattr(state, 'dtype', type(state).__name__)} x {tuple(getattr(state, 'shape', ()))}: a "
                "checkpoint written while the quantizer drew its seeds "
                "from a torch.Generator (tinykg before QuantizerStream) holds that generator's state; resume it "
                "with the tinykg that wrote it")


# A context variable, not a global: two training runs in two threads each keep their own stream.
_quantizer_generator: contextvars.ContextVar[QuantizerStream | None] = contextvars.ContextVar(
    "tinykg_quantizer_generator", default=None)


def seed_quantizer(seed: int | None) -> None:
    """Draw per-tensor seeds from a stream of the quantizer's own (`QuantizerStream`), keyed from
    ``seed`` (any int); None: from the global CPU generator again (the default). Set for the current
    thread (a context variable: a new thread starts from the default)."""
    if seed is None:
        _quantizer_generator.set(None)
        return
    # A key apart from ``seed`` itself, so that the stream is no function of torch.manual_seed(seed)'s.
    key = np.random.SeedSequence([int(seed) % 2**64, _QUANTIZER_STREAM]).generate_state(1, np.uint64)[0]
    _quantizer_generator.set(QuantizerStream(int(key)))


@contextlib.contextmanager
def restoring_quantizer_seed() -> Iterator[None]:
    """Whatever `seed_quantizer` does inside the block is undone at its end (tinykg's training entry
    points seed the quantizer for their run, and leave the caller's setting as they found it)."""
    previous = _quantizer_generator.get()
    try:
        yield
    finally:
        _quantizer_generator.set(previous)


def quantizer_generator() -> QuantizerStream | None:
    """The stream `seed_quantizer` set (None: seeds come from the global CPU generator), e.g. to save and
    restore its state with a training checkpoint."""
    return _quantizer_generator.get()


def salted_seed(seed: int, salt: int) -> int:
    """The seed a kernel uses when it reads a salt from device memory (`device_salt`):
    ``seed XOR hash32(salt mod 2**32)``. `hash32` is a bijection of 32-bit words, so a fixed seed gives a
    different seed for every salt below 2**32, and the reference given this seed gives the kernel's codes."""
    return (seed ^ hash32_int(salt)) & MASK32


# A CUDA graph replays its kernels with the arguments they were captured with: a seed passed as an argument
# would give every replay the same noise. Inside `device_salt`, the seeded kernels also read a salt from
# device memory, which the graph advances at every replay (`tinykg.train.graphed`).
_device_salt: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("tinykg_device_salt", default=None)


@contextlib.contextmanager
def device_salt(salt: torch.Tensor | None) -> Iterator[None]:
    """Inside the block, every seeded kernel (the quantizer's stochastic rounding, compressed dropout's
    masks) uses `salted_seed` of its seed and the value of ``salt``, read on the device when the kernel
    runs: a (1,) int64 CUDA tensor (None: plain seeds). Only the Triton backend reads it; the other
    backends raise inside the block rather than give a captured graph frozen noise."""
    if salt is not None and (salt.dtype != torch.int64 or salt.numel() != 1):
        raise ValueError(f"a device salt is one int64 value, got {salt.dtype} x {tuple(salt.shape)}")
    token = _device_salt.set(salt)
    try:
        yield
    finally:
        _device_salt.reset(token)


def current_device_salt() -> torch.Tensor | None:
    """The salt `device_salt` set in this context, or None."""
    return _device_salt.get()


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A fresh 32-bit seed from ``generator`` (a CPU generator), else from the quantizer's own stream
    (`seed_quantizer`), else from the global CPU generator."""
    if generator is None:
        stream = _quantizer_generator.get()
        if stream is not None:
            return stream.draw()
    return draw_torch_seed(generator)


def draw_torch_seed(generator: torch.Generator | None = None) -> int:
    """A fresh 32-bit seed from ``generator``, else from the global CPU generator, never from the
    quantizer's stream: for randomness that ``torch.manual_seed`` governs as it governs PyTorch's own
    (compressed dropout's masks). A generator on another device is drawn from there (a device sync).

    From a CPU generator, drawn in place into a per-thread 0-d buffer: the same value as
    ``torch.randint(0, 2**32, ())`` from the same generator state, at ~60% of its cost.
    """
    if generator is not None and generator.device.type != "cpu":
        return int(torch.randint(0, 2**32, (), device=generator.device, generator=generator).item())
    buffer = getattr(_seed_buffers, "buffer", None)
    if buffer is None:
        buffer = _seed_buffers.buffer = torch.empty((), dtype=torch.int64)
    return buffer.random_(0, 2**32, generator=generator).item()
