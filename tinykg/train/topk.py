"""Top-K training and evaluation for the full-graph recommenders (KGAT, KGIN) and BPR-MF.

Training: every epoch is one pass over the shuffled training positives in batches of (user, positive,
negative) triples, the negative drawn uniformly from the items the user has no training positive for
(KGIN's sampler; KGAT's draws users first, which gives the same number of samples per epoch). KGAT then
runs its knowledge-graph phase -- ``ceil(E / kg_batch_size)`` TransR batches of (h, r, t, t'): a head drawn
uniformly among heads, one of its edges, a tail t' over all nodes with (h, r, t') not in the CKG, with an
Adam optimiser of its own as in the original -- and refreshes its attention. Validation Recall@20 every
``eval_every`` epochs drives early stopping; the test metrics are those of the best validation state.

Evaluation: full ranking. Every user with at least one held-out item scores ALL items; items seen in
training (and, for the test, in validation) are masked; Recall@K = hits@K / |held-out items of the user|,
and NDCG@K uses the STANDARD definition, DCG@K = sum_{rank r <= K} rel_r / log2(r + 1) over the ranked
list and IDCG@K = the DCG of min(|held-out|, K) hits at the top (KGIN's definition). KGAT's original code
normalises differently: its IDCG is the DCG of its own hits re-sorted, which ignores the missed held-out
items and inflates NDCG. Both metrics are averaged over the evaluated users. Users are scored in batches
of at most ``eval_batch_size`` rows and ``max_eval_scores`` scores, in eval mode (no compression), so
evaluation memory is bounded and the same for every bits setting.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..compress import CompressionConfig, restoring_quantizer_seed
from ..data import Dataset, Interactions, topk_split
from ..data.ckg import CollaborativeGraph, build_ckg, kg_with_inverse
from ..models import TOPK_DEFAULTS, TOPK_MODELS
from . import distributed
from .builders import settings_for
from .graphed import check_cuda_graph_device, graphed_step
from .loop import TrainingError, TrainResult, count_of, measure_step_activation, results_payload, seed_everything
from .names import is_lastfm_name

# (test_ratio, valid_ratio) of the per-user split; valid_ratio applies to what is left after the test part.
SPLITS = {"lastfm": (0.2, 0.1), "synthetic": (0.2, 0.1), "recbole": (0.1, 1.0 / 9.0)}
# Keys of TOPK_DEFAULTS the training loop reads; every other key is a model setting.
TRAINING_KEYS = ("lr", "batch_size", "kg_batch_size", "epochs", "eval_every")
EARLY_STOP_METRIC = "recall@20"


# --------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------


class PairSet:
    """Membership test for (row, col) pairs, vectorised: sorted int64 keys ``row * num_cols + col``."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, num_cols: int) -> None:
        self.num_cols = int(num_cols)
        self.keys = np.unique(np.asarray(rows, np.int64) * self.num_cols + np.asarray(cols, np.int64))

    def contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        keys = np.asarray(rows, np.int64) * self.num_cols + np.asarray(cols, np.int64)
        if not len(self.keys):
            return np.zeros(keys.shape, bool)
        where = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[where] == keys


def sample_negatives(
    users: np.ndarray, seen: PairSet, num_items: int, rng: np.random.Generator, max_rounds: int = 100
) -> np.ndarray:
    """One item per user drawn uniformly among the items with (user, item) not in ``seen`` (rejection
    sampling; after ``max_rounds`` redraws a remaining collision is kept: a user who saw every item)."""
    items = rng.integers(0, num_items, len(users))
    redraw = np.flatnonzero(seen.contains(users, items))
    for _ in range(max_rounds):
        if not len(redraw):
            break
        items[redraw] = rng.integers(0, num_items, len(redraw))
        redraw = redraw[seen.contains(users[redraw], items[redraw])]
    return items


class KGTripleSampler:
    """KGAT's phase-II batches over the CKG: (head, relation, positive tail, negative tail), (B,) each."""

    def __init__(self, ckg: CollaborativeGraph) -> None:
        order = np.argsort(ckg.head_index, kind="stable")
        self.head, self.rel, self.tail = ckg.head_index[order], ckg.rel_type[order], ckg.tail_index[order]
        self.heads, self.start, self.degree = np.unique(self.head, return_index=True, return_counts=True)
        self.num_nodes, self.num_relations = ckg.num_nodes, ckg.num_relations
        if self.num_nodes**2 * self.num_relations >= 2**63:
            raise ValueError("graph too large for int64 triple keys")
        self.triples = PairSet(self.head * self.num_relations + self.rel, self.tail, self.num_nodes)

    @property
    def num_edges(self) -> int:
        return len(self.head)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        picked = rng.integers(0, len(self.heads), batch_size)
        edge = self.start[picked] + (rng.random(batch_size) * self.degree[picked]).astype(np.int64)
        head, rel, tail = self.head[edge], self.rel[edge], self.tail[edge]
        row = head * self.num_relations + rel
        neg = sample_negatives(row, self.triples, self.num_nodes, rng)
        return head, rel, tail, neg


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------


