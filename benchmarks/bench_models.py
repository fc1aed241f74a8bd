"""Accuracy, activation memory and epoch time of the CTR models per bit width, mean +- std over seeds.

    python benchmarks/bench_models.py --data ../shared/data/lastfm-kgcn --models kgcn --bits 32 2 --seeds 0 1 2
    python benchmarks/bench_models.py --smoke           # toy synthetic data, 1 epoch (run by the tests)

Each finished run is appended to ``--runs`` (JSON lines) and skipped when the script is started again,
so a long grid can be resumed. The table compares every bit width with fp32 at equal epochs and
hyper-parameters (the models' published settings for the dataset unless overridden).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from tinykg.train.run import CTR_MODELS, load_or_generate, train_ctr


def _key(run: dict) -> tuple:
    return (run["model"], run["dataset"], run["bits"], run["seed"], run["epochs_requested"])


def _load_runs(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(runs: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["dataset"], run["epochs"], run["bits"]), []).append(run)
    lines = [
        "| model | dataset | epochs | bits | seeds | test AUC | test F1 | AUC vs fp32 | activation bytes/step | fp32 / this | epoch s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, dataset, epochs, bits), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], -kv[0][3])):
        aucs = [r["metrics"]["auc"] for r in rs]
        base = groups.get((model, dataset, epochs, 32))
        delta = ""
        if base and bits != 32:
            base_auc = statistics.mean(r["metrics"]["auc"] for r in base)
            delta = f"{100 * (statistics.mean(aucs) - base_auc) / base_auc:+.2f}%"
        act = rs[0]["activation_bytes"]
        lines.append(
            f"| {model} | {dataset} | {epochs} | {bits} | {len(rs)} | {_mean_std(aucs)} | {_mean_std([r['metrics']['f1'] for r in rs])} | "
            f"{delta} | {act:,} | {rs[0]['activation_bytes_fp32'] / act:.1f}x | {statistics.median(r['epoch_seconds'] for r in rs):.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy synthetic data, kgcn, 1 epoch, bits 32 and 2")
    parser.add_argument("--data", action="append", help="dataset directory (repeatable; default: synthetic default)")
    parser.add_argument("--models", nargs="+", default=list(CTR_MODELS), choices=CTR_MODELS)
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 8, 4, 2, 1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override every model's epoch count")
    parser.add_argument("--runs", type=Path, help="JSON-lines file of finished runs (appended, reused)")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args(argv)

    if args.smoke:
        datasets = [load_or_generate(None, synthetic_size="toy")]
        args.models, args.bits, args.seeds, args.epochs = ["kgcn"], [32, 2], [0], 1
    else:
        datasets = [load_or_generate(d) for d in args.data] if args.data else [load_or_generate(None)]
    runs = _load_runs(args.runs)
    done = {_key(r) for r in runs}
    for dataset in datasets:
        for model in args.models:
            for bits in args.bits:
                for seed in args.seeds:
                    key = (model, dataset.name, bits, seed, args.epochs)
                    if key in done:
                        continue
                    overrides = {"epochs": args.epochs} if args.epochs else None
                    result = train_ctr(model, dataset, bits=bits, seed=seed, overrides=overrides, progress=False, log=lambda m: None)
                    result["epochs_requested"] = args.epochs
                    slim = {k: result[k] for k in ("model", "dataset", "bits", "seed", "metrics", "activation_bytes",
                                                    "activation_bytes_fp32", "epoch_seconds", "epochs", "best_epoch", "epochs_requested")}
                    runs.append(slim)
                    print(f"{model} {dataset.name} bits={bits} seed={seed}: auc {slim['metrics']['auc']:.4f} "
                          f"f1 {slim['metrics']['f1']:.4f} act {slim['activation_bytes']:,} B {slim['epoch_seconds']:.2f} s/epoch", flush=True)
                    if args.runs:
                        with args.runs.open("a") as f:
                            f.write(json.dumps(slim) + "\n")
    text = table(runs)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
