"""The search behind benchmarks/bench_capacity.py: exact bracket, resolution, edge cases."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_capacity.py"
_SPEC = importlib.util.spec_from_file_location("bench_capacity", _PATH)
bench_capacity = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_capacity)


@pytest.mark.parametrize("threshold", [1, 2, 3, 255, 256, 257, 1000, 9824, 123_457])
@pytest.mark.parametrize("start", [1, 256, 5000])
def test_largest_fitting_exact_at_zero_resolution(threshold, start):
    calls = []

    def fits(x):
        calls.append(x)
        return x <= threshold

    lo, hi, probes = bench_capacity.largest_fitting(fits, start, 0.0, 1 << 24)
    assert (lo, hi) == (threshold, threshold + 1)
    assert probes == len(calls)
    assert probes <= 2 * (threshold.bit_length() + start.bit_length()) + 2


@pytest.mark.parametrize("resolution", [0.005, 0.02, 0.1])
def test_largest_fitting_brackets_within_resolution(resolution):
    threshold = 98_765
    lo, hi, _ = bench_capacity.largest_fitting(lambda x: x <= threshold, 256, resolution, 1 << 24)
    assert lo <= threshold < hi
    assert hi - lo <= max(1, int(resolution * lo))


def test_largest_fitting_nothing_fits_and_everything_fits():
    assert bench_capacity.largest_fitting(lambda x: False, 64, 0.0, 1000)[:2] == (0, 1)
    assert bench_capacity.largest_fitting(lambda x: True, 64, 0.0, 1000)[:2] == (1000, None)


def test_is_out_of_memory_recognises_allocation_failures():
    torch_message = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes."
    assert bench_capacity.is_out_of_memory(RuntimeError(torch_message))
    assert bench_capacity.is_out_of_memory(MemoryError())
    assert not bench_capacity.is_out_of_memory(RuntimeError("shape mismatch"))


def test_merge_rows_reads_rows_without_a_measure_as_held(tmp_path):
    """Rows written before ``--measure`` existed counted the bytes held: a new held row of the same key
    replaces them, a peak row is kept beside them."""
    import json

    path = tmp_path / "capacity.json"
    old = {"kind": "batch", "model": "kgcn", "bits": 2, "dataset": "synthetic", "budget_bytes": 64, "largest": 10}
    path.write_text(json.dumps([old]))
    key = ("kind", "model", "bits", "dataset", "measure", "budget_bytes")
    held, peak = {**old, "measure": "held", "largest": 11}, {**old, "measure": "peak", "largest": 3}
    assert bench_capacity.merge_rows(path, [held], key) == [held]
    assert bench_capacity.merge_rows(path, [peak], key) == [old, peak]
    assert bench_capacity._vs_fp32([{**peak, "bits": 32, "largest": 1}, peak], peak) == "3.0x"
    assert bench_capacity._vs_fp32([{**old, "bits": 32, "largest": 5}, peak], peak) == ""  # another measure
