"""PNG plots from the benchmarks' JSON outputs: memory vs bits, metric vs bits, the memory/accuracy Pareto
front with the alternatives on it, step time per method, and capacity vs bits.

    python benchmarks/plots.py --runs benchmarks/results/alternatives_*.json --capacity benchmarks/results/capacity.json
    python benchmarks/plots.py --smoke          # made-up numbers into a temporary folder (run by the tests)

Inputs (any mix; a missing file is skipped with a message):

* ``--runs``: training runs, from ``bench_alternatives.py --json`` (an object with ``runs`` and
  ``step_times``) or the ``--runs`` JSON-lines files of ``bench_alternatives.py`` / ``bench_models.py``.
  A run needs ``model``, ``dataset``, ``bits``, ``activation_bytes`` and ``metrics`` (or ``metric``);
  ``method`` defaults to ``fp32`` at 32 bits and ``tinykg`` below.
* ``--capacity``: the capacity search (``bench_capacity.py``), a JSON list -- or an object whose
  ``results`` is that list -- of ``{"model", "bits", "budget_bytes", "largest", "kind"}`` with ``kind``
  ``"batch"`` (largest batch size, sampled models) or ``"triples"`` (largest synthetic graph in KG
  triples, full-graph models); optional ``"dataset"``. Without it the capacity plot is skipped.

Writes ``memory_vs_bits.png``, ``metric_vs_bits.png``, ``pareto.png``, ``step_time.png`` (when step
timings are present) and ``capacity_vs_bits.png`` into ``--out`` and prints a markdown list of them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

BITS_ORDER = (32, 16, 8, 4, 2, 1)
METHOD_STYLE = {  # colour and marker of each method, the same in every plot
    "fp32": ("black", "s"),
    "tinykg": ("tab:blue", "o"),
    "bf16": ("tab:orange", "D"),
    "checkpoint": ("tab:green", "^"),
    "recbole": ("tab:purple", "v"),
}
DPI = 110


# -- loading ------------------------------------------------------------------------------------------------


def _read(path: Path) -> object:
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON lines


def _metric(run: dict) -> tuple[str, float]:
    if "metric" in run and "metric_name" in run:
        return run["metric_name"], float(run["metric"])
    metrics = run["metrics"]
    for name in ("auc", "recall@20"):
        if name in metrics:
            return name, float(metrics[name])
    raise ValueError(f"run has no auc or recall@20: {sorted(metrics)}")


def normalise_run(run: dict) -> dict:
    """The fields the plots read, with defaults for runs of bench_models.py (no ``method``)."""
    method = run.get("method") or ("fp32" if run["bits"] == 32 else "tinykg")
    metric_name, metric = _metric(run)
    held = int(run["activation_bytes"])
    return {
        "model": run["model"], "dataset": run["dataset"], "method": method, "bits": int(run["bits"]),
        "epochs": run.get("epochs"), "metric_name": metric_name, "metric": metric, "activation_bytes": held,
        "activation_peak_bytes": int(run.get("activation_peak_bytes") or held),
        "granularity": run.get("checkpoint_granularity"),
    }


def load_runs(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """(runs, step timings) from every readable file; duplicates (same run in two files) are kept once."""
    runs, steps, seen = [], [], set()
    for path in paths:
        if not path.exists():
            print(f"plots: {path} not found, skipped", file=sys.stderr)
            continue
        data = _read(path)
        items = data.get("runs", []) if isinstance(data, dict) else data
        if isinstance(data, dict):
            steps += data.get("step_times", [])
        for run in items:
            key = (run["model"], run["dataset"], run.get("method"), run["bits"], run.get("seed"), run.get("epochs"))
            if key not in seen:
                seen.add(key)
                runs.append(normalise_run(run))
    return runs, steps


def load_capacity(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    data = _read(path)
    rows = data.get("results", []) if isinstance(data, dict) else data
    for row in rows:
        missing = {"model", "bits", "budget_bytes", "largest", "kind"} - set(row)
        if missing:
            raise ValueError(f"{path}: capacity row without {sorted(missing)}: {row}")
        if row["kind"] not in ("batch", "triples"):
            raise ValueError(f"{path}: capacity kind must be 'batch' or 'triples', got {row['kind']!r}")
    return rows


# -- aggregation --------------------------------------------------------------------------------------------


def aggregate(runs: list[dict]) -> dict[tuple, dict[tuple, dict]]:
    """{(model, dataset): {(method, bits): mean/std metric, memory, label}} over seeds. Runs of one
    (model, dataset) with different epoch counts are not mixed: the most common count is kept."""
    panels: dict[tuple, list[dict]] = {}
    for run in runs:
        panels.setdefault((run["model"], run["dataset"]), []).append(run)
    out = {}
    for panel, rs in sorted(panels.items()):
        epochs = statistics.mode(r["epochs"] for r in rs)
        points: dict[tuple, list[dict]] = {}
        for r in rs:
            if r["epochs"] == epochs:
                points.setdefault((r["method"], r["bits"]), []).append(r)
        out[panel] = {}
        for (method, bits), group in points.items():
            metrics = [r["metric"] for r in group]
            label = f"tinykg {bits}-bit" if method == "tinykg" else method
            if group[0]["granularity"]:
                label += f" ({group[0]['granularity']})"
            out[panel][(method, bits)] = {
                "method": method, "bits": bits, "label": label, "epochs": epochs, "seeds": len(group),
                "metric_name": group[0]["metric_name"], "metric": statistics.mean(metrics),
                "metric_std": statistics.stdev(metrics) if len(metrics) > 1 else 0.0,
                "held": group[0]["activation_bytes"], "peak": group[0]["activation_peak_bytes"],
            }
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (less memory, higher metric), by memory."""
    front, best = [], float("-inf")
    for memory, metric in sorted(points, key=lambda p: (p[0], -p[1])):
        if metric > best:
            front.append((memory, metric))
            best = metric
    return front


