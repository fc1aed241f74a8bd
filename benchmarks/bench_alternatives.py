"""TinyKG compression side by side with the alternatives a user would otherwise reach for.

    python benchmarks/bench_alternatives.py --data ../shared/data/lastfm-kgcn --models kgcn --seeds 0 1 2
    python benchmarks/bench_alternatives.py --models kgat --seeds 0 --epochs 10      # synthetic default
    python benchmarks/bench_alternatives.py --smoke     # toy synthetic data, 1 epoch, in-process (the tests)

Methods, all on the same data split, hyper-parameters, epochs, seed and training loop (tinykg's):

* ``fp32``        the plain model: every saved activation kept in fp32;
* ``tinykg-B``    tinykg's compressed ops, B-bit activations (``--bits``, default 2);
* ``bf16``        the fp32 model under `tinykg.compress.cast_saved_tensors`: every floating activation
                  autograd saves is stored in bf16 and cast back in backward (parameters, buffers and
                  integer tensors untouched); applied to every training loss (KGAT: BPR and TransR phases);
* ``checkpoint``  the fp32 model with activation checkpointing (`tinykg.compress.checkpoint`, i.e.
                  ``torch.utils.checkpoint`` non-reentrant): per propagation layer for models that have layers
                  to split (KGAT: each of its L bi-interaction layers is a segment), otherwise the whole
                  training forward as one segment (KGCN with one layer, and the other CTR models);
* ``recbole``     RecBole's own implementation of the model (KGCN only), trained on tinykg's split with the
                  same hyper-parameters and epochs, when ``import recbole`` works in ``--recbole-python``;
                  otherwise one line says why it was skipped.

Reported per run: the exact bytes autograd holds for backward after the forward of one training step
(`tinykg.profile.ActivationTracker`, parameters, buffers and the input batch excluded); for checkpointing
also the peak bound "held + the largest segment recomputed in backward" (the recomputation brings a
segment's fp32 activations back while backward runs through it); the mean epoch seconds; the process's
peak RSS (each run is a fresh subprocess); the test metric (AUC for CTR models, Recall@20 for top-K).
A second table times one training step of every method round robin in one process (median of
``--step-repeats``), the only timing that is fair on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from tinykg.compress import cast_saved_tensors, checkpoint
from tinykg.data import ctr_split
from tinykg.profile import ActivationTracker
from tinykg.train.builders import build_ctr_model, default_group_size, hyperparameters
from tinykg.train.loop import TrainConfig, fit_ctr, measure_step_activation, seed_everything
from tinykg.train.run import CTR_MODELS, compression_for, dataset_key, load_or_generate
from tinykg.train.topk import (
    TOPK_MODELS,
    TopKConfig,
    build_topk_model,
    first_batch,
    fit_topk,
    topk_dataset_key,
    topk_hyperparameters,
    topk_split_for,
)

ALTERNATIVES = ("bf16", "checkpoint", "recbole")
RECBOLE_MODELS = {"kgcn": "KGCN"}


# -- the alternatives as a model wrapper ------------------------------------------------------------------


class Alternative(nn.Module):
    """``model`` trained with one memory-saving method. Every training loss (``loss``, and ``kg_loss`` where
    the model has a KG phase) runs under bf16 storage or as one checkpoint; evaluation and the attention
    refresh run on ``model`` itself. KGAT's per-layer checkpointing is switched on in the model instead."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        if method not in ("fp32", "tinykg", "bf16", "checkpoint-layers", "checkpoint-forward"):
            raise ValueError(f"unknown method {method!r}")
        self.model = model
        self.method = method
        self.weight_decay = getattr(model, "weight_decay", 0.0)

    def _run(self, fn, *batch):
        if self.method == "bf16":
            with cast_saved_tensors(torch.bfloat16, exclude=list(self.model.buffers())):
                return fn(*batch)
        if self.method == "checkpoint-forward":
            return checkpoint(fn, *batch)
        return fn(*batch)

    def forward(self, *batch):
        return self.model(*batch)

    def loss(self, *batch):
        return self._run(self.model.loss, *batch)

    def kg_loss(self, *batch):
        return self._run(self.model.kg_loss, *batch)

    def representations(self):
        return self.model.representations()

    def update_attention(self):
        self.model.update_attention()


def _checkpoint_method(model: nn.Module) -> str:
    """Per-layer checkpointing where the model can split its forward into layers, else one segment."""
    return "checkpoint-layers" if hasattr(model, "checkpoint_layers") else "checkpoint-forward"


