"""The CTR-model contract, for every model at every bits setting: shapes, finite loss, training makes
progress, compression never changes what the model computes, and 8-bit gradients track fp32."""

from __future__ import annotations

import pytest
import torch

from tinykg.compress import CompressionConfig

from .factories import NAMES, TOY, batch, make_model

BITS = (None, 8, 4, 2, 1)


def config_for(bits):
    return None if bits is None else CompressionConfig(bits=bits)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", NAMES)
def test_model_forward_shapes_and_finite_loss(name, bits):
    model = make_model(name, config_for(bits))
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 16)
    logits = model(user, item)
    assert logits.shape == (16,) and logits.dtype == torch.float32
    loss = model.loss(user, item, label)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("bits", (None, 2))
@pytest.mark.parametrize("name", NAMES)
def test_model_empty_batch_scores_nothing_and_its_loss_is_refused(name, bits):
    # A mean over no pairs is NaN, and its gradients would reach Adam's state: refused, not returned.
    model = make_model(name, config_for(bits))
    empty = torch.empty(0, dtype=torch.long)
    assert model(empty, empty).shape == (0,)
    with pytest.raises(ValueError, match="empty batch"):
        model.loss(empty, empty, torch.empty(0))
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 16)
    with pytest.raises(ValueError, match="item_index 15"):
        model.loss(user, item[:15], label)
    with pytest.raises(ValueError, match="1-D"):
        model.loss(user, item, label.view(16, 1))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", NAMES)
def test_model_adam_steps_reduce_loss(name, bits):
    torch.manual_seed(0)
    model = make_model(name, config_for(bits))
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 64, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2, weight_decay=model.weight_decay)
    losses = []
    for _ in range(25):
        loss = model.loss(user, item, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_model_compression_never_changes_outputs(name):
    """Eval mode with a config is the fp32 model; in training the forward is exact as well (only what
    is saved for backward is quantized), so logits and loss match bit for bit."""
    plain = make_model(name, None)
    compressed = make_model(name, CompressionConfig(bits=2))
    compressed.load_state_dict(plain.state_dict())
    assert plain.state_dict().keys() == compressed.state_dict().keys()
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 32)
    plain.eval(), compressed.eval()
    assert compressed.active_config is None
    assert torch.equal(plain(user, item), compressed(user, item))
    plain.train(), compressed.train()
    assert torch.equal(plain(user, item), compressed(user, item))
    assert torch.equal(plain.loss(user, item, label), compressed.loss(user, item, label))


def _gradients(model, user, item, label):
    model.zero_grad()
    model.loss(user, item, label).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _relative_error(grads, reference):
    # Over all parameters at once: per-tensor norms of rarely-hit rows are dominated by noise.
    num = sum(((grads[n] - reference[n]) ** 2).sum() for n in reference)
    den = sum((reference[n] ** 2).sum() for n in reference)
    return float((num / den).sqrt())


@pytest.mark.parametrize("name", NAMES)
def test_model_8bit_gradients_close_to_fp32(name):
    """Bound: a saved tensor quantized with b bits has per-element error <= range/(2^b - 1) and standard
    deviation <= range/(2(2^b - 1)); with G = 256-element groups, range/rms stays below ~6 on these
    activations, so one 8-bit op perturbs the gradients it feeds by <= 6/510 ~ 1.2% (rms), and the few
    ops in series (<= 4) stay under 5%. The noise shrinks ~(2^b - 1)x per bit width, so the 8-bit error
    must also sit well below the 2-bit error (factor 85 expected; asserted 4)."""
    # Without the exact L2 gradients, which would hide the quantization error.
    overrides = {} if name == "ckan" else {"l2_weight": 0.0}
    reference_model = make_model(name, None, **overrides)
    user, item, label = batch(TOY["num_users"], TOY["num_items"], 64, seed=2)
    reference = _gradients(reference_model, user, item, label)
    errors = {}
    for bits in (8, 2):
        model = make_model(name, CompressionConfig(bits=bits), **overrides)
        model.load_state_dict(reference_model.state_dict())
        torch.manual_seed(3)
        errors[bits] = _relative_error(_gradients(model, user, item, label), reference)
    assert errors[8] < 0.05, errors
    assert errors[8] < errors[2] / 4, errors


@pytest.mark.parametrize("name", NAMES)
def test_model_index_buffers_are_narrow(name):
    model = make_model(name)
    int_buffers = {n: b for n, b in model.named_buffers() if not b.dtype.is_floating_point and b.dtype != torch.bool}
    assert int_buffers
    for buffer_name, buffer in int_buffers.items():
        if buffer_name == "label_keys":
            continue
        assert buffer.dtype == torch.uint8, buffer_name  # TOY tables have < 256 rows


def test_model_defaults_and_registry():
    from tinykg.models import DEFAULTS, MODELS

    assert list(MODELS) == list(NAMES)
    for name in NAMES:
        assert set(DEFAULTS[name]) == {"lastfm", "book", "synthetic"}
        for params in DEFAULTS[name].values():
            assert {"lr", "batch_size", "epochs"} <= set(params)
    kgcn = DEFAULTS["kgcn"]["lastfm"]
    assert (kgcn["embedding_dim"], kgcn["num_layers"], kgcn["num_neighbors"], kgcn["batch_size"]) == (16, 1, 8, 128)
    assert (kgcn["l2_weight"], kgcn["lr"]) == (1e-4, 5e-4)
    assert make_model("ckan", None, l2_weight=1e-5).weight_decay == 1e-5
    assert all(make_model(n).weight_decay == 0.0 for n in ("kgcn", "kgnn-ls", "ripplenet"))


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="aggregator"):
        make_model("kgcn", aggregator="max")
    with pytest.raises(ValueError, match="adj_entity"):
        from tinykg.models import KGCN

        KGCN(3, 5, 2, torch.zeros(5, 3, dtype=torch.long), torch.zeros(5, 3, dtype=torch.long), num_neighbors=4)
    with pytest.raises(ValueError, match="outside"):
        from tinykg.models import KGCN

        KGCN(3, 5, 2, torch.full((5, 4), 7), torch.zeros(5, 4, dtype=torch.long), num_neighbors=4)
    with pytest.raises(TypeError, match="CompressionConfig"):
        make_model("kgcn", compression={"bits": 2})
    for bad in (3, 32, True, "2"):
        with pytest.raises(ValueError, match="head_bits"):
            make_model("ripplenet", head_bits=bad)


@pytest.mark.parametrize("name", NAMES)
def test_head_bits_set_only_the_score_operands_and_only_below_them(name):
    """The scoring head's config: at least head_bits bits in training, None (fp32) in eval; a config
    at or above head_bits is handed through unchanged, so from 2 bits on the default changes nothing."""
    one = CompressionConfig(bits=1, group_size=64)
    model = make_model(name, one)
    assert model.head_bits == 2 and model.active_config is one
    assert model.active_head_config == CompressionConfig(bits=2, group_size=64)
    model.eval()
    assert model.active_head_config is None
    two = CompressionConfig(bits=2)
    assert make_model(name, two).active_head_config is two
    assert make_model(name, one, head_bits=None).active_head_config is one


@pytest.mark.parametrize("name", NAMES)
def test_model_takes_narrow_index_dtypes(name):
    # A uint8 index tensor used to be read as a bool mask by RippleNet and CKAN (an IndexError at best).
    model = make_model(name).eval()
    user, item, _ = batch(TOY["num_users"], TOY["num_items"], 16)
    expected = model(user, item)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert torch.equal(model(user.to(dtype), item.to(dtype)), expected)
