"""Every benchmark script runs in its --smoke mode, so none of them rots."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke(script):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "|" in proc.stdout  # printed its markdown table


def test_bench_step_cpu_peak_sees_what_compression_frees():
    """``--cpu-peak`` on RippleNet's toy step: a peak for each, and the 2-bit one lower: fp32 keeps the
    gathered (B, M, d) memories and the KGE term's (B, M, d, d) rows, the 2-bit step a few packed copies."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--smoke", "--cpu-peak", "--models", "ripplenet"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| ripplenet"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[4:7] == ["n/a"] * 3  # nothing timed under the profiler
    peak_fp32, peak_packed = (int(cell.replace(",", "")) for cell in cells[10:12])
    assert peak_fp32 > 2 * peak_packed > 0


def test_bench_models_merges_runs_files_later_first_and_tables_only_what_was_asked(tmp_path, capsys):
    """Finished runs are reused from every --runs file (a later file's run replaces an earlier one of the
    same setting) and the table holds only the runs the command asks for: nothing trains here."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_models
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import json

    def run(bits, seed, auc, act):
        return {"model": "kgcn", "dataset": "synthetic", "bits": bits, "seed": seed, "metrics": {"auc": auc, "f1": 0.5},
                "activation_bytes": act, "activation_bytes_fp32": 1000, "epoch_seconds": 1.0, "epochs": 1,
                "best_epoch": 1, "epochs_requested": 1, "overrides": {}, "history": []}

    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text("".join(json.dumps(r) + "\n" for r in (run(32, 0, 0.8, 1000), run(1, 0, 0.5, 50), run(4, 0, 0.7, 200))))
    new.write_text(json.dumps(run(1, 0, 0.79, 60)) + "\n")
    merged = {(r["bits"], r["metrics"]["auc"]) for r in bench_models._load_runs([old, new])}
    assert merged == {(32, 0.8), (1, 0.79), (4, 0.7)}
    assert bench_models.main(["--models", "kgcn", "--bits", "32", "1", "--seeds", "0", "--epochs", "1",
                              "--runs", str(old), str(new)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| kgcn")]
    assert len(rows) == 2 and "0.7900" in rows[1] and "-1.25%" in rows[1] and "16.7x" in rows[1]
    assert new.read_text().count("\n") == 1  # nothing trained, nothing appended


def test_bench_models_compares_early_stopped_runs_that_stopped_at_different_epochs(tmp_path, capsys):
    """With --patience, fp32 and 2-bit runs stop at different epochs; they are one setting (budget and
    patience) and compared, and they never stand in for runs of the same model without early stopping."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_models
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import json

    def run(bits, recall, epochs, best):
        return {"model": "kgin", "dataset": "synthetic", "bits": bits, "seed": 0,
                "metrics": {"recall@20": recall, "ndcg@20": 0.1}, "activation_bytes": 1000 if bits == 32 else 40,
                "activation_bytes_fp32": 1000, "epoch_seconds": 1.0, "epochs": epochs, "best_epoch": best,
                "epochs_requested": None, "epoch_budget": 30, "overrides": {}, "history": [], "patience": 2}

    runs = tmp_path / "runs.jsonl"
    runs.write_text(json.dumps(run(32, 0.2, 25, 15)) + "\n" + json.dumps(run(2, 0.19, 30, 20)) + "\n")
    assert bench_models.main(["--models", "kgin", "--bits", "32", "2", "--seeds", "0", "--patience", "2",
                              "--runs", str(runs)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| kgin")]
    assert len(rows) == 2 and all("<= 30, stop after 2 evals" in r for r in rows)
    assert "-5.00%" in rows[1] and rows[1].endswith("| 20 |") and "25.0x" in rows[1]
    assert runs.read_text().count("\n") == 2  # both reused: nothing trained
    without = {bench_models._key(r) for r in bench_models._load_runs([runs])}
    assert ("kgin", "synthetic", 2, 0, None, "", 0) not in without  # a run without patience is another setting
    # Settings sort by their epoch count as a number, not as text ("100" < "20"), early-stopped ones by budget.
    fixed = [dict(run(32, 0.2, e, e), patience=0) for e in (100, 20)]
    order = [line.split(" | ")[3] for line in bench_models.table([*fixed, run(32, 0.2, 25, 15)]).splitlines()[2:]]
    assert order == ["20", "<= 30, stop after 2 evals", "100"]


def test_bench_models_set_parses_numbers_json_lists_null_and_words():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_models
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import argparse

    assert bench_models._parse_set("lr=0.001") == ("lr", 0.001)
    assert bench_models._parse_set("num_hops=2") == ("num_hops", 2)
    assert bench_models._parse_set("layer_sizes=[64,32]") == ("layer_sizes", [64, 32])
    assert bench_models._parse_set("head_bits=null") == ("head_bits", None)
    assert bench_models._parse_set("aggregator=concat") == ("aggregator", "concat")
    with pytest.raises(argparse.ArgumentTypeError, match="not valid JSON"):
        bench_models._parse_set("layer_sizes=[64,")


def test_gpu_check_smoke_under_the_triton_interpreter(tmp_path):
    """gpu_check.py's correctness, throughput, launch-setting sweep and op-count sections run on CPU tensors
    under TRITON_INTERPRET=1 (the GPU lease runs the same code), and every setting's codes match the
    reference."""
    import json
    import os

    pytest.importorskip("triton")
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--sweep", "--count-ops",
         "--device-chunks", "0", "1048576", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["all_correct"] and report["correctness"]
    sweep = report["quantize_sweep"]
    assert len(sweep) == 4 * 12 and all(row["codes_equal_reference_64M"] for row in sweep)
    # The GPU's code path per training step: every compressed model issues Triton launches, and the torch
    # ops it dispatches on top of fp32's stay within half of fp32's own (a budget: GPU steps are bound by the
    # host; session 7's code dispatched 1.9x / 2.1x fp32's ops for KGCN / KGAT, this session's 1.3x).
    counts = report["step_ops"]
    assert {row["model"].split()[0] for row in counts} == {"KGCN", "KGAT"}
    for row in counts:
        assert row["2-bit_triton_launches"] > 0 and row["fp32_triton_launches"] == 0, row
        assert row["2-bit_torch_ops"] <= 1.5 * row["fp32_torch_ops"], row
