"""Bool masks (ReLU / LeakyReLU derivative signs, dropout keep-masks) packed 8 per byte.

Layout: little-endian, element ``j`` of a byte in bit ``j``, the tail zero-padded: ``pack_codes(mask, 1)``,
the reference. Three implementations write the same bytes:

- CPU tensors: numpy's ``packbits`` / ``unpackbits``, one C pass each (20x faster than the reference's
  shifts and sums on this 2-core machine).
- CUDA tensors with Triton: one kernel launch and one allocation each way. Off the CPU every torch call
  costs the host ~10 us and a sampled model's compressed step is bound by the host; the reference makes 6
  torch calls (3 of them kernel launches) to pack a mask and 7 (2 launches) to unpack it.
- Anything else: the reference.

The ops that use masks go through three fused functions, each specified by the PyTorch expression in its
docstring (the fallback for other dtypes and devices) and run on fp32 tensors by one kernel that gives the
same bits and values: numba on the CPU (`tinykg.compress.cpu_kernels`), Triton on CUDA (one launch and at
most one allocation each, where the expressions make 2 to 12 torch calls):

- `pack_greater`: the mask of ``x > t`` (ReLU's sign), without the bool tensor;
- `keep_bits`: dropout's keep-mask, ``u_i >= p`` for the counter-based noise u of `tinykg.compress.rng`
  (a seed instead of a tensor of uniforms: ``torch.rand`` filled (11238, 64) in 2.9 ms on one thread here,
  the kernel takes 0.14 ms);
- `scale_by_mask`: ``g * (on where the bit is set, else off)``, i.e. the masked gradients of ReLU,
  LeakyReLU and dropout, without unpacking (on one thread, (11238, 64): 0.18 ms, against 0.80 ms for
  unpacking and the lerp this replaced).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from . import cpu_kernels, triton_kernels
from .packed import pack_codes, unpack_codes
from .rng import current_device_salt, uniform_noise

PackFn = Callable[[torch.Tensor], torch.Tensor]
UnpackFn = Callable[[torch.Tensor, torch.Size], torch.Tensor]


def pack_mask_numpy(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.numpy(), axis=None, bitorder="little"))


def unpack_mask_numpy(bits: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    ones = np.unpackbits(bits.numpy(), count=shape.numel(), bitorder="little")  # uint8 0 / 1
    return torch.from_numpy(ones).view(torch.bool).view(shape)


def pack_mask_ref(mask: torch.Tensor) -> torch.Tensor:
    return pack_codes(mask.reshape(-1), 1)


def unpack_mask_ref(bits: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return unpack_codes(bits, 1, shape.numel()).view(torch.bool).view(shape)  # 0 / 1 bytes as bools


class _Impl(NamedTuple):
    """What runs on one device: the packers, and the kernels of the fused ops (``"cpu"``: numba,
    ``"triton"``: CUDA, None: their PyTorch expressions)."""

    pack: PackFn
    unpack: UnpackFn
    fused: str | None


_CHOSEN: dict[torch.device, _Impl] = {}


def _impl(device: torch.device) -> _Impl:
    """Chosen once per device."""
    impl = _CHOSEN.get(device)
    if impl is None:
        if device.type == "cpu":
            impl = _Impl(pack_mask_numpy, unpack_mask_numpy, "cpu" if cpu_kernels.available(device) else None)
        elif device.type == "cuda" and triton_kernels.available(device):
            impl = _Impl(triton_kernels.pack_mask_triton, triton_kernels.unpack_mask_triton, "triton")
        else:
            impl = _Impl(pack_mask_ref, unpack_mask_ref, None)
        _CHOSEN[device] = impl
    return impl


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """(ceil(numel / 8),) uint8 holding the bools of ``mask`` (any shape, row-major order)."""
    return _impl(mask.device).pack(mask)


def unpack_mask(bits: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of ``shape`` that `pack_mask` packed into ``bits``."""
    return _impl(bits.device).unpack(bits, shape)


def _fused(*tensors: torch.Tensor) -> str | None:
    """The fused kernels' kind (`_Impl.fused`) for contiguous fp32 tensors on one device (what the kernels
    read), else None."""
    device = tensors[0].device
    if not all(t.device == device and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return None
    return _impl(device).fused


def _kernel_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the fused kernels read it: a non-contiguous fp32 tensor (a transposed or expanded gradient)
    copied to contiguous memory where they exist, else ``t``. One copy, then one pass, where the expression
    makes 2 to 12 calls: on one thread a (1000, 64) LeakyReLU backward from ``y.sum().backward()``, whose
    gradient is an expanded scalar, took 0.24 ms through the expression."""
    if t.dtype == torch.float32 and not t.is_contiguous() and _impl(t.device).fused is not None:
        return t.contiguous()
    return t


def pack_greater(x: torch.Tensor, threshold: float = 0.0, *, or_equal: bool = False) -> torch.Tensor:
    """``pack_mask(x >= threshold if or_equal else x > threshold)``, the comparison made in ``x``'s dtype."""
    x = _kernel_layout(x)
    fused = _fused(x)
    if fused == "cpu":
        return cpu_kernels.pack_greater_cpu(x, threshold, or_equal)
    if fused == "triton":
        return triton_kernels.pack_greater_triton(x, threshold, or_equal)
    return pack_mask(x >= threshold if or_equal else x > threshold)


def keep_bits(numel: int, p: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dropout's keep-mask of ``numel`` elements, packed: ``pack_mask(uniform_noise(numel, seed) >= p)``.

    Each element is kept with probability 1 - p (to within 2**-24: the noise is a multiple of 2**-24).
    """
    device = torch.device(device)
    fused = _impl(device).fused
    if fused == "triton":
        return triton_kernels.keep_bits_triton(numel, p, seed, device)
    if current_device_salt() is not None:
        raise RuntimeError(f"tinykg: a CUDA-graph step draws dropout masks with the Triton kernels only, not on "
                           f"{device}: their seeds would be frozen into the graph")
    if fused == "cpu":
        return cpu_kernels.keep_bits_cpu(numel, p, seed)
    return pack_mask(uniform_noise(numel, seed, device) >= p)


def scale_by_mask(
    bits: torch.Tensor, g: torch.Tensor, on: float, off: float, *, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch.where(unpack_mask(bits, g.shape), g * on, g * off)`` (``g`` itself where ``on == 1``), into
    ``out`` if given (which may be ``g``). ``on`` and ``off`` are rounded to ``g``'s dtype, as ``g * on``
    rounds them; ``off == 0`` gives ``g * 0``, so a NaN or infinite ``g`` stays NaN where the bit is unset."""
    if out is None:
        contiguous = _kernel_layout(g)
        if contiguous is not g:  # a fresh copy: the kernel scales it in place
            g = out = contiguous
    fused = _fused(g) if out is None else _fused(g, out) if out.shape == g.shape else None
    if fused is not None:
        out = torch.empty_like(g) if out is None else out
        if fused == "cpu":
            return cpu_kernels.scale_by_mask_cpu(bits, g, on, off, out)
        return triton_kernels.scale_by_mask_triton(bits, g, on, off, out)
    mask = unpack_mask(bits, g.shape)
    return torch.where(mask, g if on == 1.0 else g * on, g * off, out=out)
