"""Data-parallel training on several processes with ``torch.distributed`` (DDP), as ``torchrun`` launches it.

Both training loops (`tinykg.train.loop.fit_ctr`, `tinykg.train.topk.fit_topk`) call the helpers below; with
one process every helper is the identity and the loops run exactly as before. The conventions:

* **Global batch.** ``batch_size`` is the GLOBAL batch. Every rank draws the same shuffled order (the loops
  seed it from ``(seed, epoch)`` only), cuts the same global batch of B rows, and keeps rows ``rank,
  rank + W, rank + 2W, ...`` of it (`shard`; W = world size). A run on W processes therefore takes the same
  optimisation steps as one process with the same ``batch_size`` and published learning rate, and each
  process holds the activations of about B / W rows (`per_rank_batch_size`). Full-graph models (KGAT, KGIN)
  replicate the graph on every rank and split only the interaction (and TransR) batches.
* **Gradients.** DDP averages gradients over ranks. Each rank's mean loss over its n_r rows is multiplied by
  ``W * n_r / B`` before ``backward``, so that average is the gradient of the global batch's mean loss even
  when B does not divide by W (a rank left without a row runs one row at weight 0, to take part in the
  all-reduce). Loss terms that are means over the batch rows or depend on the parameters only are
  reproduced exactly, up to float summation order: every term of every tinykg model except RippleNet's L2
  term, a SUM over the batch rows (as in the original), which this weighting scales by about 1 / W.
* **Randomness.** Every rank builds the model from the same seed, so the initial weights agree (`wrap` also
  broadcasts rank 0's). Dropout comes from torch's global generator and the quantizer's stochastic-rounding
  noise from its own (`tinykg.compress.seed_quantizer`); with W > 1 every rank re-seeds both at the start of each epoch from
  ``(seed, epoch, rank)`` (`seed_epoch`), so the ranks compress their activations with independent noise and
  a resumed run draws the same noise as an uninterrupted one. Runs on different W therefore agree exactly
  only when nothing random is drawn (``bits=32``, no dropout).
* **Rank 0** evaluates (the other ranks receive its metrics, `from_rank_zero`, so early stopping is decided
  identically everywhere), logs, and writes checkpoints and the results file. Every rank keeps the same best
  state. Buffers (graph structure, KGAT's attention) are built or recomputed identically on every rank from
  the same data, seed and parameters, so they are never broadcast: neither when DDP wraps the model
  (``init_sync=False``; gloo cannot even send the int16 index tables) nor at every step
  (``forward_sync_buffers=False``).
* **Models.** The loops call ``model.loss`` and KGAT's ``model.kg_loss``, not ``forward``; DDP only
  synchronises gradients of outputs produced by its own forward, so `wrap` routes the call through it. KGAT's
  two phases train different parameter subsets (TransR leaves the propagation weights unused and the BPR phase
  TransR's relation tables), which needs ``find_unused_parameters=True``; parameters that no rank used keep
  ``grad=None`` and Adam skips them, as in a single process.

Where the design stops: every rank holds a full replica of the embedding tables (and, for the full-graph
models, of the graph), so the largest model that fits is the one that fits one device; sharding the tables
across ranks is the next step. Evaluation runs on rank 0 only.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..compress import seed_quantizer

T = TypeVar("T")


def world_size() -> int:
    """Number of training processes (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process logs and writes files (rank 0)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun (or `launch`) started this process: its environment names a rank and a world size."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: str = "cpu") -> str:
    """Join the process group that torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo for a CPU device, NCCL for CUDA.

    Returns the device this process trains on: ``device`` on CPU, ``cuda:LOCAL_RANK`` for CUDA (``cuda:N``
    with an explicit N is refused: each process takes the GPU of its local rank). Does nothing, and returns
    ``device``, when the group already exists or the environment holds no world of two or more processes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device).type == "cuda":
        if torch.device(device).index is not None:
            raise ValueError(f"--device {device}: with several processes use 'cuda'; each takes cuda:LOCAL_RANK")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        _share_cpu_threads()
        dist.init_process_group("gloo")
    return device


def _share_cpu_threads() -> None:
    """Give each local process its share of the cores (``OMP_NUM_THREADS`` if set, as torchrun sets it)
    instead of letting every process start one thread per core: oversubscribed OpenMP threads spin and
    slow small kernels down by orders of magnitude."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, (os.cpu_count() or 1) // local_world)
    # The CPU quantization kernels split their work over torch.get_num_threads() threads: the same share.
    torch.set_num_threads(threads)


@contextmanager
def process_group(device: str = "cpu") -> Iterator[str]:
    """`init_from_env` for the duration of a ``with`` block; yields the device of this process. On a normal
    exit the ranks meet at a barrier (rank 0 has written its files) and the group it started is destroyed.
    An exception leaves without either: the other ranks may be inside a collective that would never end,
    and torchrun stops them when this process fails."""
    already_started = world_size() > 1
    device = init_from_env(device)
    yield device
    if world_size() > 1 and not already_started:
        dist.barrier()
        dist.destroy_process_group()


def launch(entrypoint: Callable[..., T], args: Sequence, nproc: int) -> list[T]:
    """Run ``entrypoint(*args)`` in ``nproc`` new local processes, as ``torchrun --standalone
    --nproc-per-node nproc`` would (same launcher, a free port); returns the return values by rank.
    A failing process stops the others and raises ``ChildFailedError``."""
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
    )
    results = elastic_launch(config, entrypoint)(*args)
    return [results[r] for r in sorted(results)]


