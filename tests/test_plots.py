"""benchmarks/plots.py: input formats, the Pareto front, and small readable PNGs."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tinykg_bench_plots", ROOT / "benchmarks" / "plots.py")
plots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plots)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9), (0.5, 0.4), (4, 0.8), (5, 0.9)]
    assert plots.pareto_front(points) == [(0.5, 0.4), (1, 0.5), (2, 0.7), (4, 0.9)]


def test_runs_of_bench_models_default_to_fp32_and_tinykg():
    fp32 = plots.normalise_run({"model": "kgcn", "dataset": "d", "bits": 32, "metrics": {"auc": 0.8, "f1": 0.7}, "activation_bytes": 100})
    packed = plots.normalise_run({"model": "kgat", "dataset": "d", "bits": 2, "metrics": {"recall@20": 0.1}, "activation_bytes": 7})
    assert (fp32["method"], fp32["metric_name"], fp32["metric"]) == ("fp32", "auc", 0.8)
    assert (packed["method"], packed["metric_name"], packed["activation_peak_bytes"]) == ("tinykg", "recall@20", 7)


def test_aggregate_averages_seeds_and_keeps_one_epoch_count():
    runs = [plots.normalise_run({"model": "m", "dataset": "d", "bits": 2, "seed": s, "epochs": e, "metrics": {"auc": a}, "activation_bytes": 10})
            for s, e, a in ((0, 10, 0.7), (1, 10, 0.9), (0, 1, 0.1))]
    point = plots.aggregate(runs)[("m", "d")][("tinykg", 2)]
    assert point["seeds"] == 2 and point["epochs"] == 10 and point["metric"] == pytest.approx(0.8)


def test_capacity_rows_are_validated(tmp_path):
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps({"results": [{"model": "kgcn", "bits": 2, "budget_bytes": 1, "largest": 5, "kind": "rows"}]}))
    with pytest.raises(ValueError, match="kind"):
        plots.load_capacity(path)
    path.write_text(json.dumps([{"model": "kgcn", "bits": 2, "largest": 5, "kind": "batch"}]))
    with pytest.raises(ValueError, match="budget_bytes"):
        plots.load_capacity(path)
    assert plots.load_capacity(tmp_path / "absent.json") == []


def test_make_plots_writes_every_plot_as_a_small_png(tmp_path):
    runs_path, capacity_path = plots._smoke_inputs(tmp_path)
    runs, steps = plots.load_runs([runs_path, tmp_path / "absent.jsonl"])
    written = plots.make_plots(runs, steps, plots.load_capacity(capacity_path), tmp_path / "out")
    assert {p.name for p in written} == {"memory_vs_bits.png", "metric_vs_bits.png", "pareto.png", "step_time.png", "capacity_vs_bits.png"}
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and 10_000 < len(data) < 200_000
    without = plots.make_plots(runs, steps, [], tmp_path / "no_capacity")
    assert "capacity_vs_bits.png" not in {p.name for p in without}
