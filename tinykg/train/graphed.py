"""A whole training step (loss, backward, optimizer update) captured in a CUDA graph and replayed.

On a GPU a small model's step is bound by its host: launching a few hundred kernels from Python takes
longer than running them. A compressed step launches more, and runs more Python (its autograd Functions'
forward and backward), so there its extra time is the host's: on an H200, 2-bit KGAT on the synthetic
default took 1.64x fp32's eager step, but captured whole in a graph 0.68x (benchmarks/RESULTS.md,
session 18). Replaying a graph issues the whole step with one call.

What a capture would freeze, and what replays change instead:

- **Quantization noise and compressed dropout masks.** Their seeds are kernel arguments, fixed at capture.
  The Triton kernels also read a salt from device memory (`tinykg.compress.rng.device_salt`), which the
  graph's first op advances: every replay uses new seeds, `salted_seed(seed, salt)`, each the reference's
  noise for that seed. The salt starts from a draw of the quantizer's seed stream, so a run is
  reproducible. Other backends raise inside a capture instead of freezing their seeds.
- **PyTorch's own random ops** on the GPU (``F.dropout``, ``torch.rand``) advance their CUDA generator per
  replay themselves (not a small ``torch.randperm``, drawn on the host: KGIN sorts random keys instead).
- **Exact groups** (groups with a non-finite value, or whose range passes the dtype's largest value) have a
  data-dependent size, and a capture cannot wait for the device. Captured quantize calls keep none and set
  one device word instead (`tinykg.compress.triton_kernels.exact_groups_to`); the graph copies it to the
  host, and the next call (or `check`) raises `ExactGroupsInGraph` if it was set: that replay computed
  with wrong values where the activations were non-finite or out of range.

Requirements: a CUDA model, an optimizer built with ``capturable=True`` (Adam, AdamW), one process (no
DDP), and a loss with no host reads (``.item()``, boolean-mask indexing, ``.tolist()``): capture fails on
those with CUDA's "operation not permitted when stream is capturing", which is re-raised naming the step.
A failed capture can leave PyTorch's CUDA state (its generator, its allocator) unusable in that process.
Batches of the captured shapes are replayed; others (a last, smaller batch) run eagerly. A run resumed
from a checkpoint captures anew, with a new salt: it draws other noise than the uninterrupted run would.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..compress.rng import device_salt, draw_seed
from ..compress.triton_kernels import exact_groups_to
from .errors import TrainingError


class ExactGroupsInGraph(TrainingError):
    """A replayed step met activations that must be kept exactly (non-finite, or beyond the dtype's range)."""


def _signature(batch: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((t.shape, t.dtype, t.device) for t in batch)


class GraphedStep:
    """``loss_fn(*batch)`` (a scalar loss), its backward and ``optimizer.step()``, run eagerly for the first
    ``warmup`` calls, then captured in one CUDA graph and replayed for every batch of the same shapes and
    dtypes as the first call's (other batches, before the capture too, run eagerly).

    Each call returns the step's loss, detached: a tensor the next replay overwrites (read it, or clone it,
    before the next call). Replays write the gradients into the tensors the capture made; ``p.grad`` shows
    them until something else replaces it (another optimizer's ``zero_grad(set_to_none=True)``, as KGAT's
    TransR phase does), which does not disturb the replays: read gradients right after a call.

    Args:
        loss_fn: the loss of one batch, from CUDA tensors on the parameters' device.
        optimizer: its ``step()`` is captured; it must have been built with ``capturable=True``.
        warmup: eager steps before the capture (lazy initialisation: the optimizer's state, kernel
            compilation, library workspaces), run on a side stream as capture requires.
        name: says which step failed to capture.
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, *, warmup: int = 3,
                 name: str = "training step") -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("tinykg: CUDA-graph steps need a CUDA device (torch.cuda.is_available() is False)")
        for group in optimizer.param_groups:
            if group.get("capturable") is not True:
                raise ValueError(f"tinykg: a CUDA-graph step needs an optimizer built with capturable=True "
                                 f"({type(optimizer).__name__} has capturable={group.get('capturable')})")
        devices = {p.device for group in optimizer.param_groups for p in group["params"]}
        if len(devices) != 1 or next(iter(devices)).type != "cuda":
            raise ValueError(f"tinykg: a CUDA-graph step needs its parameters on one CUDA device, got {sorted(map(str, devices))}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 eager step before the capture, got {warmup}")
        self.loss_fn, self.optimizer, self.warmup, self.name = loss_fn, optimizer, warmup, name
        self.device = next(iter(devices))
        with torch.cuda.device(self.device):
            # The salt starts from the quantizer's stream: a seeded run replays the same noise.
            self._salt = torch.tensor([draw_seed()], dtype=torch.int64, device=self.device)
            self._word = torch.zeros(1, dtype=torch.int32, device=self.device)  # set by a captured exact group
            self._host_word = torch.zeros(1, dtype=torch.int32, pin_memory=True)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._signature: tuple | None = None  # the first batch's: the one captured
        self._static: tuple[torch.Tensor, ...] = ()
        self._graph_grads: dict[int, torch.Tensor] = {}  # the gradient tensors the capture made, by id
        self._loss: torch.Tensor | None = None
        self._done: torch.cuda.Event | None = None  # the last replay's end
        self.calls = self.replays = self.eager_steps = 0

    def _params(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _body(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """What the graph holds: salt advance, loss, backward, update, exact-group word to the host. The
        loss comes back detached: a loss that kept its autograd graph would keep that graph's gradient
        accumulators (made on the capture's stream) for the next eager backward, which then syncs streams."""
        self._salt.add_(1)
        self._word.zero_()
        with device_salt(self._salt):
            loss = self.loss_fn(*batch)
            loss.backward()
        self.optimizer.step()
        self._host_word.copy_(self._word, non_blocking=True)
        return loss.detach()

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):
            self.check()
            self.calls += 1
            signature = _signature(batch)
            if self._signature is None:
                self._signature = signature
            if signature != self._signature:
                return self._eager(batch)
            if self._graph is None and self.calls - self.eager_steps <= self.warmup:
                return self._eager_warmup(batch)
            if self._graph is None:
                self._capture(batch)
            else:
                for static, value in zip(self._static, batch):
                    static.copy_(value, non_blocking=True)
            self._graph.replay()
            self.replays += 1
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(self.device))
            return self._loss

    def _eager_warmup(self, batch) -> torch.Tensor:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._body(batch)
        current.wait_stream(side)
        self._done = torch.cuda.Event()
        self._done.record(current)
        return loss

    def _eager(self, batch) -> torch.Tensor:
        """A batch of another shape: an eager step with the quantizer's ordinary seeds. Gradients start from
        nothing, as in an eager loop; those in the capture's tensors are zeroed in place (the graph keeps
        writing into them), the others set to None."""
        self.eager_steps += 1
        for p in self._params():
            if p.grad is not None:
                if self._graph_grads.get(id(p.grad)) is p.grad:
                    p.grad.zero_()
                else:
                    p.grad = None
        loss = self.loss_fn(*batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _capture(self, batch) -> None:
        self._static = tuple(t.clone() for t in batch)
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward writes fresh gradient tensors
        torch.cuda.synchronize(self.device)
        caller_stream = torch.cuda.current_stream(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            # A capture stream of this device (torch.cuda.graph's default one is made once per process, on
            # whichever device was current then).
            with exact_groups_to(self._word), torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device)):
                self._loss = self._body(self._static)
        except Exception as err:  # a failed capture raises again on leaving the block: keep the cause
            torch.cuda.set_stream(caller_stream)  # a capture that raised may leave its own stream current
            cause = err.__context__ if isinstance(err.__context__, Exception) else err
            raise TrainingError(
                f"tinykg: the {self.name} could not be captured in a CUDA graph ({type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else ''}); an op in it reads a result back to the "
                "host (.item(), boolean-mask indexing, .tolist()) or is not capturable: train without "
                "--cuda-graph (CUDA may not recover from a failed capture in this process: restart it)") from cause
        self._graph = graph
        self._graph_grads = {id(p.grad): p.grad for p in self._params() if p.grad is not None}

    def check(self) -> None:
        """Wait for the last replay and raise `ExactGroupsInGraph` if it met an exact group."""
        if self._done is None:
            return
        self._done.synchronize()
        self._done = None
        if self.replays and int(self._host_word[0]):
            self._host_word.zero_()
            raise ExactGroupsInGraph(
                f"tinykg: a replay of the CUDA-graph {self.name} quantized activations that must be kept exactly "
                "(non-finite, or beyond the dtype's largest value); a captured step cannot keep them, so that "
                "step's gradients are wrong there: train without --cuda-graph (this often means the run diverged)")



def graphed_step(loss_fn: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, enabled: bool, *,
                 name: str) -> GraphedStep | None:
    """The training loops' step: a `GraphedStep` when ``enabled`` (``--cuda-graph``), else None (eager)."""
    if not enabled:
        return None
    from . import distributed

    if distributed.world_size() > 1:
        raise ValueError("--cuda-graph runs one process: a DDP step's gradient all-reduce is not captured here")
    return GraphedStep(loss_fn, optimizer, name=name)


def check_cuda_graph_device(cuda_graph: bool, device: str) -> None:
    """Raise ValueError for ``cuda_graph`` on a device that is not a GPU (the training configs call this)."""
    if cuda_graph and torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graph (--cuda-graph) captures GPU steps: it needs a CUDA device, got {device!r}")
