"""The compressed models' gradients are unbiased: over many quantization draws, the mean gradient
converges to the fp32 gradient of the same weights and batch, as fast as the noise alone allows.

Statistic: with N independent draws g_1..g_N of the compressed gradient (P elements, per-element
variance s_i^2), R = ||mean - exact||^2 / (sum_i s_i^2 / N). If E[g] = exact, the numerator's expectation
is exactly the denominator's (the variance of a mean of N draws), so R is about 1 (measured 0.9-1.2 at
1 and 2 bits for every model, 64 draws); a bias b adds ||b||^2 / (sum s^2 / N) to it, i.e. a bias whose
norm is one standard error of the mean doubles R. Unlike per-element z-scores, R needs no normality:
elements whose code rarely changes (a value just above its group's fp16-rounded zero point jumps a
whole step with small probability) have a mean that looks biased in 64 draws but weigh in R by their
true, tiny contribution. The bound 2 allows the sampling spread of R (the sum is dominated by a few
hundred elements of comparable variance) and rejects a bias of one standard error in norm.
Round-to-nearest (``stochastic=False``) shows the check has power: it is biased with zero variance.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tinykg.compress import CompressionConfig

from .factories import NAMES, TOY, batch, make_model

NUM_DRAWS = 64
R_BOUND = 2.0


def _gradients(model, data) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    model.loss(*data).backward()
    grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()]
    return torch.cat(grads).double()


def _bias_ratio(name: str, config: CompressionConfig) -> float:
    model = make_model(name, None, sizes=TOY, embedding_dim=16)
    data = batch(TOY["num_users"], TOY["num_items"], 64)
    exact = _gradients(model, data)
    compressed = copy.deepcopy(model)
    compressed.compression = config
    torch.manual_seed(0)
    draws = torch.stack([_gradients(compressed, data) for _ in range(NUM_DRAWS)])  # (N, P)
    error = (draws.mean(0) - exact).pow(2).sum()
    noise = draws.var(0).sum() / NUM_DRAWS
    return (error / noise).item() if noise > 0 else float("inf") if error > 0 else 0.0


@pytest.mark.parametrize("bits", [2, 1])
@pytest.mark.parametrize("name", NAMES)
def test_model_gradient_is_unbiased(name, bits):
    ratio = _bias_ratio(name, CompressionConfig(bits=bits, group_size=64, backend="torch"))
    assert ratio < R_BOUND, f"{name} at {bits} bits: ||mean - fp32||^2 is {ratio:.2f}x the noise of the mean"


def test_round_to_nearest_is_detected_as_biased():
    assert _bias_ratio("kgcn", CompressionConfig(bits=2, group_size=64, stochastic=False, backend="torch")) > R_BOUND
