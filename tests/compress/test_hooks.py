"""compress_saved_tensors: what is compressed, what is left alone, and that gradients stay close."""

import contextlib

import pytest
import torch
from torch import nn

from tinykg.compress import CompressionConfig, compress_saved_tensors, observe_saved_tensors


def test_hooks_compress_activations_not_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 1))
    x = torch.randn(256, 64)
    config = CompressionConfig(bits=8)
    packed_seen = []

    def pack_spy(stored, source):
        packed_seen.append(stored)

    with observe_saved_tensors(pack_spy), compress_saved_tensors(config):
        loss = model(x).pow(2).mean()
    params = {p.data_ptr() for p in model.parameters()}
    # Parameters (and their transposed views) pass through; activations arrive as uint8 codes + metadata.
    floats = [t for t in packed_seen if t.dtype == torch.float32 and t.numel() >= config.min_numel]
    assert all(t.untyped_storage().data_ptr() in params for t in floats)
    assert any(t.dtype == torch.uint8 for t in packed_seen)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).pow(2).mean().backward()
    for g, ref in zip(grads, [p.grad for p in model.parameters()]):
        assert torch.allclose(g, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_hooks_leave_integer_and_small_tensors_alone():
    config = CompressionConfig(bits=2, min_numel=100)
    table = torch.randn(50, 8, requires_grad=True)
    index = torch.randint(0, 50, (200,))
    small = torch.randn(10, requires_grad=True)
    seen = []
    with observe_saved_tensors(lambda stored, source: seen.append(stored)), compress_saved_tensors(config):
        h = small * 1.0  # a 10-element activation: below min_numel
        out = table[index].sum() + (h * h).sum()
    assert any(t.dtype == torch.int64 and t.numel() == 200 for t in seen)  # the index, untouched
    assert not any(t.dtype == torch.uint8 for t in seen)  # nothing was packed
    out.backward()
    assert torch.equal(small.grad, 2 * small.detach())


def test_hooks_keep_tensors_whose_packed_copy_would_be_larger():
    # 2,000 elements in one group of 65,536: packed at 8 bits that is 65,540 B against 8,000 B as they are.
    config = CompressionConfig(bits=8, group_size=65536, min_numel=0)
    w = torch.randn(2000, requires_grad=True)
    (w.tanh() * 3.0).sum().backward()
    want = w.grad.clone()
    w.grad = None
    seen = []
    with observe_saved_tensors(lambda stored, source: seen.append(stored)), compress_saved_tensors(config):
        out = (w.tanh() * 3.0).sum()
    assert seen and not any(t.dtype == torch.uint8 for t in seen)
    assert sum(t.numel() * t.element_size() for t in seen) <= 2000 * 4
    out.backward()
    assert torch.equal(w.grad, want)


@pytest.mark.parametrize("config", [CompressionConfig(bits=8, group_size=65536, min_numel=0),
                                    CompressionConfig(bits=2, group_size="row", min_numel=0)], ids=["huge-group", "rows-of-1"])
def test_relu_sign_stays_one_bit_where_a_quantized_copy_would_not_pay(config):
    x = torch.randn(4096, 1, requires_grad=True)
    seen = []
    with observe_saved_tensors(lambda stored, source: seen.append(stored)), compress_saved_tensors(config):
        torch.relu(x * 1.0).sum()
    assert sum(t.numel() * t.element_size() for t in seen) == 4096 // 8


def test_hooks_keep_a_small_slice_without_its_large_base():
    # Kept as it is, a small view would keep its whole storage alive: an 8-element slice of 4 MB.
    config = CompressionConfig(bits=8, group_size=65536, min_numel=0)
    base = torch.randn(1 << 20, requires_grad=True) * 1.0
    w = torch.randn(8, requires_grad=True)
    seen = []
    with observe_saved_tensors(lambda stored, source: seen.append(stored)), compress_saved_tensors(config):
        out = (base[:8] * w).sum()  # mul saves both factors: the slice and the parameter
    kept = [t for t in seen if t.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()]
    assert kept and max(t.untyped_storage().nbytes() for t in kept) <= 8 * 4
    out.backward()
    assert torch.equal(w.grad, base.detach()[:8])


def test_double_backward_through_the_tanh_square_is_refused_not_wrong():
    x = torch.randn(64, 64, requires_grad=True)
    with compress_saved_tensors(CompressionConfig(bits=2, min_numel=0)):
        y = torch.tanh(x * 1.0).sum()
    (grad,) = torch.autograd.grad(y, x, retain_graph=True)  # first order: fine
    assert torch.isfinite(grad).all()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y, x, create_graph=True)