def _segment_bytes(model: nn.Module, method: str, batch: tuple) -> int:
    """fp32 bytes the largest checkpoint segment saves again when backward recomputes it: the segment run
    once under a tracker with its inputs as checkpoint hands them over (detached, requiring grad)."""
    if method == "checkpoint-forward":
        return measure_step_activation(model, batch, exclude=batch).total_bytes
    model.train()
    largest = 0
    with torch.random.fork_rng(devices=[]):
        x = model.node_embedding
        for layer in range(len(model.layer_sizes)):
            with ActivationTracker(model, exclude=(x,)) as tracker:
                x, _ = model.propagate_layer(layer, x, normalize=False)  # the segment the loss checkpoints
            largest = max(largest, tracker.report().total_bytes)
            x = x.detach().requires_grad_()
    return largest


# -- one training run (worker) ----------------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _setup(method: str, bits: int | None, group_size: int | str | None = None):
    """(compression config, wrapper method) of a method name."""
    if method == "tinykg":
        return compression_for(bits, group_size), "tinykg"
    return None, method


def run_ctr(model_name: str, dataset, method: str, bits: int | None, seed: int, epochs: int | None) -> dict:
    key = dataset_key(dataset.name)
    overrides = {"epochs": epochs} if epochs else None
    params = hyperparameters(model_name, key, overrides)
    seed_everything(seed)
    train, valid, test = ctr_split(dataset.interactions, seed=seed)
    compression, wrapper_method = _setup(method, bits, bits and default_group_size(model_name, key, bits))
    model = build_ctr_model(model_name, dataset, train, compression=compression, seed=seed, overrides=overrides, dataset_key=key)
    if method == "checkpoint":
        wrapper_method = "checkpoint-forward"  # CTR models: the whole training forward is the segment
    wrapped = Alternative(model, wrapper_method)
    batch_size = params["batch_size"]
    first = tuple(
        torch.as_tensor(a[:batch_size], dtype=dt)
        for a, dt in ((train.user_index, torch.long), (train.item_index, torch.long), (train.label, torch.float32))
    )
    segment = _segment_bytes(model, wrapper_method, first) if method == "checkpoint" else 0
    config = TrainConfig(
        epochs=params["epochs"], batch_size=batch_size, lr=params["lr"], weight_decay=wrapped.weight_decay,
        seed=seed, drop_last=params.get("drop_last", True), progress=False,
    )
    result = fit_ctr(wrapped, train, valid, test, config, log=lambda _m: None)
    return _payload(model_name, dataset, method, bits, seed, result, "auc", segment, wrapper_method, batch_size)


def run_topk(model_name: str, dataset, method: str, bits: int | None, seed: int, epochs: int | None) -> dict:
    key = topk_dataset_key(dataset.name)
    params = topk_hyperparameters(model_name, key, {"epochs": epochs} if epochs else None)
    seed_everything(seed)
    train, valid, test = topk_split_for(dataset, key, seed)
    compression, wrapper_method = _setup(method, bits)
    model, kg_sampler = build_topk_model(model_name, dataset, train, compression=compression, params=params)
    if method == "checkpoint":
        wrapper_method = _checkpoint_method(model)
        if wrapper_method == "checkpoint-layers":
            model.checkpoint_layers = True
    wrapped = Alternative(model, wrapper_method)
    config = TopKConfig(
        epochs=params["epochs"], batch_size=params["batch_size"], kg_batch_size=params.get("kg_batch_size", 2048),
        lr=params["lr"], eval_every=params.get("eval_every", 1), seed=seed, progress=False,
    )
    segment = 0
    if method == "checkpoint":
        batch = first_batch(train, config.batch_size, seed)
        model.checkpoint_layers = False
        segment = _segment_bytes(model, wrapper_method, batch)
        model.checkpoint_layers = wrapper_method == "checkpoint-layers"
    result = fit_topk(wrapped, train, valid, test, config, kg_sampler=kg_sampler, log=lambda _m: None)
    return _payload(model_name, dataset, method, bits, seed, result, "recall@20", segment, wrapper_method, config.batch_size)


