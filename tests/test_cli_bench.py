"""``tinykg bench``: dispatches to the scripts of benchmarks/ and fails in one line without a checkout."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinykg import cli

ROOT = Path(__file__).resolve().parents[1]


def test_bench_every_name_maps_to_a_script():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert {name for name, script in cli.BENCH_SCRIPTS.items() if script not in scripts} == set()
    # ... and every benchmark script (plots.py included) has a name.
    assert {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")} <= set(cli.BENCH_SCRIPTS.values())


def test_bench_forwards_arguments_to_the_script(tmp_path, capsys):
    runs = [{"model": "kgcn", "dataset": "d", "bits": bits, "seed": 0, "epochs": 1, "metrics": {"auc": 0.7},
             "activation_bytes": 1000 * bits} for bits in (32, 2)]
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    out = tmp_path / "plots"
    assert cli.main(["bench", "plots", "--runs", str(tmp_path / "runs.jsonl"), "--out", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {"memory_vs_bits.png", "metric_vs_bits.png", "pareto.png"}
    assert "|" in capsys.readouterr().out


def test_bench_console_entry_runs_a_smoke_mode():
    proc = subprocess.run([sys.executable, "-m", "tinykg", "bench", "plots", "--smoke"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pareto.png" in proc.stdout


def test_bench_without_a_source_checkout_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_benchmarks_root", lambda: tmp_path / "benchmarks")
    assert cli.main(["bench", "models", "--smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("tinykg: error:") and "source checkout" in err


def test_bench_missing_script_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench_models.py").write_text("def main(argv):\n    return 0\n")
    monkeypatch.setattr(cli, "_benchmarks_root", lambda: tmp_path)
    assert cli.main(["bench", "alternatives"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinykg: error:") and "bench_alternatives.py" in err


def test_bench_passes_the_script_exit_status(tmp_path, monkeypatch):
    (tmp_path / "bench_models.py").write_text("def main(argv):\n    return 3 if argv == ['--x', 'y'] else 0\n")
    monkeypatch.setattr(cli, "_benchmarks_root", lambda: tmp_path)
    assert cli.main(["bench", "models", "--x", "y"]) == 3
    assert cli.main(["bench", "models"]) == 0


def test_bench_unknown_name_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "nonsense"])
    assert exc.value.code == 2


def test_bench_scripts_import_their_sibling_scripts(tmp_path, monkeypatch):
    # bench_fp32_cannot.py imports bench_capacity.py, as `python benchmarks/bench_fp32_cannot.py` allows.
    (tmp_path / "bench_models.py").write_text("def main(argv):\n    return 0\n")
    (tmp_path / "tinykg_sibling_for_test.py").write_text("ANSWER = 7\n")
    (tmp_path / "bench_step.py").write_text(
        "import tinykg_sibling_for_test\n\ndef main(argv):\n    return tinykg_sibling_for_test.ANSWER\n")
    monkeypatch.setattr(cli, "_benchmarks_root", lambda: tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the path entry the command adds is undone after the test
    assert cli.main(["bench", "step"]) == 7
