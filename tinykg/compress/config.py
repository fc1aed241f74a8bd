"""`CompressionConfig`: how an activation is stored for the backward pass."""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass

import torch

ALLOWED_BITS = (1, 2, 4, 8)
METADATA_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Bits of one group's metadata (a scale and a zero-point), read for every saved tensor: a table, not finfo.
_METADATA_BITS = {name: 2 * torch.finfo(dtype).bits for name, dtype in METADATA_DTYPES.items()}
ROW = "row"


class Backend(str, enum.Enum):
    """Which implementation quantizes and packs.

    ``TORCH`` is the pure-PyTorch reference and the specification; every other backend must produce the
    same codes. ``AUTO`` picks the fastest one available for the tensor's device.
    """

    AUTO = "auto"
    TORCH = "torch"
    TRITON = "triton"
    CPU = "cpu"


def _as_int(value):
    """``value`` as a Python int if it is an integer of any kind (not a bool); else unchanged, for the
    caller's check to reject with its own message."""
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


@dataclass(frozen=True)
class CompressionConfig:
    """Storage format for saved activations.

    Args:
        bits: code width, one of 1, 2, 4, 8.
        group_size: elements sharing one (scale, zero_point) pair: a power of two, or ``"row"`` for whole
            rows of the last dimension (EXACT's per-node grouping).
        metadata_dtype: storage dtype of scale and zero-point: ``"fp16"`` (default), ``"bf16"``, ``"fp32"``.
        stochastic: unbiased stochastic rounding (default); ``False`` rounds to nearest (biased, lower
            variance; useful for ablations only).
        backend: implementation, see `Backend`.
        min_numel: the generic saved-tensor hook leaves tensors with fewer elements uncompressed (their
            metadata would cost more than it saves).
    """

    bits: int = 2
    group_size: int | str = 256
    metadata_dtype: str = "fp16"
    stochastic: bool = True
    backend: Backend | str = Backend.AUTO
    min_numel: int = 1024

    def __post_init__(self) -> None:
        # Integer-like values (numpy integers) are taken as Python ints; floats such as 2.0 are not.
        object.__setattr__(self, "bits", _as_int(self.bits))
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in ALLOWED_BITS:
            raise ValueError(f"bits must be one of {ALLOWED_BITS}, got {self.bits!r}")
        if self.group_size != ROW:
            object.__setattr__(self, "group_size", _as_int(self.group_size))
        gs = self.group_size
        if gs != ROW and not (isinstance(gs, int) and gs >= 1 and gs & (gs - 1) == 0):
            raise ValueError(f"group_size must be a power of two (1, 2, 4, ...) or {ROW!r}, got {gs!r}")
        if self.metadata_dtype not in METADATA_DTYPES:
            raise ValueError(
                f"metadata_dtype must be one of {tuple(METADATA_DTYPES)}, got {self.metadata_dtype!r}"
            )
        if not isinstance(self.stochastic, bool):
            raise ValueError(f"stochastic must be True or False, got {self.stochastic!r}")
        try:
            backend = Backend(self.backend)
        except ValueError:
            raise ValueError(
                f"backend must be one of {tuple(b.value for b in Backend)}, got {self.backend!r}"
            ) from None
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "min_numel", _as_int(self.min_numel))
        if not isinstance(self.min_numel, int) or self.min_numel < 0:
            raise ValueError(f"min_numel must be a non-negative int, got {self.min_numel!r}")

    @property
    def torch_metadata_dtype(self) -> torch.dtype:
        return METADATA_DTYPES[self.metadata_dtype]

    @property
    def metadata_bits(self) -> int:
        """Bits of metadata per group: one scale and one zero-point."""
        return _METADATA_BITS[self.metadata_dtype]

    def ideal_ratio(self, row_size: int | None = None) -> float:
        """fp32 bits over stored bits per element: 32 / (bits + metadata_bits / group_size)."""
        group = row_size if self.group_size == ROW else self.group_size
        if group is None:
            raise ValueError("ideal_ratio needs row_size when group_size='row'")
        return 32.0 / (self.bits + self.metadata_bits / group)
