"""Atomic training checkpoints that restore a run exactly, loaded without unpickling arbitrary objects.

A checkpoint holds the model and optimizer state, the loop's counters and history, and every global
random state the run draws from (torch CPU/CUDA -- which also seeds the quantizer --, numpy, Python).
Everything is stored as tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)``
reads it. It is written to a temporary file in the same directory, flushed to disk and renamed over the
previous one: a kill at any moment leaves either the old or the new checkpoint, never a torn file.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..compress import quantizer_generator, seed_quantizer
from ..compress.rng import QuantizerStream

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def rng_state() -> dict:
    """All global random states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if quantizer_generator() is not None:
        state["quantizer"] = quantizer_generator().get_state()
    return state


def set_rng_state(state: dict) -> None:
    if "quantizer" in state:  # checked before any global state changes
        QuantizerStream.check_state(state["quantizer"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "quantizer" in state:  # the run drew quantization seeds from a stream of its own: so does the resumed one
        if quantizer_generator() is None:
            seed_quantizer(0)  # any seed: the state below replaces it
        quantizer_generator().set_state(state["quantizer"])


def save_checkpoint(directory: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (plus the RNG states) atomically to ``directory/checkpoint.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT_VERSION, "rng": rng_state(), **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(directory: str | os.PathLike) -> dict | None:
    """The checkpoint in ``directory`` (RNG states not yet applied), or None if there is none."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # a foreign or corrupt file: say which, in one line
        raise ValueError(f"{path}: not a readable tinykg checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a tinykg checkpoint of format {FORMAT_VERSION}")
    quantizer = payload.get("rng", {}).get("quantizer")
    if quantizer is not None:  # refused here, before the caller loads the model or replaces any RNG state
        try:
            QuantizerStream.check_state(quantizer)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return payload
