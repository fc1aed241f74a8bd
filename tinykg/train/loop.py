"""One readable training loop for CTR models: Adam on mini-batches, early stopping on validation AUC,
test AUC/F1 at the best epoch, exact activation memory of one training step."""

from __future__ import annotations

import copy
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..compress import CompressionConfig, seed_quantizer
from ..compress.quantize import backend_in_use
from ..profile import ActivationTracker
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from .errors import TrainingError
from .graphed import check_cuda_graph_device, graphed_step
from .metrics import accuracy, f1_score, roc_auc


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``patience``: epochs without a better validation AUC before stopping
    (0 = never stop early). ``drop_last``: skip the last incomplete training batch (KGCN's loop does)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.0
    patience: int = 0
    seed: int = 0
    device: str = "cpu"
    drop_last: bool = True
    eval_batch_size: int = 8192
    progress: bool = True
    checkpoint_dir: str | None = None
    resume: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.patience < 0 or self.weight_decay < 0:
            raise ValueError("patience and weight_decay must be >= 0")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume needs a checkpoint directory")
        check_cuda_graph_device(self.cuda_graph, self.device)

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        return {k: getattr(self, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "patience", "seed", "drop_last")}


def config_dict(compression: CompressionConfig | None) -> dict | None:
    """A compression config as plain values (enums by their value): for results files and checkpoints."""
    if compression is None:
        return None
    return {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(compression).items()}


def model_identity(model: nn.Module) -> dict:
    """What a checkpoint's model must share with the model that resumes from it: its class, how it stores
    activations, and the shape of every parameter and buffer (these follow from the dataset and the
    model's sizes). The quantizer backend is left out: every backend gives the same codes."""
    compression = config_dict(getattr(model, "compression", None))
    if compression is not None:
        compression.pop("backend")
    return {
        "class": type(model).__name__,
        "compression": compression,
        "head_bits": getattr(model, "head_bits", None),
        "shapes": {name: list(t.shape) for name, t in model.state_dict().items()},
    }


def _differences(saved: dict, current: dict, limit: int = 3) -> str:
    """The first ``limit`` entries where two flat-or-nested settings dicts differ, as
    ``key: checkpoint value -> this run's value``."""
    out = []
    for key in list(saved) + [k for k in current if k not in saved]:
        old, new = saved.get(key, "absent"), current.get(key, "absent")
        if isinstance(old, dict) and isinstance(new, dict):
            inner = _differences(old, new, limit)
            if inner:
                out.append(f"{key} ({inner})")
        elif old != new:
            out.append(f"{key}: {old} -> {new}")
    shown = "; ".join(out[:limit])
    return shown + (f"; {len(out) - limit} more" if len(out) > limit else "")


@dataclass
class TrainResult:
    metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    epoch_seconds: list[float]
    history: list[dict[str, float]] = field(default_factory=list)
    activation_bytes: int | None = None
    activation_bytes_by_op: dict[str, int] = field(default_factory=dict)
    peak_memory_bytes: int | None = None


def count_of(n: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def results_payload(
    model_name: str, dataset, bits: int, seed: int, metrics: dict, result: TrainResult, fp32_bytes: int | None,
    params: dict, compression: CompressionConfig | None, device: str, *, hparams: str, **extra,
) -> dict:
    """The results-file payload (schema in the README) shared by the CTR and top-K runs. ``hparams``: the
    name of the published hyper-parameter set ``params`` started from; ``extra`` keys (e.g. the top-K split
    sizes) are added before ``device``."""
    fp32_bytes = fp32_bytes if fp32_bytes is not None else result.activation_bytes
    stored = config_dict(compression)
    if stored is not None:  # what ran: a backend that is unavailable falls back to the reference
        stored["backend_used"] = backend_in_use(compression.backend, device).value
    return {
        "model": model_name,
        "dataset": dataset.name,
        "bits": bits,
        "seed": seed,
        "metrics": metrics,
        "activation_bytes": result.activation_bytes,
        "activation_bytes_fp32": fp32_bytes,
        "activation_ratio": fp32_bytes / result.activation_bytes if result.activation_bytes else None,
        "peak_memory_bytes": result.peak_memory_bytes,
        "epoch_seconds": sum(result.epoch_seconds) / len(result.epoch_seconds),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "activation_bytes_by_op": result.activation_bytes_by_op,
        "hparams": hparams,
        "hyperparameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
        "compression": stored,
        "dataset_info": dataset.info(),
        **extra,
        "device": device,
        "world_size": distributed.world_size(),
        "versions": {"tinykg": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) global generators, and the quantizer's own
    (`tinykg.compress.seed_quantizer`: quantizing then draws nothing from the global generators, so a
    compressed run of a model without dropout draws exactly what the fp32 run of the same seed draws)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    seed_quantizer(seed)


def _tensors(interactions, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(interactions.user_index, dtype=torch.long, device=device),
        torch.as_tensor(interactions.item_index, dtype=torch.long, device=device),
        torch.as_tensor(interactions.label, dtype=torch.float32, device=device),
    )


@torch.no_grad()
def evaluate_ctr(model: nn.Module, interactions, batch_size: int = 8192, device: str = "cpu") -> dict[str, float]:
    """AUC, F1 (threshold 0.5) and accuracy of ``model`` on labelled rows, in eval mode (no compression)."""
    was_training = model.training
    model.eval()
    users, items, labels = _tensors(interactions, device)
    scores = [torch.sigmoid(model(users[i : i + batch_size], items[i : i + batch_size])) for i in range(0, len(users), batch_size)]
    model.train(was_training)
    probs = torch.cat(scores).float().cpu().numpy() if scores else np.zeros(0)
    y = labels.cpu().numpy()
    return {"auc": roc_auc(y, probs), "f1": f1_score(y, probs), "accuracy": accuracy(y, probs)}


def measure_step_activation(model: nn.Module, batch: tuple[torch.Tensor, ...], exclude=()) -> ActivationTracker:
    """Exact bytes held for backward by one training-mode loss of ``model`` on ``batch`` (no update;
    the global RNG state is restored so the measurement does not change the run)."""
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[]):
        with ActivationTracker(model, exclude=exclude) as tracker:
            loss = model.loss(*batch)
        report = tracker.report()
        del loss
    model.train(was_training)
    return report


def fit_ctr(
    model: nn.Module,
    train,
    valid,
    test,
    config: TrainConfig,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``model`` (a `tinykg.models.base.CTRModel`) and return test metrics at the best epoch.

    Each epoch shuffles the training rows with a generator seeded by (seed, epoch), so a run is a pure
    function of its seed on CPU. The activation memory reported is that of the first training batch (this
    process's part of it). Under torch.distributed every rank trains on its shard of each global batch of
    ``batch_size`` rows and rank 0 evaluates, logs and checkpoints: see `tinykg.train.distributed`.
    """
    device = torch.device(config.device)
    model.to(device)
    log = distributed.rank_zero_only(log)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 capturable=config.cuda_graph)
    step_loss = distributed.wrap(model)
    graphed = graphed_step(model.loss, optimizer, config.cuda_graph, name=f"{type(model).__name__} training step")
    users, items, labels = _tensors(train, device)
    num_rows = len(users)
    num_batches = num_rows // config.batch_size if config.drop_last else math.ceil(num_rows / config.batch_size)
    if num_batches == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {num_rows} training rows: use a smaller batch size "
                         "(--batch-size)")

    local_batch = distributed.per_rank_batch_size(config.batch_size)
    first = (users[:local_batch], items[:local_batch], labels[:local_batch])
    step_report = measure_step_activation(model, first, exclude=first)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    identity = model_identity(model)
    state = {"epoch": 0, "best_auc": -math.inf, "best_epoch": 0, "best_state": None, "bad_epochs": 0, "history": [], "epoch_seconds": []}
    if config.resume:
        saved = load_checkpoint(config.checkpoint_dir)
        if saved is None:
            log(f"no checkpoint in {config.checkpoint_dir}: starting from scratch")
        else:
            written = {"training": saved["train_config"], "model": saved.get("identity", identity)}
            wanted = {"training": config.fingerprint(), "model": identity}
            if written != wanted:
                raise ValueError(
                    f"{config.checkpoint_dir}: the checkpoint was written by a run with other settings "
                    f"(checkpoint -> this run: {_differences(written, wanted)}); resume with the same settings "
                    "or write to another checkpoint directory"
                )
            try:
                model.load_state_dict(saved["model"])
            except RuntimeError as err:  # a checkpoint written before identities were stored
                raise ValueError(f"{config.checkpoint_dir}: the checkpoint does not fit this model "
                                 f"({' '.join(line.strip() for line in str(err).splitlines()[:2])}); resume with the same model, "
                                 "data and settings") from None
            # Resumed with or without --cuda-graph: Adam's capturable setting is this run's (it decides where
            # the step counters live), not the checkpoint's.
            for group in saved["optimizer"]["param_groups"]:
                group["capturable"] = config.cuda_graph
            optimizer.load_state_dict(saved["optimizer"])
            set_rng_state(saved["rng"])
            state = {k: saved[k] for k in state}
            log(f"resumed from {config.checkpoint_dir} after epoch {state['epoch']}")

    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if state["bad_epochs"] and config.patience and state["bad_epochs"] >= config.patience:
            break
        model.train()
        distributed.seed_epoch(config.seed, epoch)
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)).to(device)
        start = time.perf_counter()
        total_loss = 0.0
        bar = tqdm(range(num_batches), desc=f"epoch {epoch}", leave=False, disable=not (config.progress and distributed.is_main()), unit="batch")
        for step in bar:
            rows, weight = distributed.shard(order[step * config.batch_size : (step + 1) * config.batch_size])
            if graphed is not None:  # forward, backward and update replayed: the check below comes after them
                loss = graphed(users[rows], items[rows], labels[rows])
            else:
                optimizer.zero_grad(set_to_none=True)  # before the forward: last step's gradients are not held through it
                loss = step_loss("loss", users[rows], items[rows], labels[rows])
            if not torch.isfinite(loss):
                kept = f"; the last good checkpoint (epoch {state['epoch']}) is kept" if config.checkpoint_dir else ""
                raise TrainingError(f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step + 1}{kept}")
            if graphed is None:
                (loss * weight).backward()
                optimizer.step()
            total_loss += loss.item() * weight
        if graphed is not None:
            graphed.check()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state["epoch_seconds"].append(time.perf_counter() - start)
        mean_loss = distributed.mean_across(total_loss) / num_batches
        valid_metrics = distributed.from_rank_zero(lambda: evaluate_ctr(model, valid, config.eval_batch_size, config.device))
        state["history"].append({"epoch": epoch, "loss": mean_loss, **{f"valid_{k}": v for k, v in valid_metrics.items()}})
        log(
            f"epoch {epoch:>3}/{config.epochs}  loss {mean_loss:.4f}  "
            f"valid auc {valid_metrics['auc']:.4f} f1 {valid_metrics['f1']:.4f}  {state['epoch_seconds'][-1]:.1f}s"
        )
        if valid_metrics["auc"] > state["best_auc"]:
            state.update(best_auc=valid_metrics["auc"], best_epoch=epoch, bad_epochs=0, best_state=copy.deepcopy(model.state_dict()))
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if config.checkpoint_dir and distributed.is_main():
            save_checkpoint(
                config.checkpoint_dir,
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "train_config": config.fingerprint(),
                 "identity": identity, **state},
            )
        if config.patience and state["bad_epochs"] >= config.patience:
            log(f"early stop: no better validation AUC for {count_of(config.patience, 'epoch')}")
            break
    best_state = state["best_state"]
    if best_state is not None:
        model.load_state_dict(best_state)
    test_metrics = distributed.from_rank_zero(lambda: evaluate_ctr(model, test, config.eval_batch_size, config.device))
    return TrainResult(
        metrics={"auc": test_metrics["auc"], "f1": test_metrics["f1"], "accuracy": test_metrics["accuracy"]},
        best_epoch=state["best_epoch"],
        epochs_run=state["epoch"],
        epoch_seconds=state["epoch_seconds"],
        history=state["history"],
        activation_bytes=step_report.total_bytes,
        activation_bytes_by_op=step_report.by_op,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    )
