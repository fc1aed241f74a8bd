"""From a dataset on disk (or the synthetic default) to a results dict: the job behind ``tinykg train``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..compress import CompressionConfig, restoring_quantizer_seed
from ..data import Dataset, SyntheticConfig, ctr_split, load_dataset, make_synthetic
from . import distributed
from .builders import build_ctr_model, group_size_for_bits, hyperparameters
from .loop import TrainConfig, TrainingError, count_of, fit_ctr, measure_step_activation, results_payload, seed_everything
from .names import is_book_crossing_name, is_lastfm_name

CTR_MODELS = ("kgcn", "kgnn-ls", "ripplenet", "ckan")
DATASET_KEYS = ("lastfm", "book", "synthetic")


def dataset_key(name: str) -> str:
    """Which published hyper-parameter set fits a dataset, from the words of its name (``synthetic``
    otherwise; `tinykg.train.names`): ``facebook-kg`` is not Book-Crossing, nor ``musical-instruments``
    Last.FM."""
    if is_lastfm_name(name):
        return "lastfm"
    if is_book_crossing_name(name):
        return "book"
    return "synthetic"


def load_or_generate(
    data: str | None, fmt: str | None = None, *, synthetic_size: str | int = "default", rating_threshold: float | None = 4,
) -> Dataset:
    """The dataset at ``data`` (format detected unless ``fmt``; ``rating_threshold`` as `load_dataset`), or a
    synthetic one: ``"toy"``, ``"default"`` or about ``synthetic_size`` KG triples. Synthetic data is
    generated with seed 0 so every training seed sees the same dataset."""
    if data is not None:
        return load_dataset(data, fmt, rating_threshold=rating_threshold)
    if synthetic_size == "toy":
        config = SyntheticConfig.toy()
    elif synthetic_size == "default":
        config = SyntheticConfig.default()
    else:
        config = SyntheticConfig.sized(int(synthetic_size))
    return make_synthetic(config, seed=0)


def compression_for(bits: int, group_size: int | str | None = None, backend: str = "auto") -> CompressionConfig | None:
    """``bits == 32`` means no compression; ``group_size`` None: `group_size_for_bits` (64 at 1 bit, else 256)."""
    if bits == 32:
        return None
    if group_size is None:
        group_size = group_size_for_bits(bits)
    return CompressionConfig(bits=bits, group_size=group_size, backend=backend)


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it: no half-written results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; a results file gets the permissions open() would give it.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@restoring_quantizer_seed()  # seed_everything seeds it for this run only
def train_ctr(
    model_name: str,
    dataset: Dataset,
    *,
    bits: int = 2,
    group_size: int | str | None = None,
    backend: str = "auto",
    seed: int = 0,
    overrides: dict | None = None,
    key: str | None = None,
    device: str = "cpu",
    patience: int = 0,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    cuda_graph: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Split, build, train and evaluate one CTR model; returns the results-file payload.

    ``group_size`` None: the model's setting for the dataset (``DEFAULTS[model][key]["group_size"]``),
    else 256.

    With ``checkpoint_dir`` a checkpoint is written after every epoch; ``resume`` continues from it and
    ends with the same numbers, bit for bit on CPU, as a run that was never interrupted (with the same
    number of processes). Inside a torch.distributed process group every rank calls this with the same
    arguments; ``batch_size`` is the global batch (`tinykg.train.distributed`).
    """
    log = distributed.rank_zero_only(log)
    if model_name not in CTR_MODELS:
        raise ValueError(f"model must be one of {CTR_MODELS}, got {model_name!r}")
    if dataset.interactions.num_positives == dataset.interactions.num_interactions:
        # AUC over positives only is undefined: the run would end with NaN metrics.
        fixed = " and a fixed test split (KGAT format)" if dataset.test_interactions is not None else ""
        raise TrainingError(
            f"{dataset.name} has positive rows only{fixed}: the CTR model {model_name} needs 0-labelled rows; "
            "the top-K models (kgat, kgin, bprmf) train on positives")
    key = key or dataset_key(dataset.name)
    params = hyperparameters(model_name, key, overrides)
    seed_everything(seed)
    train, valid, test = ctr_split(dataset.interactions, seed=seed)
    if group_size is None:
        group_size = params.get("group_size", group_size_for_bits(bits))
    compression = compression_for(bits, group_size, backend)
    model = build_ctr_model(model_name, dataset, train, compression=compression, seed=seed, overrides=overrides, dataset_key=key)
    config = TrainConfig(
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        lr=params["lr"],
        weight_decay=getattr(model, "weight_decay", 0.0),
        patience=patience,
        seed=seed,
        device=device,
        drop_last=params.get("drop_last", True),
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        cuda_graph=cuda_graph,
    )
    fp32_bytes = None
    if compression is not None:
        # The same first batch through the same model with compression off: the baseline it saves.
        model.compression = None
        local_batch = distributed.per_rank_batch_size(config.batch_size)
        users = torch.as_tensor(train.user_index[:local_batch], dtype=torch.long)
        items = torch.as_tensor(train.item_index[:local_batch], dtype=torch.long)
        labels = torch.as_tensor(train.label[:local_batch], dtype=torch.float32)
        model.to(device)
        batch = tuple(t.to(device) for t in (users, items, labels))
        fp32_bytes = measure_step_activation(model, batch, exclude=batch).total_bytes
        model.compression = compression
    log(
        f"tinykg: {model_name} on {dataset.name} ({dataset.num_users:,} users, {dataset.num_items:,} items, "
        f"{dataset.kg.num_triples:,} triples), {'fp32' if compression is None else f'{bits}-bit'} activations, "
        f"{count_of(params['epochs'], 'epoch')}, batch {params['batch_size']}, lr {params['lr']}, seed {seed}, "
        f"{key!r} hyper-parameters"
        + (f", {distributed.world_size()} processes" if distributed.world_size() > 1 else "")
    )
    result = fit_ctr(model, train, valid, test, config, log=log)
    metrics = {"auc": result.metrics["auc"], "f1": result.metrics["f1"]}
    return results_payload(model_name, dataset, bits, seed, metrics, result, fp32_bytes, params, compression, device,
                           hparams=key, cuda_graph=cuda_graph)