def test_hooks_dedupe_tensor_saved_twice():
    x = torch.randn(64, 64, requires_grad=True)
    config = CompressionConfig(bits=8, group_size=64)
    packs = []
    with observe_saved_tensors(lambda stored, source: packs.append(stored)), compress_saved_tensors(config):
        h = x * 2  # saved by both sin and cos below: compressed once
        z = (torch.sin(h) * torch.cos(h)).sum()  # the product saves sin(h) and cos(h): two more
    codes = [t for t in packs if t.dtype == torch.uint8 and t.numel() > 0]
    assert len(codes) == 3
    z.backward()
    # dz/dx = 2 (cos^2 h - sin^2 h) from quantized h, sin h, cos h: each factor is off by at most one step
    # (range / 255, range <= 2 max|h| for h and 2 for sin/cos), so the error is below 2 * 4 * step.
    step = 2 * (2 * x.detach().abs().max().item()) / 255
    assert (x.grad - 2 * torch.cos(4 * x.detach())).abs().max() <= 8 * step


def test_hooks_unpack_returns_original_shape():
    x = torch.randn(33, 65, requires_grad=True)
    with compress_saved_tensors(CompressionConfig(bits=8, group_size=32)):
        y = torch.exp(x.t()).sum()
    y.backward()
    # exp saves its (non-contiguous, transposed) output; the gradient is that output, off by < one step.
    expected = torch.exp(x.detach())
    assert x.grad.shape == x.shape
    assert (x.grad - expected).abs().max() <= expected.max() / 255


def test_hooks_reject_non_config():
    with pytest.raises(TypeError, match="CompressionConfig"):
        with compress_saved_tensors({"bits": 2}):
            pass


# -- functions whose backward is not linear in what they save ------------------------------------------

def _near_zero_input(n: int = 4096) -> torch.Tensor:
    # Half the values in (0, 0.02): at 2 bits a group's step is ~0.67, so most of them round to 0.
    torch.manual_seed(0)
    return (torch.linspace(-1, 1, n) + 0.02 * torch.rand(n)).requires_grad_()


@pytest.mark.parametrize("relu", [
    lambda h: torch.nn.functional.relu(h),
    lambda h: nn.ReLU()(h),
    lambda h: h.relu(),
    lambda h: torch.nn.functional.relu(h, inplace=True),
    lambda h: torch.nn.functional.leaky_relu(h, 0.1),
    lambda h: nn.LeakyReLU(0.1, inplace=True)(h),
])
def test_relu_family_keeps_the_sign_exactly(relu):
    # Their backward reads only h > 0: quantized, a small positive value rounded to 0 loses its gradient
    # (the bias that made a 2-bit MLP's first-layer gradient 28% off, averaged over 400 seeds).
    x = _near_zero_input()
    weight = nn.Parameter(torch.randn(x.numel()))  # a parameter: kept as it is, so the product is exact
    with compress_saved_tensors(CompressionConfig(bits=2)):
        y = relu(x * 1.0)
        (y * weight).sum().backward()
    slope = torch.where(x.detach() > 0, 1.0, 0.0 if relu(torch.tensor([-1.0])).item() == 0 else 0.1)
    assert torch.equal(x.grad, slope * weight.detach())


