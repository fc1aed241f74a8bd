"""The quantizer's own random stream (`tinykg.compress.seed_quantizer`) and what the training loops do
with it: a compressed run draws from the global generators exactly what the fp32 run of its seed draws."""

from __future__ import annotations

import pytest
import torch

from tinykg.compress import (
    CompressionConfig, quantize, quantizer_generator, restoring_quantizer_seed, seed_quantizer,
)
from tinykg.compress.rng import draw_seed
from tinykg.data import SyntheticConfig, make_synthetic
from tinykg.train.loop import seed_everything
from tinykg.train.run import train_ctr


def test_seeded_quantizer_leaves_the_global_generator_alone_and_repeats_itself():
    x = torch.randn(64, 64)
    config = CompressionConfig(bits=2, backend="torch")
    seed_quantizer(3)
    before = torch.get_rng_state()
    first = quantize(x, config).codes
    assert torch.equal(torch.get_rng_state(), before)
    seed_quantizer(3)
    assert torch.equal(quantize(x, config).codes, first)
    seed_quantizer(4)
    assert not torch.equal(quantize(x, config).codes, first)


def test_unseeded_quantizer_draws_from_the_global_generator():
    seed_quantizer(None)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = draw_seed()
    assert not torch.equal(torch.get_rng_state(), before)  # it consumed the global stream
    torch.manual_seed(0)
    assert draw_seed() == a  # so torch.manual_seed alone reproduces it


def test_seed_everything_gives_the_quantizer_a_stream_apart_from_torchs():
    seed_everything(0)
    ours = [draw_seed() for _ in range(4)]
    torch.manual_seed(0)
    global_stream = [draw_seed(torch.default_generator) for _ in range(4)]
    assert ours != global_stream  # not torch.manual_seed(0)'s stream over again


def test_compressed_and_fp32_runs_of_one_seed_draw_the_same_global_random_numbers():
    # KGCN with dropout-free training still shuffles and samples from the global generators: after one
    # epoch the global state of a 2-bit run must equal the fp32 run's (it did not before: every compressed
    # tensor drew a seed from it).
    dataset = make_synthetic(SyntheticConfig.toy(), seed=0)
    states = {}
    for bits in (32, 2):
        train_ctr("kgcn", dataset, bits=bits, seed=0, overrides={"epochs": 1}, log=lambda *_: None)
        states[bits] = torch.get_rng_state()
    assert torch.equal(states[32], states[2])


def test_quantizer_generators_are_per_thread():
    import threading

    seen = {}

    def run(name, seed):
        seed_quantizer(seed)
        barrier.wait()  # both threads have set theirs before either draws
        seen[name] = [draw_seed() for _ in range(3)]

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(name, seed)) for name, seed in (("a", 1), ("b", 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seed_quantizer(1)
    assert seen["a"] == [draw_seed() for _ in range(3)]
    seed_quantizer(2)
    assert seen["b"] == [draw_seed() for _ in range(3)]


def test_seed_quantizer_takes_any_int():
    seed_quantizer(-1)
    a = draw_seed()
    seed_quantizer(-1)
    assert draw_seed() == a


def test_training_entry_points_leave_the_callers_quantizer_setting_as_they_found_it():
    dataset = make_synthetic(SyntheticConfig.toy(), seed=0)
    seed_quantizer(None)
    train_ctr("kgcn", dataset, bits=2, seed=0, overrides={"epochs": 1}, log=lambda *_: None)
    assert quantizer_generator() is None
    with restoring_quantizer_seed():
        seed_quantizer(7)
        mine = quantizer_generator()
        train_ctr("kgcn", dataset, bits=2, seed=0, overrides={"epochs": 1}, log=lambda *_: None)
        assert quantizer_generator() is mine
    assert quantizer_generator() is None


def test_restoring_a_checkpoint_state_restores_the_quantizer_stream_even_when_none_is_set():
    from tinykg.train.checkpoint import rng_state, set_rng_state

    seed_quantizer(5)
    state = rng_state()
    expected = [draw_seed() for _ in range(3)]
    seed_quantizer(None)  # a process that resumes without having seeded the quantizer
    set_rng_state(state)
    assert [draw_seed() for _ in range(3)] == expected


def test_quantizer_stream_state_round_trips_and_refuses_a_generator_state():
    from tinykg.compress.rng import QuantizerStream

    stream = QuantizerStream(2**64 - 3)  # a key past int64's range travels as a negative int64
    stream.draw()
    copy = QuantizerStream(0)
    copy.set_state(stream.get_state())
    assert [copy.draw() for _ in range(3)] == [stream.draw() for _ in range(3)]
    assert all(0 <= stream.draw() < 2**32 for _ in range(100))
    # a checkpoint written when the quantizer kept a torch.Generator: a clear error, not a wrong stream
    with pytest.raises(ValueError, match="torch.Generator"):
        copy.set_state(torch.Generator().get_state())


def test_a_checkpoint_with_a_generator_quantizer_state_is_refused_before_anything_changes(tmp_path):
    """A checkpoint written when the quantizer kept a torch.Generator: refused on load (before the caller
    loads a model from it) and by set_rng_state before it replaces any global generator."""
    from tinykg.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    seed_quantizer(5)
    save_checkpoint(tmp_path, {"epoch": 1})
    state = rng_state()
    state["quantizer"] = torch.Generator().get_state()  # the old format
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    payload["rng"] = state
    torch.save(payload, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="torch.Generator"):
        load_checkpoint(tmp_path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match="torch.Generator"):
        set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), before)
