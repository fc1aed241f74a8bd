"""CUDA-graph training steps (`tinykg.train.graphed`). The GPU tests run where CUDA is available (the
device check of benchmarks/RESULTS.md); the checks of settings run everywhere."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tinykg.compress import CompressionConfig, triton_kernels
from tinykg.nn import compressed_linear
from tinykg.train.graphed import ExactGroupsInGraph, GraphedStep, graphed_step
from tinykg.train.loop import TrainConfig
from tinykg.train.topk import TopKConfig

cuda = pytest.mark.skipif(not (torch.cuda.is_available() and triton_kernels.available(torch.device("cuda"))),
                          reason="needs a CUDA GPU with Triton")


def test_graph_settings_refuse_a_cpu_device():
    for make in (TrainConfig, TopKConfig):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            make(device="cpu", cuda_graph=True)
    model = torch.nn.Linear(2, 1)
    assert graphed_step(model, torch.optim.Adam(model.parameters()), False, name="step") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_graphed_step_says_it_needs_cuda():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        GraphedStep(lambda x: model(x).sum(), torch.optim.Adam(model.parameters(), capturable=True))


def _linear_problem(rows=512, cols=64, outputs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g).cuda()
    c = torch.randn(rows, outputs, generator=g).cuda()  # dL/dy: the loss is sum(c * y)
    weight = torch.nn.Parameter(torch.randn(outputs, cols, generator=g).cuda())
    return x, c, weight


@cuda
def test_replays_draw_new_noise_and_the_mean_gradient_is_unbiased():
    """grad W = c^T x_hat with x quantized at 2 bits: each replay draws new noise (the salt), so the
    mean of K replays' gradients converges to the exact c^T x. Each x_hat element has variance at most
    s^2 / 4 (s = its group's scale <= 1.01 * range / 3, fp16 rounding up), so each mean element is within
    6 standard deviations, sqrt(sum_b c[b, o]^2 * s^2 / 4 / K), plus fp32 rounding: each product sums
    ``rows`` terms and the mean K, at most (rows + K) * 2^-24 * sum_b |c[b, o]| (|x[b, j]| + s). A graph
    that froze the noise would repeat one draw's error, ~sqrt(K) times the first bound."""
    x, c, weight = _linear_problem()
    config = CompressionConfig(bits=2, group_size=256, backend="triton")
    optimizer = torch.optim.Adam([weight], lr=0.0, capturable=True)  # lr 0: W stays, only gradients vary
    step = GraphedStep(lambda x, c: (compressed_linear(x, weight, None, config) * c).sum(), optimizer)
    grads = []
    for _ in range(200):
        step(x, c)
        grads.append(weight.grad.detach().clone())
    step.check()
    assert step.replays == 200 - step.warmup
    assert not torch.equal(grads[-1], grads[-2])
    exact = c.t() @ x
    scale = 1.01 * float(x.max() - x.min()) / 3
    std = (c.pow(2).sum(0).unsqueeze(1) * scale**2 / 4 / len(grads)).sqrt().expand_as(exact)
    mean = torch.stack(grads).mean(0)
    rounding = (x.shape[0] + len(grads)) * 2**-24 * (c.abs().t() @ (x.abs() + scale))
    assert bool(((mean - exact).abs() <= 6 * std + rounding).all())


@cuda
def test_a_replay_that_meets_an_exact_group_is_refused():
    """Non-finite activations must be kept exactly, which a captured step cannot: the next call raises."""
    x, c, weight = _linear_problem()
    config = CompressionConfig(bits=2, group_size=256, backend="triton")
    optimizer = torch.optim.Adam([weight], lr=0.0, capturable=True)
    step = GraphedStep(lambda x, c: (compressed_linear(x, weight, None, config) * c).sum(), optimizer, warmup=1)
    for _ in range(3):
        step(x, c)
    bad = x.clone()
    bad[3, 5] = math.inf
    step(bad, c)
    with pytest.raises(ExactGroupsInGraph, match="kept exactly"):
        step.check()
    step(x, c)  # a finite batch replays again
    step.check()


@cuda
@pytest.mark.filterwarnings("error:The AccumulateGrad node's stream")  # a kept autograd graph of a captured loss
def test_batches_of_other_shapes_run_eagerly_and_replays_overwrite_the_gradients():
    """fp32, so that gradients are exact up to rounding: an eager step of another shape (before and after
    the capture) gives c'^T x' for its rows, and the next replay c^T x again (written, not added). Each
    product sums at most 512 terms in fp32, each side within 512 * 2^-24 * |c|^T |x| of the exact value."""
    x, c, weight = _linear_problem()
    optimizer = torch.optim.Adam([weight], lr=0.0, capturable=True)  # lr 0: W stays
    step = GraphedStep(lambda x, c: (compressed_linear(x, weight, None, None) * c).sum(), optimizer, warmup=2)

    def expect(rows: int) -> None:
        want = c[:rows].t() @ x[:rows]
        bound = 2 * rows * 2**-24 * (c[:rows].abs().t() @ x[:rows].abs())
        assert bool(((weight.grad - want).abs() <= bound).all())

    step(x, c)  # warm-up 1 (fixes the captured shapes)
    step(x[:100], c[:100])  # another shape during warm-up: eager, not counted as warm-up
    expect(100)
    step(x, c)  # warm-up 2
    step(x, c)  # captured and replayed
    assert step.replays == 1 and step.eager_steps == 1
    expect(512)
    grad = weight.grad
    loss = step(x[:100], c[:100])
    assert step.replays == 1 and step.eager_steps == 2 and weight.grad is grad and torch.isfinite(loss)
    expect(100)
    step(x, c)
    assert step.replays == 2
    expect(512)


@cuda
@pytest.mark.parametrize("model", ["kgcn", "kgnn-ls", "ripplenet", "ckan", "kgat", "kgin", "bprmf"])
def test_training_loops_with_cuda_graphs(monkeypatch, model):
    """Every loop trains with --cuda-graph, fp32 and 2 bits: its steps are replayed, metrics finite."""
    from tinykg.data import SyntheticConfig, make_synthetic
    from tinykg.train import graphed, loop, topk
    from tinykg.train.run import train_ctr

    made = []

    def spy(*args, **kwargs):
        made.append(graphed.graphed_step(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(loop, "graphed_step", spy)
    monkeypatch.setattr(topk, "graphed_step", spy)
    dataset = make_synthetic(SyntheticConfig.toy(), seed=0)
    train = topk.train_topk if model in ("kgat", "kgin", "bprmf") else train_ctr
    for bits in (32, 2):
        result = train(model, dataset, bits=bits, overrides={"epochs": 3, "batch_size": 64}, device="cuda",
                       progress=False, cuda_graph=True, log=lambda _: None)
        assert all(math.isfinite(v) for v in result["metrics"].values()), result["metrics"]
        assert result["cuda_graph"] is True
    # Every batch of the first batch's shape after the warm-up is replayed; only ragged last batches (at
    # most one per epoch) run eagerly.
    assert len(made) == 2
    for step in made:
        assert step.eager_steps <= 3 and step.replays == step.calls - step.warmup - step.eager_steps > 0, vars(step)


@cuda
def test_capture_failure_names_the_step():
    """An op that reads a result to the host fails the capture with a TrainingError naming the step, and
    the caller's stream is current again. In its own process: a failed capture can leave PyTorch's CUDA
    state (generator, allocator) unusable."""
    code = textwrap.dedent("""
        import torch
        from tinykg.train.errors import TrainingError
        from tinykg.train.graphed import GraphedStep

        weight = torch.nn.Parameter(torch.randn(4, device="cuda"))
        optimizer = torch.optim.Adam([weight], capturable=True)
        step = GraphedStep(lambda x: weight[x > 0].sum(), optimizer, warmup=1, name="toy step")
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            step(torch.randn(4, device="cuda"))
            try:
                step(torch.randn(4, device="cuda"))
            except TrainingError as err:
                assert "toy step could not be captured" in str(err), err
                assert torch.cuda.current_stream() == stream
                print("refused")
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and "refused" in done.stdout, done.stderr[-3000:]
