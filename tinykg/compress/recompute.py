"""Activation checkpointing -- recompute instead of store -- made visible to tinykg's memory accounting.

The classic alternative to compressing activations (Chen et al. 2016, "Training deep nets with sublinear
memory cost"): a checkpointed segment keeps only its inputs for backward and runs its forward again when
backward reaches it. `checkpoint` is `torch.utils.checkpoint.checkpoint` in its non-reentrant form with
one difference: everything the segment holds for backward is reported to the observers of
`observe_saved_tensors`, so `tinykg.profile.ActivationTracker` counts it exactly:

* the segment's tensor inputs (PyTorch saves them through the saved-tensor hooks that are active, so the
  observers already see them);
* the random-number-generator state needed to replay the segment's randomness (dropout) identically.
  PyTorch keeps that state where no hook sees it; here it is captured and restored by `checkpoint`
  itself (CPU generator, plus the CUDA generators of the devices of the inputs), and reported.

What a tracker cannot see is the memory of the recomputation itself: while backward runs through a
segment, the segment's own saved activations exist again, in full precision. The peak of a checkpointed
step is therefore the bytes held after the forward plus the largest segment's saved bytes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.utils.checkpoint

from .hooks import _notify


def _cuda_devices(args) -> list[int]:
    return sorted({a.device.index or 0 for a in args if isinstance(a, torch.Tensor) and a.device.type == "cuda"})


def checkpoint(fn: Callable, *args, preserve_rng_state: bool = True):
    """``fn(*args)`` whose intermediate activations are recomputed in backward instead of kept.

    Args:
        fn: the segment; called twice (forward, then once per backward that reaches it). It must compute
            the same thing both times given the same inputs and random state.
        args: its inputs. Tensors among them are held until backward (and counted); parameters the
            segment reads from its module are not inputs and cost nothing.
        preserve_rng_state: replay the random draws of the forward during recomputation (needed with
            dropout; the CPU generator state is 5,056 bytes, counted as held).

    Under ``torch.no_grad()`` this is just ``fn(*args)``. Example::

        x = checkpoint(layer, x)          # instead of x = layer(x)
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    if not preserve_rng_state:
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
    devices = _cuda_devices(args)
    cpu_state = torch.get_rng_state()
    cuda_states = [torch.cuda.get_rng_state(d) for d in devices]
    for state in (cpu_state, *cuda_states):
        _notify(state, state)
    calls = 0

    def replay(*inputs):
        nonlocal calls
        calls += 1
        if calls == 1:  # the forward itself: draw from the live generators
            return fn(*inputs)
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_state)
            for device, state in zip(devices, cuda_states):
                torch.cuda.set_rng_state(state, device)
            return fn(*inputs)

    # The states live in ``replay``'s closure, which the checkpoint frame keeps until the graph is freed.
    return torch.utils.checkpoint.checkpoint(replay, *args, use_reentrant=False, preserve_rng_state=False)