def _payload(model_name, dataset, method, bits, seed, result, metric_name, segment, wrapper_method, batch_size) -> dict:
    held = result.activation_bytes
    return {
        "model": model_name,
        "dataset": dataset.name,
        "method": method,
        "bits": {"fp32": 32, "bf16": 16, "checkpoint": 32, "tinykg": bits}[method],
        "seed": seed,
        "epochs": result.epochs_run,
        "batch_size": batch_size,
        "metric_name": metric_name,
        "metric": result.metrics[metric_name],
        "metrics": dict(result.metrics),
        "activation_bytes": held,
        "activation_peak_bytes": held + segment,
        "checkpoint_granularity": {"checkpoint-layers": "per layer", "checkpoint-forward": "whole forward"}.get(wrapper_method),
        "epoch_seconds": statistics.mean(result.epoch_seconds),
        "peak_rss_bytes": _peak_rss_bytes(),
    }


# -- RecBole ---------------------------------------------------------------------------------------------


def recbole_unavailable(python: str) -> str | None:
    """None when ``import recbole`` (and the parts used here) works in ``python``, else why not, one line."""
    probe = (
        "import warnings; warnings.filterwarnings('ignore')\n"
        "from recbole.config import Config\n"
        "from recbole.data import create_dataset, data_preparation\n"
        "from recbole.utils import get_trainer, init_seed\n"
        "Config(model='KGCN', config_dict={'data_path': '.', 'dataset': 'x'})\n"
    )
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{python}: {err}"
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {proc.returncode}"


def _write_atomic_files(root: Path, name: str, train, valid, test, kg) -> None:
    """RecBole atomic files for tinykg's own CTR split: train positives (RecBole samples the negatives),
    labelled valid/test rows, the KG, and the item -> entity links (item i is entity i)."""
    root.mkdir(parents=True, exist_ok=True)
    items = set()
    for part, rows in (("train", train), ("valid", valid), ("test", test)):
        keep = rows.label == 1 if part == "train" else slice(None)
        users, item_index, labels = rows.user_index[keep], rows.item_index[keep], rows.label[keep]
        items.update(int(i) for i in item_index)
        lines = [f"{u}\t{i}\t{int(l)}" for u, i, l in zip(users, item_index, labels)]
        (root / f"{name}.{part}.inter").write_text("user_id:token\titem_id:token\tlabel:float\n" + "\n".join(lines) + "\n")
    triples = [f"e{h}\tr{r}\te{t}" for h, r, t in zip(kg.head_index, kg.rel_type, kg.tail_index)]
    (root / f"{name}.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n" + "\n".join(triples) + "\n")
    (root / f"{name}.link").write_text("item_id:token\tentity_id:token\n" + "\n".join(f"{i}\te{i}" for i in sorted(items)) + "\n")


@contextlib.contextmanager
def _working_directory(path: str):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_recbole(model_name: str, dataset, seed: int, epochs: int | None) -> dict:
    """RecBole's KGCN on tinykg's split (runs inside the interpreter that has RecBole)."""
    import warnings

    warnings.filterwarnings("ignore")
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.knowledge_aware_recommender import KGCN
    from recbole.utils import get_trainer, init_seed

    key = dataset_key(dataset.name)
    params = hyperparameters(model_name, key, {"epochs": epochs} if epochs else None)
    train, valid, test = ctr_split(dataset.interactions, seed=seed)
    with tempfile.TemporaryDirectory() as tmp, _working_directory(tmp):  # RecBole logs into ./log_tensorboard
        _write_atomic_files(Path(tmp) / "tk", "tk", train, valid, test, dataset.kg)
        config = Config(model="KGCN", config_dict={
            "data_path": tmp, "dataset": "tk", "checkpoint_dir": str(Path(tmp) / "saved"),
            "benchmark_filename": ["train", "valid", "test"], "LABEL_FIELD": "label",
            "load_col": {"inter": ["user_id", "item_id", "label"], "kg": ["head_id", "relation_id", "tail_id"],
                         "link": ["item_id", "entity_id"]},
            "eval_args": {"order": "RO", "mode": "labeled", "group_by": None}, "metrics": ["AUC"], "valid_metric": "AUC",
            "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
            "epochs": params["epochs"], "train_batch_size": params["batch_size"], "eval_batch_size": 8192,
            "learning_rate": params["lr"], "embedding_size": params["embedding_dim"], "n_iter": params["num_layers"],
            "neighbor_sample_size": params["num_neighbors"], "aggregator": params["aggregator"],
            "reg_weight": params["l2_weight"], "stopping_step": params["epochs"] + 1,
            "seed": seed, "reproducibility": True, "device": "cpu", "use_gpu": False,
            "show_progress": False, "state": "ERROR",
        })
        init_seed(config["seed"], config["reproducibility"])
        recbole_data = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, recbole_data)
        model = KGCN(config, train_data._dataset)
        trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])

        class TimedTrainer(trainer_class):
            epoch_seconds: list = []

            def _train_epoch(self, *args, **kwargs):
                start = time.perf_counter()
                out = super()._train_epoch(*args, **kwargs)
                self.epoch_seconds.append(time.perf_counter() - start)
                return out

        # Bytes held for backward by one training step of RecBole's model: B positives + B sampled negatives.
        batch = next(iter(_first_recbole_batch(train_data)))
        exclude = [v for v in batch.interaction.values()] + [model.adj_entity, model.adj_relation]
        model.train()
        with torch.random.fork_rng(devices=[]):
            with ActivationTracker(model, exclude=exclude) as tracker:
                loss = model.calculate_loss(batch)
            held = tracker.report().total_bytes
            del loss
        init_seed(config["seed"], config["reproducibility"])
        trainer = TimedTrainer(config, model)
        trainer.epoch_seconds = []
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        # RecBole's own load_best_model calls torch.load without weights_only=False, which torch >= 2.6
        # refuses for its checkpoint format: load the best-validation state (our own temporary file) here.
        best = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
        model.load_state_dict(best["state_dict"])
        scores = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return {
        "model": model_name, "dataset": dataset.name, "method": "recbole", "bits": 32, "seed": seed,
        "epochs": len(trainer.epoch_seconds), "batch_size": params["batch_size"], "metric_name": "auc",
        "metric": float(scores["auc"]), "metrics": {k: float(v) for k, v in scores.items()},
        "activation_bytes": held, "activation_peak_bytes": held, "checkpoint_granularity": None,
        "epoch_seconds": statistics.mean(trainer.epoch_seconds), "peak_rss_bytes": _peak_rss_bytes(),
    }