@pytest.mark.parametrize("fn", [
    lambda h: torch.nn.functional.cross_entropy(h.view(64, 64), torch.arange(64)),
    lambda h: torch.nn.functional.log_softmax(h.view(64, 64), dim=1)[:, 0].sum(),
    lambda h: torch.nn.functional.scaled_dot_product_attention(*h.view(4, 1, 16, 64)[:3].unbind(0)).sum(),
    lambda h: h.clamp(-0.5, 0.5).sum(),
    lambda h: torch.nn.functional.hardtanh(h).sum(),
    lambda h: (h.abs() + torch.log(h + 3.0)).sum(),  # (adding a number saves nothing)
    lambda h: (1.0 / (h + 3.0) + torch.sqrt(h + 3.0) + (h + 3.0).rsqrt()).sum(),
])
def test_functions_that_threshold_or_exponentiate_saves_keep_them_exact(fn):
    x = _near_zero_input()
    fn(x * 1.0).backward()
    expected = x.grad.clone()
    x.grad = None
    with compress_saved_tensors(CompressionConfig(bits=2)):
        loss = fn(x * 1.0)
    loss.backward()
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh, nn.Sigmoid])
def test_mlp_gradient_is_unbiased_at_2_bits(activation):
    # The mean of N compressed gradients must approach fp32's within its own standard error; with ReLU's
    # saved output quantized it stayed ~15 standard errors away, with tanh's ~6 (its backward squares it).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), activation(), nn.Linear(64, 1))
    x = torch.randn(256, 16)
    model(x).pow(2).mean().backward()
    reference = model[0].weight.grad.clone()
    samples = []
    for seed in range(100):
        model.zero_grad()
        torch.manual_seed(seed)
        with compress_saved_tensors(CompressionConfig(bits=2)):
            loss = model(x).pow(2).mean()
        loss.backward()
        samples.append(model[0].weight.grad.clone())
    samples = torch.stack(samples)
    standard_error = (samples.var(0).sum() / len(samples)).sqrt()
    assert (samples.mean(0) - reference).norm() <= 4 * standard_error


@pytest.mark.parametrize("bits, copies", [(2, 2), (8, 1)])
def test_tanh_output_is_kept_as_its_square_below_8_bits(bits, copies):
    # Below 8 bits tanh keeps the square of its output beside the next layer's copy of the output itself;
    # at 8 bits one copy serves both (deduplicated).
    torch.manual_seed(0)
    x = torch.randn(64, 256, requires_grad=True)
    w = torch.randn(256, 256, requires_grad=True)
    seen = []
    with observe_saved_tensors(lambda stored, source: seen.append(stored)), \
            compress_saved_tensors(CompressionConfig(bits=bits, group_size=256)):
        h = torch.tanh(x * 1.0)
        out = (h @ w).sum()
    codes = {t.untyped_storage().data_ptr() for t in seen if t.dtype == torch.uint8 and t.numel() == 64 * 256 * bits // 8}
    assert len(codes) == copies
    out.backward()
    assert torch.isfinite(x.grad).all()


def test_sign_is_stored_in_one_bit_per_value():
    from tinykg.profile import ActivationTracker

    x = torch.randn(64, 256, requires_grad=True)
    with ActivationTracker() as tracker, compress_saved_tensors(CompressionConfig(bits=2, group_size=256)):
        y = torch.relu(x * 1.0)  # mul saves nothing (a scalar); relu saves its output: 64 * 256 / 8 bytes
    assert tracker.report().total_bytes == 64 * 256 // 8
    y.sum().backward()


# -- in-place changes to a tensor the hooks keep as it is ----------------------------------------------

@pytest.mark.parametrize("context", ["observe", "compress_small"])
def test_inplace_change_of_a_kept_tensor_raises_like_pytorch(context):
    # Autograd does not check the version of tensors saved through hooks: without this check the
    # gradient below comes out silently wrong ([1.08, ...] instead of [2.00, ...]).
    a = torch.linspace(0, 1, 10, requires_grad=True)
    block = (observe_saved_tensors(lambda stored, source: None) if context == "observe"
             else compress_saved_tensors(CompressionConfig(bits=2, min_numel=100)))
    with block:
        b = a * 2
        c = b.sin()  # saves b as it is: an observer only, or below min_numel
    b.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c.sum().backward()


# -- cast_saved_tensors: the bf16-storage baseline -----------------------------------------------------

BF16_UNIT_ROUNDOFF = 2.0**-8  # round to nearest with an 8-bit significand: |x_hat - x| <= 2^-8 |x|


def test_cast_saved_tensors_halves_fp32_activation_bytes_exactly_in_either_nesting():
    from tinykg.compress import cast_saved_tensors
    from tinykg.profile import ActivationTracker

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 8))
    x = torch.randn(256, 64)  # saved by Linear(0); Tanh's output by Tanh and Linear(2); the output by pow
    graphs = []  # keep every graph alive: a dropped graph holds nothing
    with ActivationTracker(model) as fp32:
        graphs.append(model(x).pow(2).sum())
    with ActivationTracker(model) as outer, cast_saved_tensors(torch.bfloat16):
        graphs.append(model(x).pow(2).sum())
    with cast_saved_tensors(torch.bfloat16), ActivationTracker(model) as inner:
        graphs.append(model(x).pow(2).sum())
    expected_fp32 = 4 * (256 * 64 + 256 * 128 + 256 * 8)
    assert fp32.report().total_bytes == expected_fp32
    assert outer.report().total_bytes == inner.report().total_bytes == expected_fp32 // 2