# -- plots --------------------------------------------------------------------------------------------------


def _unit(largest_bytes: float) -> tuple[str, float]:
    """(name, bytes per unit) that keeps the numbers on an axis readable."""
    for name, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if largest_bytes >= size:
            return name, size
    return "B", 1


def _bits_axis(ax, bits: list[int]) -> None:
    ticks = [b for b in BITS_ORDER if b in bits]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(b) for b in ticks])
    ax.minorticks_off()
    ax.set_xlim(max(ticks) * 1.4, min(ticks) / 1.4)  # fewer bits to the right
    ax.set_xlabel("bits per stored activation value (32 = fp32, 16 = bf16)")


def _grid(n: int, width: float = 5.6, height: float = 4.0, max_cols: int = 2):
    cols = min(n, max_cols)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _panel_title(panel: tuple, points: dict) -> str:
    any_point = next(iter(points.values()))
    epochs = any_point["epochs"]
    return f"{panel[0]} on {panel[1]} ({epochs} epoch{'' if epochs == 1 else 's'})"


def plot_memory_vs_bits(panels: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    all_bits = set()
    unit, size = _unit(max(p["held"] for points in panels.values() for p in points.values()))
    for (model, dataset), points in panels.items():
        line = sorted((p for p in points.values() if p["method"] in ("fp32", "tinykg")), key=lambda p: -p["bits"])
        if not line:
            continue
        handle, = ax.plot([p["bits"] for p in line], [p["held"] / size for p in line], marker="o", label=f"{model}, {dataset}: fp32 / tinykg")
        all_bits |= {p["bits"] for p in line}
        bf16 = points.get(("bf16", 16))
        if bf16:
            ax.plot([16], [bf16["held"] / size], marker="D", linestyle="none", color=handle.get_color(), markerfacecolor="white", label=f"{model}, {dataset}: bf16 storage")
            all_bits.add(16)
    if not all_bits:
        plt.close(fig)
        return
    _bits_axis(ax, sorted(all_bits))
    ax.set_yscale("log")
    ax.set_ylabel(f"activation memory held for backward per step ({unit}, log)")
    ax.set_title("Activation memory vs bits")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_metric_vs_bits(panels: dict, path: Path) -> None:
    fig, axes = _grid(len(panels))
    for ax, (panel, points) in zip(axes, panels.items()):
        line = sorted((p for p in points.values() if p["method"] in ("fp32", "tinykg")), key=lambda p: -p["bits"])
        bits = [p["bits"] for p in line]
        ax.errorbar(bits, [p["metric"] for p in line], yerr=[p["metric_std"] for p in line], marker="o", capsize=3, color=METHOD_STYLE["tinykg"][0], label="fp32 / tinykg (mean ± std over seeds)")
        fp32 = points.get(("fp32", 32))
        if fp32:
            ax.axhline(fp32["metric"], color="black", linestyle="--", linewidth=1, label="fp32")
        bf16 = points.get(("bf16", 16))
        if bf16:
            ax.errorbar([16], [bf16["metric"]], yerr=[bf16["metric_std"]], marker="D", capsize=3, color=METHOD_STYLE["bf16"][0], linestyle="none", label="bf16 storage")
            bits.append(16)
        _bits_axis(ax, bits)
        metric_name = next(iter(points.values()))["metric_name"]
        ax.set_ylabel(f"test {metric_name}")
        ax.set_title(_panel_title(panel, points))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Test metric vs bits")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_pareto(panels: dict, path: Path) -> None:
    fig, axes = _grid(len(panels), width=9.0, height=4.4, max_cols=1)  # legends sit right of each panel
    for ax, (panel, points) in zip(axes, panels.items()):
        unit, size = _unit(max(p["peak"] for p in points.values()))
        labelled = set()
        placed: list[tuple[float, float]] = []  # annotated (x, y): nearly coincident points get stacked labels
        for p in sorted(points.values(), key=lambda p: (p["method"], -p["bits"])):
            color, marker = METHOD_STYLE.get(p["method"], ("gray", "x"))
            label = "tinykg (bits annotated)" if p["method"] == "tinykg" else p["label"]
            if label in labelled:
                label = None  # one legend entry per method
            labelled.add(label)
            ax.errorbar([p["peak"] / size], [p["metric"]], yerr=[p["metric_std"]], marker=marker, color=color, capsize=2, linestyle="none", markersize=7, label=label)
            if p["peak"] != p["held"]:  # checkpointing: held after forward vs peak while recomputing
                ax.plot([p["held"] / size, p["peak"] / size], [p["metric"]] * 2, color=color, linestyle=":", linewidth=1)
                ax.plot([p["held"] / size], [p["metric"]], marker=marker, color=color, markerfacecolor="white", linestyle="none", markersize=7, label=f"{p['label']}, held after forward only")
            below = p["method"] == "checkpoint"  # fp32 and checkpointing peak at about the same memory
            x, y = p["peak"] / size, p["metric"]
            # e.g. KGCN's 1-bit and 2-bit points: 5,952 vs 6,000 B and equal AUC to 3 digits
            clashes = 0
            if p["method"] == "tinykg":  # the other methods' labels are placed by the rule above
                clashes = sum(1 for px, py in placed if abs(math.log10(px / x)) < 0.05 and abs(py - y) <= 1e-3 * abs(y))
                placed.append((x, y))
            ax.annotate(f"{p['bits']}b" if p["method"] == "tinykg" else p["method"], (x, y), textcoords="offset points",
                        xytext=(5, (-10 if below else 4) - 9 * clashes), fontsize=7)
        front = pareto_front([(p["peak"], p["metric"]) for p in points.values()])
        ax.step([m / size for m, _ in front], [v for _, v in front], where="post", color="gray", alpha=0.6, linewidth=1.5, label="Pareto front (peak memory)")
        ax.set_xscale("log")
        ax.margins(x=0.12)  # room for the annotations of the outermost points
        ax.set_xlabel(f"activation memory per step ({unit}, log): held for backward, incl. recomputation")
        ax.set_ylabel(f"test {next(iter(points.values()))['metric_name']}")
        ax.set_title(_panel_title(panel, points))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle("Memory / accuracy trade-off (up and left is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_step_time(steps: list[dict], path: Path) -> None:
    panels: dict[tuple, list[dict]] = {}
    for row in steps:
        panels.setdefault((row["model"], row["dataset"]), []).append(row)
    fig, axes = _grid(len(panels), width=6.0, height=3.8)

    def order(row: dict) -> tuple:  # bf16, tinykg from most to fewest bits, checkpointing
        method, _, bits = row["method"].partition("-")
        return ({"bf16": 0, "tinykg": 1}.get(method, 2), -int(bits) if bits.isdigit() else 0)

    for ax, ((model, dataset), rows) in zip(axes, sorted(panels.items())):
        rows = sorted(rows, key=order)
        names = [r["method"].replace("tinykg-", "tinykg\n") + ("-bit" if r["method"].startswith("tinykg-") else "") for r in rows]
        colors = [METHOD_STYLE.get(r["method"].split("-")[0], ("gray", "x"))[0] for r in rows]
        bars = ax.bar(names, [r["ratio"] for r in rows], color=colors)
        ax.bar_label(bars, labels=[f"{r['ratio']:.2f}" for r in rows], fontsize=8)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="fp32")
        ax.set_ylabel("training-step time / fp32 step time")
        ax.set_xlabel("method (timed round robin with fp32 in one process)")
        ax.set_title(f"{model} on {dataset}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Step time relative to fp32 (median of repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_capacity(rows: list[dict], path: Path) -> None:
    kinds = sorted({r["kind"] for r in rows})
    fig, axes = _grid(len(kinds), width=5.6, height=4.0)
    units = {"batch": "largest batch size that fits (rows, log)", "triples": "largest synthetic graph that fits (KG triples, log)"}
    for ax, kind in zip(axes, kinds):
        lines: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["kind"] == kind:
                lines.setdefault((r["model"], r.get("dataset"), r["budget_bytes"]), []).append(r)
        bits = set()
        for (model, dataset, budget), rs in sorted(lines.items(), key=lambda kv: str(kv[0])):
            rs = sorted(rs, key=lambda r: -r["bits"])
            name = f"{model}{f', {dataset}' if dataset else ''}, budget {budget / 2**20:,.0f} MiB"
            ax.plot([r["bits"] for r in rs], [r["largest"] for r in rs], marker="o", label=name)
            bits |= {r["bits"] for r in rs}
        _bits_axis(ax, sorted(bits))
        ax.set_yscale("log")
        ax.set_ylabel(units[kind])
        ax.set_title(f"Capacity under a fixed activation budget ({kind})")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def make_plots(runs: list[dict], steps: list[dict], capacity: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    panels = aggregate(runs)
    if panels:
        for name, plot in (("memory_vs_bits.png", plot_memory_vs_bits), ("metric_vs_bits.png", plot_metric_vs_bits), ("pareto.png", plot_pareto)):
            plot(panels, out / name)
            if (out / name).exists():
                written.append(out / name)
    if steps:
        plot_step_time(steps, out / "step_time.png")
        written.append(out / "step_time.png")
    if capacity:
        plot_capacity(capacity, out / "capacity_vs_bits.png")
        written.append(out / "capacity_vs_bits.png")
    else:
        print("plots: no capacity results (--capacity), capacity_vs_bits.png skipped", file=sys.stderr)
    return written


def _smoke_inputs(folder: Path) -> tuple[Path, Path]:
    """Made-up runs and capacity rows in the formats above (shape only, not measurements)."""
    runs = []
    for seed in (0, 1):
        for method, bits, held, metric in (("fp32", 32, 1e6, 0.80), ("tinykg", 8, 2.6e5, 0.80), ("tinykg", 2, 8e4, 0.79),
                                           ("tinykg", 1, 5e4, 0.75), ("bf16", 16, 5.2e5, 0.80), ("checkpoint", 32, 3e5, 0.80)):
            runs.append({"model": "kgcn", "dataset": "smoke", "method": method, "bits": bits, "seed": seed, "epochs": 1,
                         "metric_name": "auc", "metric": metric + 0.01 * seed, "activation_bytes": int(held),
                         "activation_peak_bytes": int(held * (3 if method == "checkpoint" else 1)),
                         "checkpoint_granularity": "per layer" if method == "checkpoint" else None})
    steps = [{"model": "kgcn", "dataset": "smoke", "method": m, "step_s": r * 0.01, "step_s_fp32": 0.01, "ratio": r}
             for m, r in (("bf16", 1.1), ("tinykg-2", 1.4), ("checkpoint", 1.3))]
    capacity = [{"model": "kgcn", "bits": b, "budget_bytes": 2**30, "largest": 1000 * 32 // b, "kind": "batch"} for b in (32, 8, 2)]
    (folder / "runs.json").write_text(json.dumps({"runs": runs, "step_times": steps}))
    (folder / "capacity.json").write_text(json.dumps(capacity))
    return folder / "runs.json", folder / "capacity.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="run files (JSON or JSON lines)")
    parser.add_argument("--capacity", type=Path, help="capacity results JSON (optional)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output folder")
    parser.add_argument("--smoke", action="store_true", help="made-up inputs, output to a temporary folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            runs_path, capacity_path = _smoke_inputs(Path(tmp))
            args.runs, args.capacity, args.out = [runs_path], capacity_path, Path(tmp) / "plots"
        runs, steps = load_runs(args.runs)
        written = make_plots(runs, steps, load_capacity(args.capacity), args.out)
        print("| plot | size (KB) |\n|---|---:|")
        for path in written:
            print(f"| {path} | {path.stat().st_size / 1000:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
