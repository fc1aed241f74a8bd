"""tinykg.compress.checkpoint: activation checkpointing whose held memory the tracker counts exactly."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinykg.compress import checkpoint
from tinykg.profile import ActivationTracker

CPU_RNG_STATE_BYTES = torch.get_rng_state().numel()  # a uint8 tensor


def _segment(lin):
    def run(h):
        return F.dropout(torch.relu(lin(torch.relu(lin(h)))), 0.5, training=True)  # (N, 64)

    return run


@pytest.mark.parametrize("preserve_rng_state", (True, False))
def test_checkpoint_holds_exactly_its_input_and_the_rng_state(preserve_rng_state):
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    x = torch.randn(100, 64, requires_grad=True)
    with ActivationTracker(lin) as plain:
        y_plain = _segment(lin)(x * 2)
    with ActivationTracker(lin) as tracker:
        h = x * 2  # the segment's input (non-leaf): 100 * 64 * 4 bytes, kept for the recomputation
        y = checkpoint(_segment(lin), h, preserve_rng_state=preserve_rng_state)
    rng_bytes = CPU_RNG_STATE_BYTES if preserve_rng_state else 0
    assert tracker.report().total_bytes == 100 * 64 * 4 + rng_bytes
    # Without checkpointing the same segment keeps h, both ReLU outputs and the dropout mask.
    assert plain.report().total_bytes > 3 * 100 * 64 * 4
    (y.sum() + y_plain.sum()).backward()


def test_checkpoint_replays_dropout_and_gives_the_plain_gradients():
    lin = nn.Linear(64, 64)
    x = torch.randn(100, 64, requires_grad=True)
    grads, outputs, next_draws = [], [], []
    for use_checkpoint in (False, True):
        torch.manual_seed(1)
        h = x * 2
        y = checkpoint(_segment(lin), h) if use_checkpoint else _segment(lin)(h)
        (y * y).sum().backward()
        outputs.append(y.detach())
        grads.append([x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone()])
        next_draws.append(torch.rand(4))  # the replay must leave the global generator where it was
        x.grad = None
        lin.zero_grad()
    assert torch.equal(outputs[0], outputs[1])
    for plain, recomputed in zip(*grads):
        assert torch.equal(plain, recomputed)  # the same ops on the same values: bit for bit
    assert torch.equal(next_draws[0], next_draws[1])


def test_checkpoint_without_grad_is_the_plain_call():
    lin = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with torch.no_grad(), ActivationTracker(lin) as tracker:
        y = checkpoint(lin, x)
    assert tracker.report().total_bytes == 0
    assert torch.equal(y, lin(x).detach())