def test_cast_saved_tensors_leaves_parameters_buffers_and_integers_alone():
    from tinykg.compress import cast_saved_tensors

    table = torch.randn(50, 8, requires_grad=True)
    weight = nn.Parameter(torch.randn(8))
    buffer = torch.randn(200, 8)
    index = torch.randint(0, 50, (200,))
    seen = []
    with observe_saved_tensors(lambda stored, source: seen.append((stored, source))), cast_saved_tensors(exclude=[buffer]):
        rows = table[index]  # saves the int64 index
        out = (rows * weight * buffer).sum()  # saves rows and the parameter, then rows * weight and the buffer
    by_source = {id(source): stored for stored, source in seen}
    assert by_source[id(index)].dtype == torch.int64 and by_source[id(index)].data_ptr() == index.data_ptr()
    assert by_source[id(weight)].dtype == torch.float32 and by_source[id(weight)].data_ptr() == weight.data_ptr()
    assert by_source[id(buffer)].dtype == torch.float32 and by_source[id(buffer)].data_ptr() == buffer.data_ptr()
    assert by_source[id(rows)].dtype == torch.bfloat16
    out.backward()
    assert table.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_cast_saved_tensors_gradient_error_within_bf16_rounding_bound():
    """dL/dW = y^T x for L = |y|^2 / 2, y = x W^T: backward reads bf16 copies of y (saved once for y * y)
    and x. Each factor is off by at most u = 2^-8 relatively, so each term y_b x_b by at most (2u + u^2)
    |y_b||x_b|; plus fp32 accumulation error (n * 2^-24 each way) in both runs."""
    from tinykg.compress import cast_saved_tensors

    torch.manual_seed(0)
    lin = nn.Linear(32, 16, bias=False)
    x = torch.randn(512, 32)

    def grad(context):
        lin.zero_grad()
        with context:
            y = lin(x)
            loss = 0.5 * (y * y).sum()
        loss.backward()
        return lin.weight.grad.clone(), y.detach()

    import contextlib

    g_fp32, y = grad(contextlib.nullcontext())
    g_bf16, _ = grad(cast_saved_tensors(torch.bfloat16))
    magnitude = y.abs().t() @ x.abs()  # (16, 32): sum_b |y_b| |x_b|
    u = BF16_UNIT_ROUNDOFF
    bound = magnitude * (2 * u + u * u) + magnitude * 2 * x.shape[0] * 2.0**-24
    assert ((g_bf16 - g_fp32).abs() <= bound).all()
    assert not torch.equal(g_bf16, g_fp32)  # the stored copies really were rounded


