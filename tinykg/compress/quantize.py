"""Public quantize / dequantize, dispatching to a backend.

Backends are registered in `BACKENDS`; each provides ``quantize(x, config, seed) -> PackedActivation``,
``dequantize(packed) -> Tensor`` and ``available(device) -> bool``. The reference (``torch``) is always
available. ``Backend.AUTO`` takes the first available backend in `AUTO_ORDER` for the tensor's device.
A backend that is asked for explicitly but is unavailable falls back to the reference with one log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from .config import Backend, CompressionConfig
from .packed import PackedActivation
from .reference import dequantize_ref, quantize_ref
from .rng import current_device_salt, draw_seed

log = logging.getLogger("tinykg.compress")


@dataclass(frozen=True)
class BackendImpl:
    quantize: Callable[[torch.Tensor, CompressionConfig, int], PackedActivation]
    dequantize: Callable[[PackedActivation], torch.Tensor]
    available: Callable[[torch.device], bool]
    # ``quantize`` whose result may be pending (`PackedActivation.resolve`), for a device that runs
    # asynchronously; None: ``quantize`` is used (its results are always final).
    deferred_quantize: Callable[[torch.Tensor, CompressionConfig, int], PackedActivation] | None = None
    # Whether ``quantize`` reads `tinykg.compress.rng.device_salt` (what a CUDA-graph replay needs).
    reads_device_salt: bool = False


class _Registry(dict):
    """The backend table; any change to it forgets the resolved choices (tests swap entries in and out)."""

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        _resolved.clear()

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        _resolved.clear()


# (backend, device) -> implementation. Resolving costs ~1 us, and a sampled model's step quantizes and
# dequantizes a dozen small tensors, each a few microseconds of work.
_resolved: dict[tuple[Backend, torch.device], BackendImpl] = {}
BACKENDS: dict[Backend, BackendImpl] = _Registry({
    Backend.TORCH: BackendImpl(quantize_ref, dequantize_ref, lambda device: True),
})
AUTO_ORDER: dict[str, tuple[Backend, ...]] = {"cuda": (Backend.TRITON,), "cpu": (Backend.CPU,)}
_warned: set[tuple[Backend, str]] = set()


def register_backend(backend: Backend, impl: BackendImpl) -> None:
    """Make a fast backend selectable (called by the kernel modules on import)."""
    BACKENDS[backend] = impl


def resolve_backend(backend: Backend, device: torch.device) -> BackendImpl:
    """The implementation that will run for ``backend`` on ``device`` (remembered per pair)."""
    impl = _resolved.get((backend, device))
    if impl is None:
        impl = _resolved[(backend, device)] = _resolve(Backend(backend), device)
    return impl


def backend_in_use(backend: Backend | str, device: torch.device | str) -> Backend:
    """The backend `quantize` runs when asked for ``backend`` on ``device`` (``auto`` and unavailable
    backends resolved), e.g. for a results file."""
    impl = resolve_backend(Backend(backend), torch.device(device))
    return next(name for name, candidate in BACKENDS.items() if candidate is impl)


def _resolve(backend: Backend, device: torch.device) -> BackendImpl:
    if backend == Backend.AUTO:
        for candidate in AUTO_ORDER.get(device.type, ()):
            impl = BACKENDS.get(candidate)
            if impl is not None and impl.available(device):
                return impl
        return BACKENDS[Backend.TORCH]
    impl = BACKENDS.get(backend)
    if impl is not None and impl.available(device):
        return impl
    if (backend, device.type) not in _warned:
        _warned.add((backend, device.type))
        log.warning("tinykg: backend %r is not available on %s; using the PyTorch reference", backend.value, device.type)
    return BACKENDS[Backend.TORCH]


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"quantize expects a float32, float16 or bfloat16 tensor, got {x.dtype}")


def quantize(
    x: torch.Tensor,
    config: CompressionConfig,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    defer_exact: bool = False,
) -> PackedActivation:
    """Quantize ``x`` with unbiased stochastic rounding into a `PackedActivation`.

    Args:
        x: any shape, fp32/fp16/bf16, contiguous or not, possibly empty.
        config: bits, group size, metadata dtype, rounding mode, backend.
        generator: CPU ``torch.Generator`` from which the per-tensor seed is drawn (default: the quantizer's
            own once `tinykg.compress.seed_quantizer` set it, as tinykg's training loops do; else the global
            CPU generator, so ``torch.manual_seed`` makes runs reproducible).
        seed: use this 32-bit seed instead of drawing one. Same seed, same input -> identical codes on
            every backend.
        defer_exact: the result may be pending: whether any group must be kept exactly is read back from the
            device only at `PackedActivation.resolve` (called by `tinykg.nn`'s save and by `dequantize`),
            so the host does not wait for the device here. ``x`` must not change in place before then.
    """
    _check_input(x)
    if seed is None:
        seed = draw_seed(generator) if config.stochastic else 0
    if x.requires_grad and torch.is_grad_enabled():  # off inside an autograd Function's forward: no call
        x = x.detach()
    impl = resolve_backend(config.backend, x.device)
    if config.stochastic and not impl.reads_device_salt and current_device_salt() is not None:
        raise RuntimeError(
            f"tinykg: a CUDA-graph step quantizes with the Triton backend only, but this {x.device.type} tensor "
            f"goes to another ({config.backend.value!r} here): its seeds would be frozen into the graph")
    if defer_exact and impl.deferred_quantize is not None:
        return impl.deferred_quantize(x, config, seed)
    return impl.quantize(x, config, seed)


def dequantize(packed: PackedActivation, config: CompressionConfig | None = None) -> torch.Tensor:
    """Tensor of the original shape and dtype (contiguous) from a `PackedActivation`."""
    backend = config.backend if config is not None else Backend.AUTO
    return resolve_backend(backend, packed.device).dequantize(packed.resolve())