def rank_metrics(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user Recall@K and standard NDCG@K from scores (B, I) (masked items at -inf) and the held-out
    items as a bool (B, I) mask; every row must have at least one relevant item. Returns (B,) tensors."""
    num_relevant = relevant.sum(1)
    if bool((num_relevant == 0).any()):
        raise ValueError("every evaluated user needs at least one held-out item")
    k_max = min(max(ks), scores.shape[1])
    top = torch.topk(scores, k_max, dim=1).indices  # (B, K)
    hits = relevant.gather(1, top).to(torch.float64)  # (B, K)
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64, device=scores.device))  # (K,)
    ideal = torch.cumsum(discount, 0)  # ideal[n - 1] = IDCG with n relevant items in the top
    out = {}
    for k in ks:
        kk = min(k, k_max)
        found = hits[:, :kk]
        out[f"recall@{k}"] = found.sum(1) / num_relevant
        dcg = (found * discount[:kk]).sum(1)
        out[f"ndcg@{k}"] = dcg / ideal[torch.clamp(num_relevant, max=kk) - 1]
    return out


def _by_user(interactions: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of the positive rows sorted by user."""
    rows = interactions.label == 1
    users, items = interactions.user_index[rows], interactions.item_index[rows]
    order = np.argsort(users, kind="stable")
    return users[order], items[order]


def _rows_for(sorted_users: np.ndarray, sorted_items: np.ndarray, local_row: np.ndarray, low: int, high: int):
    """Pairs of users in [low, high] that have a local row, as (local rows, items)."""
    begin, end = np.searchsorted(sorted_users, [low, high + 1])
    rows = local_row[sorted_users[begin:end]]
    keep = rows >= 0
    return rows[keep], sorted_items[begin:end][keep]


@torch.no_grad()
def evaluate_topk(
    model: nn.Module,
    held_out: Interactions,
    exclude: Sequence[Interactions] = (),
    ks: Sequence[int] = (20,),
    batch_size: int = 1024,
    max_scores: int = 1 << 24,
    device: str = "cpu",
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K (standard) over the users with held-out items, ranking all items with the
    pairs of ``exclude`` (training, validation) masked. Runs in eval mode: no dropout, no compression."""
    was_training = model.training
    model.eval()
    user_vectors, item_vectors = model.representations()  # (U, D'), (I, D')
    model.train(was_training)
    num_users, num_items = user_vectors.shape[0], item_vectors.shape[0]
    test_users, test_items = _by_user(held_out)
    excluded = [_by_user(part) for part in exclude]
    users = np.unique(test_users)
    totals = {f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg")}
    if not len(users):
        return {name: float("nan") for name in totals}
    rows_per_batch = max(1, min(batch_size, max_scores // max(num_items, 1)))
    local_row = np.full(num_users, -1, np.int64)
    for start in range(0, len(users), rows_per_batch):
        batch = users[start : start + rows_per_batch]
        local_row[batch] = np.arange(len(batch))
        low, high = int(batch[0]), int(batch[-1])
        scores = user_vectors[torch.as_tensor(batch, device=user_vectors.device)] @ item_vectors.t()  # (B, I)
        for part_users, part_items in excluded:
            rows, cols = _rows_for(part_users, part_items, local_row, low, high)
            scores[torch.as_tensor(rows), torch.as_tensor(cols)] = -math.inf
        relevant = torch.zeros(len(batch), num_items, dtype=torch.bool, device=scores.device)  # (B, I)
        rows, cols = _rows_for(test_users, test_items, local_row, low, high)
        relevant[torch.as_tensor(rows), torch.as_tensor(cols)] = True
        for name, values in rank_metrics(scores, relevant, ks).items():
            totals[name] += float(values.sum())
        local_row[batch] = -1
    return {name: total / len(users) for name, total in totals.items()}


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopKConfig:
    """Optimisation settings. ``patience``: validation evaluations without a better Recall@20 before
    stopping (0 = never stop early); validation runs every ``eval_every`` epochs. ``kg_batch_size`` is
    used by models with a knowledge-graph phase (KGAT)."""

    epochs: int = 100
    batch_size: int = 1024
    kg_batch_size: int = 2048
    lr: float = 1e-3
    patience: int = 0
    eval_every: int = 1
    ks: tuple[int, ...] = (20,)
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 1024
    progress: bool = True
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "kg_batch_size", "eval_every", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.patience < 0:
            raise ValueError("patience must be >= 0")
        ks = tuple(int(k) for k in self.ks)
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive ints, got {self.ks!r}")
        object.__setattr__(self, "ks", tuple(sorted(set(ks) | {20})))
        check_cuda_graph_device(self.cuda_graph, self.device)


def _long(values: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long, device=device)


def first_batch(train: Interactions, batch_size: int, seed: int, device="cpu") -> tuple[torch.Tensor, ...]:
    """The (user, positive, negative) batch whose activation memory is reported: the first training rows,
    negatives from a generator of their own (the run's sampling is not disturbed)."""
    seen = PairSet(train.user_index, train.item_index, train.num_items)
    users, items = train.user_index[:batch_size], train.item_index[:batch_size]
    negatives = sample_negatives(users, seen, train.num_items, np.random.default_rng([seed, 7]))
    return _long(users, device), _long(items, device), _long(negatives, device)


def fit_topk(
    model: nn.Module,
    train: Interactions,
    valid: Interactions,
    test: Interactions,
    config: TopKConfig,
    *,
    kg_sampler: KGTripleSampler | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a top-K model (`tinykg.models.bprmf.TopKModel`) with BPR; test metrics at the best epoch.

    With ``kg_sampler`` (KGAT) every epoch adds the TransR phase and ``model.update_attention()``. Sampling
    draws from ``np.random.default_rng([seed, epoch])`` and dropout / quantization noise from torch's
    global generator, so a CPU run is a pure function of its seed. The activation memory reported is that
    of one BPR step on `first_batch` (this process's part of it). Under torch.distributed every rank trains
    on its shard of each global BPR and TransR batch and rank 0 evaluates and logs: see
    `tinykg.train.distributed`.
    """
    device = torch.device(config.device)
    model.to(device)
    log = distributed.rank_zero_only(log)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, capturable=config.cuda_graph)
    # KGAT's TransR phase stays eager: its per-relation grouping reads each relation's count to the host.
    graphed = graphed_step(model.loss, optimizer, config.cuda_graph, name=f"{type(model).__name__} BPR step")
    kg_optimizer = torch.optim.Adam(model.parameters(), lr=config.lr) if kg_sampler is not None else None
    # KGAT's BPR and TransR phases train different parameter subsets: DDP must look for the unused ones.
    step_loss = distributed.wrap(model, find_unused_parameters=kg_sampler is not None)
    num_rows = train.num_interactions
    if num_rows == 0:
        raise ValueError("no training positives")
    seen = PairSet(train.user_index, train.item_index, train.num_items)
    num_batches = math.ceil(num_rows / config.batch_size)
    num_kg_batches = math.ceil(kg_sampler.num_edges / config.kg_batch_size) if kg_sampler is not None else 0

    batch = first_batch(train, distributed.per_rank_batch_size(config.batch_size), config.seed, device)
    step_report = measure_step_activation(model, batch, exclude=batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    has_valid = valid.num_interactions > 0
    best_score, best_epoch, best_state, bad_evals = -math.inf, 0, None, 0
    history: list[dict[str, float]] = []
    epoch_seconds: list[float] = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        distributed.seed_epoch(config.seed, epoch)
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(num_rows)
        users, positives = train.user_index[order], train.item_index[order]
        negatives = sample_negatives(users, seen, train.num_items, rng)
        users, positives, negatives = (_long(a, device) for a in (users, positives, negatives))
        positions = torch.arange(num_rows, device=device)
        start = time.perf_counter()
        total_loss = total_kg_loss = 0.0
        bar = tqdm(range(num_batches), desc=f"epoch {epoch}", leave=False, disable=not (config.progress and distributed.is_main()), unit="batch")
        for step in bar:
            rows, weight = distributed.shard(positions[step * config.batch_size : (step + 1) * config.batch_size])
            if graphed is not None:  # forward, backward and update replayed: the check below comes after them
                loss = graphed(users[rows], positives[rows], negatives[rows])
            else:
                optimizer.zero_grad(set_to_none=True)  # before the forward: last step's gradients are not held through it
                loss = step_loss("loss", users[rows], positives[rows], negatives[rows])
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step + 1}")
            if graphed is None:
                (loss * weight).backward()
                optimizer.step()
            total_loss += loss.item() * weight
        if graphed is not None:
            graphed.check()
        for step in range(num_kg_batches):
            # Every rank draws the same global TransR batch (same rng) and trains on its shard of it.
            triples = [_long(a, device) for a in kg_sampler.sample(config.kg_batch_size, rng)]
            rows, weight = distributed.shard(torch.arange(config.kg_batch_size, device=device))
            kg_optimizer.zero_grad(set_to_none=True)
            kg_loss = step_loss("kg_loss", *(t[rows] for t in triples))
            if not torch.isfinite(kg_loss):
                raise TrainingError(f"non-finite KG loss ({kg_loss.item()}) at epoch {epoch}, step {step + 1}")
            (kg_loss * weight).backward()
            kg_optimizer.step()
            total_kg_loss += kg_loss.item() * weight
        if kg_sampler is not None:
            model.update_attention()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds.append(time.perf_counter() - start)
        record = {"epoch": epoch, "loss": distributed.mean_across(total_loss) / num_batches}
        message = f"epoch {epoch:>3}/{config.epochs}  loss {record['loss']:.4f}"
        if num_kg_batches:
            record["kg_loss"] = distributed.mean_across(total_kg_loss) / num_kg_batches
            message += f"  kg {record['kg_loss']:.4f}"
        evaluate_now = has_valid and (epoch % config.eval_every == 0 or epoch == config.epochs)
        if evaluate_now:
            metrics = distributed.from_rank_zero(
                lambda: evaluate_topk(model, valid, (train,), config.ks, config.eval_batch_size, device=config.device)
            )
            record.update({f"valid_{k}": v for k, v in metrics.items()})
            message += f"  valid recall@20 {metrics['recall@20']:.4f} ndcg@20 {metrics['ndcg@20']:.4f}"
        history.append(record)
        log(f"{message}  {epoch_seconds[-1]:.1f}s")
        if not evaluate_now:
            continue
        if metrics[EARLY_STOP_METRIC] > best_score:
            best_score, best_epoch, bad_evals = metrics[EARLY_STOP_METRIC], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_evals += 1
            if config.patience and bad_evals >= config.patience:
                log(f"early stop: no better validation {EARLY_STOP_METRIC} for {count_of(config.patience, 'evaluation')}")
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(epoch_seconds)
    test_metrics = distributed.from_rank_zero(
        lambda: evaluate_topk(model, test, (train, valid), config.ks, config.eval_batch_size, device=config.device)
    )
    return TrainResult(
        metrics=test_metrics,
        best_epoch=best_epoch,
        epochs_run=len(epoch_seconds),
        epoch_seconds=epoch_seconds,
        history=history,
        activation_bytes=step_report.total_bytes,
        activation_bytes_by_op=step_report.by_op,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    )


# --------------------------------------------------------------------------------------------------------
# From a dataset to a results payload
# --------------------------------------------------------------------------------------------------------


def topk_dataset_key(name: str) -> str:
    """Which TOPK_DEFAULTS set fits a dataset, from its name: ``lastfm``, ``synthetic``, else ``recbole``
    (the settings for real data of general size)."""
    if is_lastfm_name(name):
        return "lastfm"
    if name.lower().startswith("synthetic"):
        return "synthetic"
    return "recbole"


def topk_hyperparameters(name: str, key: str = "synthetic", overrides: dict | None = None) -> dict:
    """``TOPK_DEFAULTS[name][key]`` updated by ``overrides``; unknown model, key or override -> ValueError."""
    if name not in TOPK_MODELS:
        raise ValueError(f"unknown top-K model {name!r}; allowed: {', '.join(TOPK_MODELS)}")
    return settings_for(name, TOPK_DEFAULTS[name], key, overrides)


def _unique_positives(interactions: Interactions) -> Interactions:
    """Label-1 rows with repeated (user, item) pairs dropped (first occurrence kept, order preserved)."""
    positives = interactions.positives()
    keys = positives.user_index * max(positives.num_items, 1) + positives.item_index
    _, first = np.unique(keys, return_index=True)
    return positives.select(np.sort(first))


def topk_split_for(dataset: Dataset, key: str, seed: int) -> tuple[Interactions, Interactions, Interactions]:
    """(train, valid, test) positives. A dataset with a fixed test split (KGAT format) keeps it and takes
    validation from its training positives; otherwise a seeded per-user split by ``SPLITS[key]``
    (Last.FM / synthetic: 80/20 train/test, 10% of train for validation; RecBole: 8:1:1)."""
    test_ratio, valid_ratio = SPLITS.get(key, SPLITS["recbole"])
    positives = _unique_positives(dataset.interactions)
    if dataset.test_interactions is not None:
        train, valid, _ = topk_split(positives, test_ratio=0.0, valid_ratio=valid_ratio, seed=seed)
        return train, valid, _unique_positives(dataset.test_interactions)
    return topk_split(positives, test_ratio=test_ratio, valid_ratio=valid_ratio, seed=seed)


def build_topk_model(
    name: str, dataset: Dataset, train: Interactions, *, compression: CompressionConfig | None, params: dict
) -> tuple[nn.Module, KGTripleSampler | None]:
    """Model ``name`` over the graph built from the TRAINING positives and the KG, plus KGAT's triple
    sampler (None for the others)."""
    settings = {k: v for k, v in params.items() if k not in TRAINING_KEYS}
    kg, num_users, num_items = dataset.kg, train.num_users, train.num_items
    num_entities = max(kg.num_entities, num_items)
    model_class = TOPK_MODELS[name]
    if name == "bprmf":
        return model_class(num_users, num_items, compression=compression, **settings), None
    if name == "kgat":
        ckg = build_ckg(train, kg, norm=settings.pop("adj_norm", "si"))
        return model_class.from_ckg(ckg, num_items, compression=compression, **settings), KGTripleSampler(ckg)
    full_kg = kg_with_inverse(kg, num_entities)
    model = model_class(
        num_users, num_items, num_entities, max(full_kg.num_relations, 1),
        full_kg.head_index, full_kg.rel_type, full_kg.tail_index, train.user_index, train.item_index,
        compression=compression, **settings,
    )
    return model, None


@restoring_quantizer_seed()  # seed_everything seeds it for this run only
def train_topk(
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
    cuda_graph: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Split, build, train and evaluate one top-K model; returns the results-file payload (the schema of
    `tinykg.train.run.train_ctr`, with ``metrics`` = test recall@K and ndcg@K). ``bits == 32``: fp32.
    Inside a torch.distributed process group every rank calls this with the same arguments; ``batch_size``
    and ``kg_batch_size`` are global batches (`tinykg.train.distributed`)."""
    from .run import compression_for  # run.py imports the CTR stack; imported late to keep this module light

    log = distributed.rank_zero_only(log)
    key = key or topk_dataset_key(dataset.name)
    params = topk_hyperparameters(model_name, key, overrides)
    seed_everything(seed)
    train, valid, test = topk_split_for(dataset, key, seed)
    compression = compression_for(bits, group_size, backend)  # group None: 64 at 1 bit, else 256
    model, kg_sampler = build_topk_model(model_name, dataset, train, compression=compression, params=params)
    config = TopKConfig(
        epochs=params["epochs"], batch_size=params["batch_size"], kg_batch_size=params.get("kg_batch_size", 2048),
        lr=params["lr"], patience=patience, eval_every=params.get("eval_every", 1), seed=seed, device=device,
        progress=progress, cuda_graph=cuda_graph,
    )
    fp32_bytes = None
    if compression is not None:
        # The same first batch through the same model with compression off: the baseline it saves.
        model.to(device)
        model.compression = None
        batch = first_batch(train, distributed.per_rank_batch_size(config.batch_size), seed, device)
        fp32_bytes = measure_step_activation(model, batch, exclude=batch).total_bytes
        model.compression = compression
    log(
        f"tinykg: {model_name} on {dataset.name} ({dataset.num_users:,} users, {dataset.num_items:,} items, "
        f"{dataset.kg.num_triples:,} triples; {train.num_interactions:,}/{valid.num_interactions:,}/"
        f"{test.num_interactions:,} train/valid/test positives), "
        f"{'fp32' if compression is None else f'{bits}-bit'} activations, {count_of(config.epochs, 'epoch')}, "
        f"batch {config.batch_size}, lr {config.lr}, seed {seed}, {key!r} hyper-parameters"
        + (f", {distributed.world_size()} processes" if distributed.world_size() > 1 else "")
    )
    result = fit_topk(model, train, valid, test, config, kg_sampler=kg_sampler, log=log)
    split = {"train": train.num_interactions, "valid": valid.num_interactions, "test": test.num_interactions}
    return results_payload(
        model_name, dataset, bits, seed, dict(result.metrics), result, fp32_bytes, params, compression, device,
        hparams=key, split=split, cuda_graph=cuda_graph,
    )
