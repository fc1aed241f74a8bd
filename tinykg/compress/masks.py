"""Bool masks (ReLU / LeakyReLU derivative signs, dropout keep-masks) packed 8 per byte.

Layout: little-endian, element ``j`` of a byte in bit ``j``, the tail zero-padded: ``pack_codes(mask, 1)``,
the reference. Three implementations write the same bytes:

- CPU tensors: numpy's ``packbits`` / ``unpackbits``, one C pass each (20x faster than the reference's
  shifts and sums on this 2-core machine).
- CUDA tensors with Triton: one kernel launch and one allocation each way. Off the CPU every torch call
  costs the host ~10 us and a sampled model's compressed step is bound by the host; the reference makes 6
  torch calls (3 of them kernel launches) to pack a mask and 7 (2 launches) to unpack it.
- Anything else: the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import triton_kernels
from .packed import pack_codes, unpack_codes

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


_CHOSEN: dict[torch.device, tuple[PackFn, UnpackFn]] = {}


def _impl(device: torch.device) -> tuple[PackFn, UnpackFn]:
    impl = _CHOSEN.get(device)
    if impl is None:
        if device.type == "cpu":
            impl = (pack_mask_numpy, unpack_mask_numpy)
        elif device.type == "cuda" and triton_kernels.available(device):
            impl = (triton_kernels.pack_mask_triton, triton_kernels.unpack_mask_triton)
        else:
            impl = (pack_mask_ref, unpack_mask_ref)
        _CHOSEN[device] = impl
    return impl


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """(ceil(numel / 8),) uint8 holding the bools of ``mask`` (any shape, row-major order)."""
    return _impl(mask.device)[0](mask)


def unpack_mask(bits: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The bool tensor of ``shape`` that `pack_mask` packed into ``bits``."""
    return _impl(bits.device)[1](bits, shape)
