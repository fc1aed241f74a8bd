"""Data-parallel training on 2 CPU processes (gloo, started by `tinykg.train.distributed.launch`, the launcher
torchrun uses) against one process with the same global batch, on the toy synthetic data.

Tolerance of the fp32 comparison. With ``bits=32`` and no dropout nothing random is drawn, so both runs take
the same global-batch gradient steps and differ only in float32 summation order: one process sums the B
per-row terms of a batch mean in one reduction; two ranks sum about B/2 rows each, scale by ``2 n_r / B``,
and the all-reduce averages. Reordering a sum changes it by a few units of roundoff u = 2^-24 ~ 6e-8 of the
summed magnitudes, so gradients differ by delta ~ 1e-7 relative (more for entries that nearly cancel). An
Adam step moves a parameter by ~lr * m / sqrt(v) with |m / sqrt(v)| <= ~1, so it differs by ~lr * delta, and
T steps accumulate ~T * lr * delta: KGCN here, T = 3 epochs x 7 steps, lr = 1e-2 -> ~2e-8; KGAT, T = 2 x
(4 BPR + 1 TransR) steps, lr = 5e-3 -> ~5e-9. Entries whose gradient nearly cancels have a small sqrt(v)
and amplify their roundoff (Adam's worst case turns it into a whole lr step), so the bound is an estimate,
not a guarantee: measured, the largest parameter difference is 6.9e-7 (KGCN) and 3.0e-7 (KGAT), and the
per-epoch mean losses differ by <= 7e-8 relative. We allow ``PARAM_TOL = 2e-5`` (30x the measured worst
case) and ``LOSS_TOL = 1e-6`` relative (15x). The failure these tolerances must catch is far above them:
with the shard weights replaced by 1 (a plain mean of the two ranks' means over the uneven shards of
batch 51 = 26 + 25 and 61 = 31 + 30 rows), parameters differ by 5e-2 and losses by 6e-5 to 4e-4 relative.
Ranking metrics change only when two scores closer than ~1e-6 swap; none do on this data, so they must be
equal. 2-bit runs draw quantization noise (independent per rank), so they are checked to train, not to match.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tinykg.cli import main
from tinykg.data import ctr_split
from tinykg.train import distributed
from tinykg.train.builders import build_ctr_model, hyperparameters
from tinykg.train.loop import TrainConfig, fit_ctr, seed_everything
from tinykg.train.run import compression_for, load_or_generate
from tinykg.train.topk import TopKConfig, build_topk_model, first_batch, fit_topk, topk_hyperparameters, topk_split_for

PARAM_TOL = 2e-5
LOSS_TOL = 1e-6

# Global batches that do not split evenly over 2 ranks (51 = 26 + 25, 61 = 31 + 30, TransR 255 = 128 + 127).
KGCN = {"batch_size": 51, "epochs": 3}
KGAT = {
    "batch_size": 61, "kg_batch_size": 255, "epochs": 2, "eval_every": 1, "mess_dropout": 0.0,
    "embedding_dim": 16, "layer_sizes": [16, 8], "kge_dim": 16,
}
CASES = [("kgcn", 32, KGCN), ("kgat", 32, KGAT), ("kgcn", 2, KGCN)]


def _parameters(model) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy().copy() for key, value in model.named_parameters()}


def _fit(name: str, bits: int, overrides: dict) -> dict:
    """Train ``name`` on the toy data in this process (one rank, or the only process) as `train_ctr` /
    `train_topk` do; returns the history, the test metrics and the final parameters."""
    dataset = load_or_generate(None, synthetic_size="toy")
    seed_everything(0)
    compression = compression_for(bits)
    if name == "kgcn":
        params = hyperparameters(name, "synthetic", overrides)
        train, valid, test = ctr_split(dataset.interactions, seed=0)
        model = build_ctr_model(name, dataset, train, compression=compression, seed=0, overrides=overrides)
        initial = _parameters(model)
        config = TrainConfig(epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"], progress=False)
        result = fit_ctr(model, train, valid, test, config, log=lambda _message: None)
    else:
        params = topk_hyperparameters(name, "synthetic", overrides)
        train, valid, test = topk_split_for(dataset, "synthetic", 0)
        model, kg_sampler = build_topk_model(name, dataset, train, compression=compression, params=params)
        initial = _parameters(model)
        config = TopKConfig(
            epochs=params["epochs"], batch_size=params["batch_size"], kg_batch_size=params["kg_batch_size"],
            lr=params["lr"], eval_every=params["eval_every"], progress=False,
        )
        result = fit_topk(model, train, valid, test, config, kg_sampler=kg_sampler, log=lambda _message: None)
    return {"history": result.history, "metrics": result.metrics, "state": _parameters(model), "initial": initial}


class _Int16Index(nn.Module):
    """A parameter read through an int16 index buffer (what KGCN's neighbour table is past 255 entities)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((3,), value))
        self.register_buffer("index", torch.tensor([0, 2, 2], dtype=torch.int16))

    def loss(self, scale: torch.Tensor) -> torch.Tensor:
        return (self.weight[self.index.long()] * scale).sum()


def _wrap_int16_model() -> dict:
    """`wrap` a model whose ranks start from different weights and hold an int16 buffer (gloo cannot
    broadcast int16), then take one gradient of a rank-dependent loss."""
    model = _Int16Index(value=float(distributed.rank() + 1))
    step_loss = distributed.wrap(model)
    step_loss("loss", torch.tensor(float(distributed.rank() + 1))).backward()
    return {"weight": model.weight.tolist(), "grad": model.weight.grad.tolist()}


def _worker(cases) -> dict:
    """One rank: the sharding of two small global batches, a wrapped toy model, then every case."""
    with distributed.process_group("cpu"):
        shards = [(rows.tolist(), weight) for rows, weight in (distributed.shard(torch.arange(n)) for n in (5, 1))]
        return {
            "world_size": distributed.world_size(),
            "rank": distributed.rank(),
            "shards": shards,
            "wrapped": _wrap_int16_model(),
            "runs": [_fit(*case) for case in cases],
        }


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    """The results of both ranks of one 2-process run of every case."""
    return distributed.launch(_worker, (CASES,), 2)


@pytest.fixture
def one_thread():
    """Run the single-process reference on one thread, like each of the 2 ranks: on a busy 2-core machine
    two spinning OpenMP threads make the small scatter kernels ~1000x slower. Summation order may change
    with the thread count; that is within the tolerance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _max_param_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[key] - b[key]).max()) for key in a)


def test_launch_two_ranks_shard_global_batch(two_ranks):
    assert [r["world_size"] for r in two_ranks] == [2, 2]
    assert [r["rank"] for r in two_ranks] == [0, 1]
    # Rows 0..4: rank 0 keeps 0, 2, 4 (weight 2 * 3/5), rank 1 keeps 1, 3 (2 * 2/5); weights average to 1.
    assert two_ranks[0]["shards"][0] == ([0, 2, 4], pytest.approx(1.2))
    assert two_ranks[1]["shards"][0] == ([1, 3], pytest.approx(0.8))
    # A one-row batch: rank 1 runs row 0 at weight 0 (it must still join the gradient all-reduce).
    assert two_ranks[0]["shards"][1] == ([0], 2.0)
    assert two_ranks[1]["shards"][1] == ([0], 0.0)


def test_wrap_starts_from_rank_zero_weights_and_averages_gradients(two_ranks):
    for result in two_ranks:
        assert result["wrapped"]["weight"] == [1.0, 1.0, 1.0]  # rank 0's, broadcast; rank 1 built 2.0s
        # d/dw of scale * (w0 + 2 w2) is scale * [1, 0, 2]; scales 1 and 2 on the two ranks average to 1.5.
        assert result["wrapped"]["grad"] == [1.5, 0.0, 3.0]


@pytest.mark.parametrize("case", [0, 1, 2], ids=[f"{name}-{bits}bit" for name, bits, _ in CASES])
def test_ranks_end_with_identical_parameters_and_metrics(two_ranks, case):
    first, second = (r["runs"][case] for r in two_ranks)
    assert _max_param_diff(first["state"], second["state"]) == 0.0
    assert first["metrics"] == second["metrics"]
    assert first["history"] == second["history"]


@pytest.mark.parametrize("case", [0, 1], ids=["kgcn", "kgat"])
def test_two_processes_match_one_process_fp32(two_ranks, case, one_thread):
    distributed_run = two_ranks[0]["runs"][case]
    single = _fit(*CASES[case])
    assert _max_param_diff(distributed_run["state"], single["state"]) <= PARAM_TOL
    for got, want in zip(distributed_run["history"], single["history"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=LOSS_TOL)
        if "kg_loss" in want:
            assert got["kg_loss"] == pytest.approx(want["kg_loss"], rel=LOSS_TOL)
    # Ranking metrics move only if two scores swap order: parameters this close keep every order here.
    assert distributed_run["metrics"] == pytest.approx(single["metrics"], abs=1e-9)
    # Not vacuous: both runs started from the same weights and moved far more than PARAM_TOL away from them.
    assert _max_param_diff(distributed_run["initial"], single["initial"]) == 0.0
    assert _max_param_diff(single["initial"], single["state"]) > 100 * PARAM_TOL


def test_two_processes_train_with_2bit_activations(two_ranks):
    fp32, two_bit = (two_ranks[0]["runs"][i] for i in (0, 2))
    losses = [h["loss"] for h in two_bit["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.01  # it learns
    # The quantization noise is there (parameters differ from the fp32 run) but small: the loss curve
    # stays within a few hundredths of the fp32 one.
    assert _max_param_diff(fp32["state"], two_bit["state"]) > PARAM_TOL
    fp32_losses = [h["loss"] for h in fp32["history"]]
    assert np.allclose(losses, fp32_losses, atol=0.02)


def test_cli_nproc_rank_zero_writes_results_and_checkpoint(tmp_path, capfd):
    out, ckpt = tmp_path / "results.json", tmp_path / "ckpt"
    argv = ["train", "--synthetic", "toy", "--epochs", "2", "--bits", "2", "--quiet", "--nproc", "2"]
    assert main([*argv, "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["epochs"] == 2
    assert 0.0 <= result["metrics"]["auc"] <= 1.0
    assert [p.name for p in ckpt.iterdir()] == ["checkpoint.pt"]
    assert capfd.readouterr().out.count("results written to") == 1  # rank 0 only reports


@pytest.mark.parametrize("name", ["kgcn", "kgnn-ls", "ripplenet", "ckan", "kgin", "bprmf", "kgat"])
def test_loss_uses_every_parameter_except_kgat(name):
    """`wrap` gives DDP ``find_unused_parameters=False`` for every model but KGAT (whose BPR phase leaves
    TransR's tables unused): that is only valid while each model's ``loss`` reaches every parameter."""
    dataset = load_or_generate(None, synthetic_size="toy")
    seed_everything(0)
    if name in ("kgin", "bprmf", "kgat"):
        train, _, _ = topk_split_for(dataset, "synthetic", 0)
        model, _ = build_topk_model(name, dataset, train, compression=None, params=topk_hyperparameters(name))
        batch = first_batch(train, 32, seed=0)
    else:
        train, _, _ = ctr_split(dataset.interactions, seed=0)
        model = build_ctr_model(name, dataset, train, compression=None, seed=0)
        batch = (torch.as_tensor(train.user_index[:32]), torch.as_tensor(train.item_index[:32]), torch.as_tensor(train.label[:32], dtype=torch.float32))
    model.loss(*batch).backward()
    unused = sorted(key for key, value in model.named_parameters() if value.grad is None)
    assert unused == (["relation_embedding", "relation_projection"] if name == "kgat" else [])


def test_cli_nproc_under_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--synthetic", "toy", "--epochs", "1", "--quiet", "--nproc", "2"]) == 2
    assert "leave it out under torchrun" in capsys.readouterr().err