def test_cast_saved_tensors_rejects_non_narrow_dtypes():
    import pytest

    from tinykg.compress import cast_saved_tensors

    for dtype in (torch.float32, torch.float64, torch.int8):
        with pytest.raises(ValueError):
            with cast_saved_tensors(dtype):
                pass
    with pytest.raises(ValueError):
        with cast_saved_tensors(torch.bfloat16, min_numel=-1):
            pass


class _TwoTower(nn.Module):
    """A plain matrix-factorisation scorer: the score's factors are rows of parameter tables."""

    def __init__(self, users: int = 50, items: int = 80, d: int = 64, max_norm: float | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.user = nn.Embedding(users, d, max_norm=max_norm)
        self.item = nn.Embedding(items, d, max_norm=max_norm)

    def forward(self, u, i):
        return (self.user(u) * self.item(i)).sum(-1)


def _two_tower_run(model: _TwoTower, context, batch: int = 256):
    g = torch.Generator().manual_seed(1)
    u = torch.randint(0, model.user.num_embeddings, (batch,), generator=g)
    i = torch.randint(0, model.item.num_embeddings, (batch,), generator=g)
    saved = []
    with observe_saved_tensors(lambda stored, *rest: saved.append(stored)), context:
        loss = model(u, i).square().sum()
    kept = {t.untyped_storage().data_ptr(): t for t in saved if not isinstance(t, nn.Parameter)}
    loss.backward()
    return kept, [p.grad.clone() for p in model.parameters()], (u, i)


def test_rows_of_parameter_tables_are_gathered_again_not_quantized():
    """The product saves both looked-up rows; the hooks keep a reference to each table and the index the
    lookup keeps anyway: no floating byte is held for them, and the gradients are those of fp32 to the
    bit (the rows gathered again are the very values forward used)."""
    model = _TwoTower()
    _, fp32_grads, _ = _two_tower_run(model, contextlib.nullcontext())
    model.zero_grad()
    kept, grads, (u, i) = _two_tower_run(model, compress_saved_tensors(CompressionConfig(bits=2)))
    floating = [t for t in kept.values() if t.is_floating_point() and t.numel() > 1]
    assert [tuple(t.shape) for t in floating] == [(256,)]  # square()'s input: the (B,) scores, nothing (B, d)
    assert {t.data_ptr() for t in kept.values() if t.dtype == torch.int64} == {u.data_ptr(), i.data_ptr()}
    for a, b in zip(fp32_grads, grads):
        assert torch.equal(a, b)


def test_lookups_that_renormalise_the_table_are_quantized():
    """``max_norm`` rewrites the table's rows in place at each lookup: its outputs are quantized as usual."""
    model = _TwoTower(max_norm=1.0)
    kept, _, _ = _two_tower_run(model, compress_saved_tensors(CompressionConfig(bits=2)))
    assert any(t.dtype == torch.uint8 and t.numel() == 256 * 64 * 2 // 8 for t in kept.values())


def test_a_table_or_index_changed_before_backward_is_an_error_not_a_wrong_gradient():
    """fp32 keeps a copy of the rows and would not mind; the reference cannot give them back, so it
    refuses: an in-place change of the table or of the index, or a table whose ``.data`` was replaced."""
    model = _TwoTower()
    config = CompressionConfig(bits=2)

    def forward(u):
        with compress_saved_tensors(config):
            return model(u, u).sum()

    loss = forward(torch.arange(10))
    with torch.no_grad():
        model.user.weight.add_(1)  # an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    u = torch.arange(10)
    loss = forward(u)
    u.add_(1)  # the index
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward(inputs=[model.item.weight])  # the lookup's own backward, which checks u, is not run
    loss = forward(torch.arange(10))
    model.item.weight.data = model.item.weight.data.clone()
    with pytest.raises(RuntimeError, match="replaced"):
        loss.backward()


def test_lookups_under_inference_mode_are_left_alone():
    model = _TwoTower()
    with torch.inference_mode(), compress_saved_tensors(CompressionConfig(bits=2)):
        scores = model(torch.arange(4), torch.arange(4))
    assert scores.shape == (4,)
