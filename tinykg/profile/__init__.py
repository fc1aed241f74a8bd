"""Exact activation-memory accounting and timing helpers for benchmarks."""

from .memory import ActivationReport, ActivationTracker, activation_bytes, peak_allocated, tensor_storage_bytes
from .timing import median_time, time_ratio

__all__ = ["ActivationReport", "ActivationTracker", "activation_bytes", "peak_allocated", "tensor_storage_bytes", "median_time", "time_ratio"]
