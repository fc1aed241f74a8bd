"""Checkpoints and exact resume after kill -9, determinism, non-finite loss handling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinykg.cli import main
from tinykg.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--synthetic", "toy", "--model", "kgcn", "--bits", "2", "--epochs", "6", "--seed", "5", "--quiet"]


def _cli(*argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tinykg", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference.json"
    assert main([*TRAIN, "--out", str(reference)]) == 0
    expected = json.loads(reference.read_text())

    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed.json"
    kills = 0
    # Kill at three different moments: after the 1st, 3rd and 5th checkpoint appears (plus a random delay).
    for target_epoch, delay in [(1, 0.05), (3, 0.0), (5, 0.13)]:
        proc = _cli(*TRAIN, "--checkpoint", str(ckpt), "--resume", "--out", str(out))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            saved = load_checkpoint(ckpt) if (ckpt / CHECKPOINT_NAME).exists() else None
            if saved is not None and saved["epoch"] >= target_epoch:
                time.sleep(delay)
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 2, "the runs finished before they could be killed: make the test run longer"
    assert main([*TRAIN, "--checkpoint", str(ckpt), "--resume", "--out", str(out)]) == 0
    resumed = json.loads(out.read_text())
    assert resumed["metrics"] == expected["metrics"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in expected["history"]]
    assert resumed["best_epoch"] == expected["best_epoch"]


def test_resume_takes_adams_capturable_setting_from_this_run(tmp_path):
    """A checkpoint of a --cuda-graph run (Adam built with capturable=True) resumes without it, here on the
    CPU, where a capturable Adam cannot step: the resumed run's own setting is used."""
    ckpt = tmp_path / "ckpt"
    argv = [*TRAIN[:TRAIN.index("--epochs")], "--epochs", "2", "--seed", "5", "--quiet", "--checkpoint", str(ckpt)]
    assert main(argv) == 0
    saved = torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)
    for group in saved["optimizer"]["param_groups"]:
        group["capturable"] = True  # as a --cuda-graph run writes it
    saved["epoch"] = 1  # one epoch left to train
    torch.save(saved, ckpt / CHECKPOINT_NAME)
    assert main([*argv, "--resume"]) == 0


def test_checkpoint_write_is_atomic_and_weights_only(tmp_path):
    save_checkpoint(tmp_path, {"epoch": 1, "model": {"w": torch.ones(3)}})
    save_checkpoint(tmp_path, {"epoch": 2, "model": {"w": torch.zeros(3)}})
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temp files left behind
    assert load_checkpoint(tmp_path)["epoch"] == 2
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable tinykg checkpoint"):
        load_checkpoint(tmp_path)


def test_resume_refuses_other_settings(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main([*TRAIN[:-3], "--epochs", "1", "--seed", "5", "--quiet", "--checkpoint", str(ckpt)]) == 0
    assert main([*TRAIN[:-3], "--epochs", "2", "--seed", "6", "--quiet", "--checkpoint", str(ckpt), "--resume"]) == 2
    assert "other settings (checkpoint -> this run: training (epochs: 1 -> 2; seed: 5 -> 6))" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, named",
    [
        (["--synthetic", "toy", "--bits", "8"], "bits: 2 -> 8"),
        (["--synthetic", "toy", "--model", "kgnn-ls"], "class: KGCN -> KGNNLS"),
        (["--synthetic", "toy", "--set", "embedding_dim=8"], "user_embedding: [50, 16] -> [50, 8]"),
        (["--synthetic", "default"], "user_embedding: [50, 16] -> [1000, 16]"),
    ],
)
def test_resume_refuses_another_model_and_names_what_differs(tmp_path, capsys, change, named):
    # Without this check a resumed run would mix bit widths under one label, or fail deep in load_state_dict.
    ckpt = tmp_path / "ckpt"
    base = ["train", "--epochs", "2", "--quiet", "--checkpoint", str(ckpt)]
    assert main([*base, "--synthetic", "toy"]) == 0
    capsys.readouterr()
    assert main([*base, *change, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinykg: error:") and named in err[0], err


def test_resume_from_a_checkpoint_without_identity_is_a_clean_error(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    base = ["train", "--synthetic", "toy", "--epochs", "2", "--quiet", "--checkpoint", str(ckpt)]
    assert main(base) == 0
    saved = load_checkpoint(ckpt)
    del saved["identity"]  # as written before checkpoints stored the model's identity
    saved.pop("rng")
    save_checkpoint(ckpt, saved)
    capsys.readouterr()
    assert main([*base, "--set", "embedding_dim=8", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this model" in err[0], err


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path, capsys):
    # A learning rate this large drives the logits to inf within the first epochs.
    code = main(["train", "--synthetic", "toy", "--bits", "32", "--epochs", "5", "--lr", "1e30", "--quiet", "--checkpoint", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite loss" in err and "epoch" in err and "step" in err