def rank_zero_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on rank 0, a no-op on the other ranks."""
    return log if is_main() else (lambda _message: None)


def per_rank_batch_size(batch_size: int) -> int:
    """Rows of a global batch of ``batch_size`` that rank 0 (the largest shard) trains on."""
    return -(-batch_size // world_size())


def shard(rows: T) -> tuple[T, float]:
    """This rank's part of a global batch ``rows`` (a 1-D tensor or array of row indices) and its loss weight.

    Rank r keeps ``rows[r::W]``; the weight ``W * n_r / len(rows)`` makes DDP's gradient average equal the
    gradient of the mean loss over all of ``rows``. A rank with no row gets ``rows[:1]`` at weight 0.
    """
    size, index = world_size(), rank()
    local = rows[index::size]
    if len(local) == 0:
        return rows[:1], 0.0
    return local, size * len(local) / len(rows)


class _MethodCall(nn.Module):
    """``forward(name, *batch) = model.name(*batch)``: lets DDP see the calls of ``loss`` and ``kg_loss``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, name: str, *batch: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, name)(*batch)


def wrap(model: nn.Module, find_unused_parameters: bool = False) -> Callable[..., torch.Tensor]:
    """A callable ``step(name, *batch)`` returning ``model.name(*batch)``; with several processes it runs
    through `DistributedDataParallel`, whose backward all-reduces the gradients. ``model`` must already be on
    its device. ``find_unused_parameters``: the calls use different parameter subsets (KGAT's two phases)."""
    if world_size() == 1:
        return lambda name, *batch: getattr(model, name)(*batch)
    device = next(model.parameters()).device
    for parameter in model.parameters():  # start from rank 0's weights (DDP's own init sync would send the buffers too)
        dist.broadcast(parameter.detach(), src=0)
    return DistributedDataParallel(
        _MethodCall(model),
        device_ids=[device.index] if device.type == "cuda" else None,
        init_sync=False,
        forward_sync_buffers=False,
        find_unused_parameters=find_unused_parameters,
    )


def seed_epoch(seed: int, epoch: int) -> None:
    """With several processes: re-seed torch's global generator (dropout) and the quantizer's (quantization
    noise) from ``(seed, epoch, rank)``, so that ranks draw independent noise and a resumed run draws the
    same noise. With one process: nothing (the single-process run keeps its own seeding)."""
    if world_size() == 1:
        return
    state = int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1, np.uint64)[0])
    torch.manual_seed(state)
    seed_quantizer(state)


def _communication_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_across(value: float) -> float:
    """The mean of ``value`` over the ranks (``value`` itself with one process)."""
    size = world_size()
    if size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_communication_device())
    dist.all_reduce(total)
    return float(total.item()) / size


def from_rank_zero(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 only and its (picklable) result handed to every rank."""
    if world_size() == 1:
        return compute()
    box = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=_communication_device())
    return box[0]
