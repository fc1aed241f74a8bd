"""Activation compression: unbiased stochastic-rounding quantization to 1/2/4/8 bits, bit packing,
saved-tensor hooks and backend choice; the baselines it is measured against (bf16 storage, checkpointing).
Knows nothing about graphs or models."""

from .config import ALLOWED_BITS, METADATA_DTYPES, ROW, Backend, CompressionConfig
from .hooks import (
    cast_saved_tensors, compress_saved_tensors, is_parameter_like, observe_saved_tensors, saving_packed, storage_key,
)
from .packed import PackedActivation, PackedMeta, narrowest_int_dtype, pack_codes, unpack_codes
from .quantize import BACKENDS, BackendImpl, dequantize, quantize, register_backend, resolve_backend
from .recompute import checkpoint
from .reference import dequantize_ref, quantize_ref
from .rng import draw_seed, quantizer_generator, restoring_quantizer_seed, seed_quantizer, uniform_noise

__all__ = [
    "ALLOWED_BITS", "METADATA_DTYPES", "ROW", "Backend", "CompressionConfig",
    "compress_saved_tensors", "cast_saved_tensors", "checkpoint", "observe_saved_tensors", "saving_packed", "is_parameter_like", "storage_key",
    "PackedActivation", "PackedMeta", "narrowest_int_dtype", "pack_codes", "unpack_codes",
    "BACKENDS", "BackendImpl", "dequantize", "quantize", "register_backend", "resolve_backend",
    "dequantize_ref", "quantize_ref", "draw_seed", "quantizer_generator", "restoring_quantizer_seed", "seed_quantizer", "uniform_noise",
]

# Fast backends register themselves here (Backend.CPU: numba, Backend.TRITON); each compiles its kernels on
# first use and reports itself unavailable, never raising, when its package is missing.
from . import cpu_kernels as _cpu_kernels  # noqa: E402,F401
from . import triton_kernels as _triton_kernels  # noqa: E402,F401