def _first_recbole_batch(train_data):
    from recbole.data.dataloader.knowledge_dataloader import KGDataLoaderState

    if hasattr(train_data, "set_mode"):
        train_data.set_mode(KGDataLoaderState.RS)
    return train_data


# -- step time, all methods interleaved in one process -----------------------------------------------------


def step_times(model_name: str, dataset, bits: list[int], repeats: int) -> list[dict]:
    """Median seconds of one training step (forward, backward, Adam) of every method, timed round robin
    in one process on the same initial weights and batch (CPU); ratio to the fp32 median of the same loop."""
    topk = model_name in TOPK_MODELS
    seed_everything(0)
    if topk:
        key = topk_dataset_key(dataset.name)
        params = topk_hyperparameters(model_name, key)
        train, _, _ = topk_split_for(dataset, key, 0)
        batch = first_batch(train, params["batch_size"], 0)
        build = lambda compression: build_topk_model(model_name, dataset, train, compression=compression, params=params)[0]
    else:
        key = dataset_key(dataset.name)
        params = hyperparameters(model_name, key)
        train, _, _ = ctr_split(dataset.interactions, seed=0)
        n = params["batch_size"]
        batch = (torch.as_tensor(train.user_index[:n]), torch.as_tensor(train.item_index[:n]), torch.as_tensor(train.label[:n], dtype=torch.float32))
        build = lambda compression: build_ctr_model(model_name, dataset, train, compression=compression, seed=0, dataset_key=key)
    variants = {"fp32": ("fp32", None), "bf16": ("bf16", None)}
    variants.update({f"tinykg-{b}": ("tinykg", compression_for(b, default_group_size(model_name, key, b))) for b in bits})
    steps = {}
    for name, (method, compression) in {**variants, "checkpoint": ("checkpoint", None)}.items():
        torch.manual_seed(0)
        model = build(compression)
        wrapper_method = method
        if method == "checkpoint":
            wrapper_method = _checkpoint_method(model) if topk else "checkpoint-forward"
            if wrapper_method == "checkpoint-layers":
                model.checkpoint_layers = True
        wrapped = Alternative(model, wrapper_method).train()
        optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-4)

        def step(wrapped=wrapped, optimizer=optimizer):
            loss = wrapped.loss(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[name] = step
    # Round robin: every repeat times one step of each method, starting from a different method each
    # time, so that a change of machine load hits all methods alike (the machine is shared).
    names = list(steps)
    for name in names:  # warm-up: first-call allocations, kernel compilation
        steps[name]()
    times = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    return [
        {"model": model_name, "dataset": dataset.name, "method": name, "step_s": median[name],
         "step_s_fp32": median["fp32"], "ratio": median[name] / median["fp32"], "repeats": repeats}
        for name in names if name != "fp32"
    ]


# -- orchestration ------------------------------------------------------------------------------------------


def _method_list(bits: list[int], alternatives: list[str]) -> list[tuple[str, int | None]]:
    methods = [("fp32", None)] + [("tinykg", b) for b in bits]
    return methods + [(a, None) for a in alternatives]


def _label(method: str, bits: int | None) -> str:
    return f"tinykg {bits}-bit" if method == "tinykg" else method


def _key(run: dict) -> tuple:
    return (run["model"], run["dataset"], run["method"], run["bits"], run["seed"], run.get("epochs_requested"))


def _worker(spec: dict) -> dict | list:
    dataset = load_or_generate(spec["data"], synthetic_size=spec["synthetic"])
    if spec.get("step_times"):
        return step_times(spec["model"], dataset, spec["bits"], spec["repeats"])
    if spec["method"] == "recbole":
        return run_recbole(spec["model"], dataset, spec["seed"], spec["epochs"])
    runner = run_topk if spec["model"] in TOPK_MODELS else run_ctr
    return runner(spec["model"], dataset, spec["method"], spec["bits"], spec["seed"], spec["epochs"])


def _thread_env(threads: int) -> dict:
    """Environment pinning torch (OpenMP; ``torch.set_num_threads`` also sizes tinykg's CPU-kernel pool)
    and numba to ``threads`` threads: on the shared 2-core machine a second thread per process made fp32
    KGCN epochs 9x slower, so the default is 1."""
    count = str(threads)
    return {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "NUMBA_NUM_THREADS": count}


def _in_subprocess(spec: dict, python: str, threads: int) -> dict | list:
    """One run in a fresh interpreter, so that its peak RSS is its own."""
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)], capture_output=True, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **_thread_env(threads)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench_alternatives worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mean_std(values: list[float], fmt: str = "{:.4f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def table(runs: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["dataset"], run["epochs"], run["method"], run["bits"]), []).append(run)
    order = {"fp32": 0, "tinykg": 1, "bf16": 2, "checkpoint": 3, "recbole": 4}
    lines = [
        "| model | dataset | epochs | method | seeds | test metric | vs fp32 | held for backward (B) | fp32 / held | peak incl. recompute (B) | epoch s | peak RSS (MiB) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, dataset, epochs, method, bits), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], order[kv[0][3]], -kv[0][4])):
        metric = [r["metric"] for r in rs]
        base = groups.get((model, dataset, epochs, "fp32", 32))
        delta, ratio = "", ""
        if base:
            base_metric = statistics.mean(r["metric"] for r in base)
            if method != "fp32":
                delta = f"{100 * (statistics.mean(metric) - base_metric) / base_metric:+.2f}%"
            ratio = f"{base[0]['activation_bytes'] / rs[0]['activation_bytes']:.1f}x"
        label = _label(method, bits)
        if rs[0].get("checkpoint_granularity"):
            label += f" ({rs[0]['checkpoint_granularity']})"
        peak = rs[0]["activation_peak_bytes"]
        rss = [r["peak_rss_bytes"] for r in rs if r.get("peak_rss_bytes")]
        lines.append(
            f"| {model} | {dataset} | {epochs} | {label} | {len(rs)} | {rs[0]['metric_name']} {_mean_std(metric)} | {delta} | "
            f"{rs[0]['activation_bytes']:,} | {ratio} | {peak:,} | {statistics.median(r['epoch_seconds'] for r in rs):.2f} | "
            f"{_mib(statistics.median(rss)) if rss else 'n/a'} |"
        )
    return "\n".join(lines)


def step_table(rows: list[dict]) -> str:
    lines = ["| model | dataset | method | repeats | step (ms) | fp32 step (ms) | time / fp32 |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dataset']} | {r['method']} | {r.get('repeats', '')} | {1e3 * r['step_s']:.1f} | {1e3 * r['step_s_fp32']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(), "threads_per_run": torch.get_num_threads(), "platform": platform.platform(),
        "torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available(),
    }


def resolve_data(data: str | None) -> str | None:
    """A dataset directory as given, or else under ``$TINYKG_DATA_DIR`` (default ``../shared/data`` beside
    the repository): ``--data lastfm-kgcn`` works from anywhere."""
    if data is None or Path(data).is_dir():
        return data
    root = Path(os.environ.get("TINYKG_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return str(root / data) if (root / data).is_dir() else data


def _load_runs(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy synthetic data, kgcn and kgat, 1 epoch, in-process")
    parser.add_argument("--data", help="dataset directory, or its name under $TINYKG_DATA_DIR (default: the synthetic default)")
    parser.add_argument("--models", nargs="+", default=["kgcn"], choices=CTR_MODELS + tuple(TOPK_MODELS))
    parser.add_argument("--bits", type=int, nargs="+", default=[2], choices=(8, 4, 2, 1), help="tinykg bit widths")
    parser.add_argument("--alternatives", nargs="*", default=list(ALTERNATIVES), choices=ALTERNATIVES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override every model's epoch count (the same for all methods)")
    parser.add_argument("--step-repeats", type=int, default=10, help="repeats of the round-robin step timing (0: skip it)")
    parser.add_argument("--recbole-python", default=sys.executable, help="interpreter that has RecBole installed")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per run (peak RSS then not per run)")
    parser.add_argument("--runs", type=Path, help="JSON-lines file of finished runs (appended, reused)")
    parser.add_argument("--json", type=Path, help="write every run and the step timings here (JSON)")
    parser.add_argument("--out", type=Path, help="write the markdown tables here too")
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads per run (default 1)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    synthetic = "default"
    if args.smoke:
        synthetic, args.data, args.models, args.seeds, args.epochs = "toy", None, ["kgcn", "kgat"], [0], 1
        args.in_process, args.step_repeats = True, 1
    args.data = resolve_data(args.data)
    dataset = load_or_generate(args.data, synthetic_size=synthetic)

    alternatives = list(args.alternatives)
    if "recbole" in alternatives and not set(args.models) & set(RECBOLE_MODELS):
        print(f"recbole: skipped (this benchmark drives RecBole's {', '.join(RECBOLE_MODELS)} only, not {', '.join(args.models)})", flush=True)
        alternatives.remove("recbole")
    if "recbole" in alternatives:
        reason = recbole_unavailable(args.recbole_python)
        if reason is not None:
            print(f"recbole: skipped (RecBole does not import or run in {args.recbole_python}: {reason})", flush=True)
            alternatives.remove("recbole")
    runs = _load_runs(args.runs)
    done = {_key(r) for r in runs}
    for model in args.models:
        for seed in args.seeds:
            for method, bits in _method_list(args.bits, alternatives):
                if method == "recbole" and model not in RECBOLE_MODELS:
                    continue
                run_bits = {"fp32": 32, "bf16": 16, "checkpoint": 32, "recbole": 32}.get(method, bits)
                if (model, dataset.name, method, run_bits, seed, args.epochs) in done:
                    continue
                spec = {"model": model, "data": args.data, "synthetic": synthetic, "method": method, "bits": bits, "seed": seed, "epochs": args.epochs}
                python = args.recbole_python if method == "recbole" else sys.executable
                if args.in_process and python == sys.executable:
                    run = _worker(spec)
                    run["peak_rss_bytes"] = None
                else:
                    run = _in_subprocess(spec, python, args.threads)
                run["epochs_requested"] = args.epochs
                runs.append(run)
                print(
                    f"{model} {dataset.name} {_label(method, bits)} seed={seed}: {run['metric_name']} {run['metric']:.4f} "
                    f"held {run['activation_bytes']:,} B, {run['epoch_seconds']:.2f} s/epoch", flush=True,
                )
                if args.runs:
                    with args.runs.open("a") as f:
                        f.write(json.dumps(run) + "\n")
    step_rows = []
    if args.step_repeats:
        for model in args.models:
            if args.in_process:
                step_rows += step_times(model, dataset, args.bits, args.step_repeats)
            else:
                spec = {"step_times": True, "model": model, "data": args.data, "synthetic": synthetic, "bits": args.bits, "repeats": args.step_repeats}
                step_rows += _in_subprocess(spec, sys.executable, args.threads)
    text = f"# bench_alternatives, {os.cpu_count()} CPUs, {args.threads} thread(s) per run, torch {torch.__version__}\n\n" + table(runs)
    if step_rows:
        text += "\n\n" + step_table(step_rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        if not step_rows and args.json.exists():  # a resumed grid without timing keeps the earlier timing
            step_rows = json.loads(args.json.read_text()).get("step_times", [])
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "runs": runs, "step_times": step_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
