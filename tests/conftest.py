"""Fixtures shared by every test directory.

The real datasets are read from ``$TINYKG_DATA_DIR`` (default ``<repo>/../shared/data``) and are never
copied into the repository. When the folder is missing, tests that need it are skipped - except under
``CI=true``, where a missing folder is a failure, so CI cannot go green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_root() -> Path:
    """Where the real datasets live: ``$TINYKG_DATA_DIR`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("TINYKG_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder; skips (or fails under ``CI=true``) when it is missing."""
    root = real_data_root()
    if not root.is_dir():
        message = f"real datasets not found at {root} (set TINYKG_DATA_DIR)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def lastfm_dir(data_dir: Path) -> Path:
    return data_dir / "lastfm-kgcn"


@pytest.fixture(autouse=True)
def _quantizer_seed_per_test():
    """Tests that call `seed_everything` seed the quantizer's own stream, a process-wide setting: each
    test starts from the default (seeds drawn from torch's global generator), whatever ran before it."""
    from tinykg.compress import restoring_quantizer_seed, seed_quantizer

    with restoring_quantizer_seed():
        seed_quantizer(None)
        yield


@pytest.fixture
def same_bits_in_chunks(monkeypatch):
    """``check(fn, inputs)``: ``fn(*inputs)`` and its input gradients, run with the CPU chunk budget of
    `tinykg.nn._chunks` so small that each chunk holds a row or a few, have the same bits as in one piece.

    Both runs start from copies of ``inputs`` and quantizer seed 0; the output's gradient is a fixed ramp.
    """
    import torch

    from tinykg.compress import restoring_quantizer_seed, seed_quantizer
    from tinykg.nn import _chunks

    def bits(t):
        return None if t is None else t.detach().contiguous().view(-1).view(torch.uint8)

    def run(fn, inputs, budget):
        monkeypatch.setattr(_chunks, "CPU_CHUNK_ELEMENTS_PER_THREAD", budget)
        copies = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        with restoring_quantizer_seed():
            seed_quantizer(0)
            out = fn(*copies)
            out.backward(torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view(out.shape))
        return [bits(out), *(bits(t.grad) for t in copies)]

    def check(fn, inputs) -> None:
        one_piece, chunked = run(fn, inputs, 1 << 30), run(fn, inputs, 5)
        for got, want in zip(chunked, one_piece):
            assert (got is None) == (want is None)
            assert want is None or torch.equal(got, want)

    return check
