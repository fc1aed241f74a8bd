"""Accuracy, activation memory and epoch time of the models per bit width, mean +- std over seeds.

    python benchmarks/bench_models.py --data ../shared/data/lastfm-kgcn --models kgcn --bits 32 2 --seeds 0 1 2
    python benchmarks/bench_models.py --data ../shared/data/lastfm-kgcn --models kgat kgin bprmf --bits 32 2
    python benchmarks/bench_models.py --data ../shared/data/book-crossing-ripplenet --models kgin --bits 32 2 --patience 3
    python benchmarks/bench_models.py --smoke           # toy synthetic data, 1 epoch (run by the tests)

CTR models (kgcn, kgnn-ls, ripplenet, ckan) report test AUC and F1; top-K models (kgat, kgin, bprmf)
report test Recall@20 and NDCG@20 on the same dataset read as a top-K set (see `tinykg.train.topk`), those
of the epoch with the best validation Recall@20; ``--patience N`` stops a top-K run after N validation
evaluations without a better one (the originals' early stopping, which uses 10).

Each finished run is appended to the last ``--runs`` file (JSON lines) and skipped when the script is
started again, so a long grid can be resumed; earlier files supply finished runs too, a later file's run
replacing an earlier one of the same setting (a re-run after a change). The table shows the runs the
command asks for and compares every bit width with fp32 at equal epochs and hyper-parameters (the models'
published settings for the dataset unless overridden).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from tinykg.models import TOPK_MODELS
from tinykg.train.run import CTR_MODELS, load_or_generate, train_ctr
from tinykg.train.topk import train_topk

ALL_MODELS = (*CTR_MODELS, *TOPK_MODELS)
# The metric the table compares with fp32, and the second one it shows, per task.
METRICS = {"ctr": ("auc", "f1"), "topk": ("recall@20", "ndcg@20")}


def _task(model: str) -> str:
    return "topk" if model in TOPK_MODELS else "ctr"


def _key(run: dict) -> tuple:
    return (run["model"], run["dataset"], run["bits"], run["seed"], run.get("epochs_requested"),
            _overrides_text(run.get("overrides")), run.get("patience", 0))


def _epochs_setting(run: dict) -> tuple[int, int]:
    """(epochs, patience): the epochs run, or with early stopping the budget (runs of one setting then stop
    at different epochs and are still compared with each other). A tuple, so that the table sorts by number."""
    patience = run.get("patience", 0)
    return (run["epoch_budget"] if patience else run["epochs"], patience)


def _epochs_label(setting: tuple[int, int]) -> str:
    epochs, patience = setting
    return f"<= {epochs}, stop after {patience} evals" if patience else str(epochs)


def _overrides_text(overrides: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((overrides or {}).items()))


def add_set_option(parser: argparse.ArgumentParser, what: str = "every model run") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.set``, a list of (key, value) pairs."""
    parser.add_argument("--set", type=_parse_set, action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a hyper-parameter of {what} (repeatable), e.g. --set lr=0.002")


def _parse_set(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return name, cast(value)
        except ValueError:
            pass
    if value.startswith("[") or value in ("null", "true", "false"):  # lists (KGAT's layer_sizes=[64,32]), None, bools
        try:
            return name, json.loads(value)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"{name}: {value!r} is not valid JSON ({err})") from None
    return name, value


def _load_runs(paths: list[Path]) -> list[dict]:
    """Runs of every file in order; a run replaces an earlier one with the same `_key` (a later file holds
    a re-run, e.g. after a change that alters one bit width)."""
    merged: dict[tuple, dict] = {}
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    run = json.loads(line)
                    merged[_key(run)] = run
    return list(merged.values())


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(runs: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = (run["model"], run["dataset"], _overrides_text(run.get("overrides")), _epochs_setting(run), run["bits"])
        groups.setdefault(key, []).append(run)
    lines = [
        "| model | dataset | overrides | epochs | bits | seeds | test metric | mean ± std | second metric | vs fp32 | activation bytes/step | fp32 / this | epoch s | best epochs |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (model, dataset, overrides, epochs, bits), rs in sorted(groups.items(), key=lambda kv: (*kv[0][:4], -kv[0][4])):
        main_metric, second_metric = METRICS[_task(model)]
        values = [r["metrics"][main_metric] for r in rs]
        base = groups.get((model, dataset, overrides, epochs, 32))
        delta = ""
        if base and bits != 32:
            base_value = statistics.mean(r["metrics"][main_metric] for r in base)
            delta = f"{100 * (statistics.mean(values) - base_value) / base_value:+.2f}%"
        act = rs[0]["activation_bytes"]
        lines.append(
            f"| {model} | {dataset} | {overrides or '-'} | {_epochs_label(epochs)} | {bits} | {len(rs)} | {main_metric} | {_mean_std(values)} | "
            f"{second_metric} {_mean_std([r['metrics'][second_metric] for r in rs])} | "
            f"{delta} | {act:,} | {rs[0]['activation_bytes_fp32'] / act:.1f}x | {statistics.median(r['epoch_seconds'] for r in rs):.2f} | "
            f"{', '.join(str(r['best_epoch']) for r in sorted(rs, key=lambda r: r['seed']))} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy synthetic data, kgcn and kgat, 1 epoch, bits 32 and 2")
    parser.add_argument("--data", action="append", help="dataset directory (repeatable; default: synthetic default)")
    parser.add_argument("--models", nargs="+", default=list(CTR_MODELS), choices=ALL_MODELS)
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 8, 4, 2, 1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override every model's epoch count")
    parser.add_argument("--patience", type=int, default=0,
                        help="top-K models: stop after this many validation evaluations without a better recall@20 "
                             "(0: train every epoch); the test metric is the best validation state's either way")
    add_set_option(parser)
    parser.add_argument("--runs", type=Path, nargs="+", default=[],
                        help="JSON-lines files of finished runs, reused; read in order, a later file's run replaces "
                             "an earlier one of the same model, dataset, bits, seed, epochs and overrides; new runs "
                             "are appended to the last file")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args(argv)
    if args.patience < 0:
        parser.error("--patience must be >= 0")

    if args.smoke:
        datasets = [load_or_generate(None, synthetic_size="toy")]
        args.models, args.bits, args.seeds, args.epochs = ["kgcn", "kgat"], [32, 2], [0], 1
    else:
        datasets = [load_or_generate(d) for d in args.data] if args.data else [load_or_generate(None)]
    runs = _load_runs(args.runs)
    done = {_key(r) for r in runs}
    wanted = set()
    for dataset in datasets:
        for model in args.models:
            for bits in args.bits:
                for seed in args.seeds:
                    overrides = dict(args.set)
                    patience = args.patience if _task(model) == "topk" else 0  # CTR runs train every epoch
                    key = (model, dataset.name, bits, seed, args.epochs, _overrides_text(overrides), patience)
                    wanted.add(key)
                    if key in done:
                        continue
                    if args.epochs:
                        overrides["epochs"] = args.epochs
                    train = train_topk if _task(model) == "topk" else train_ctr
                    result = train(model, dataset, bits=bits, seed=seed, overrides=overrides, patience=patience,
                                   progress=False, log=lambda m: None)
                    result["epochs_requested"] = args.epochs
                    result["epoch_budget"] = result["hyperparameters"]["epochs"]
                    result["overrides"] = dict(args.set)
                    slim = {k: result[k] for k in ("model", "dataset", "bits", "seed", "metrics", "activation_bytes",
                                                    "activation_bytes_fp32", "epoch_seconds", "epochs", "best_epoch", "epochs_requested", "epoch_budget", "overrides", "history")}
                    if patience:
                        slim["patience"] = patience
                    slim["group_size"] = (result.get("compression") or {}).get("group_size")
                    runs.append(slim)
                    scores = "  ".join(f"{name} {slim['metrics'][name]:.4f}" for name in METRICS[_task(model)])
                    print(f"{model} {dataset.name} bits={bits} seed={seed}: {scores} act {slim['activation_bytes']:,} B "
                          f"{slim['epoch_seconds']:.2f} s/epoch", flush=True)
                    if args.runs:
                        with args.runs[-1].open("a") as f:
                            f.write(json.dumps(slim) + "\n")
    text = table([r for r in runs if _key(r) in wanted])  # the runs this command asked for
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
