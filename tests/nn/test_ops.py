"""Compressed ops: exact forward, correct hand-written backward (float64 gradcheck, saved exactly),
unbiased compressed gradients, drop-in conversion, and the memory they keep."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinykg.compress import CompressionConfig, observe_saved_tensors
from tinykg.nn import (
    compressed_bpr_loss,
    CompressedLinear,
    compress_,
    compressed_dropout,
    compressed_embedding,
    compressed_leaky_relu,
    compressed_linear,
    compressed_dot,
    compressed_mul,
    compressed_normalize,
    compressed_relu,
    compressed_sigmoid,
    compressed_softmax,
    compressed_tanh,
    edge_aggregate,
    gather_aggregate,
    sparse_matmul,
    weighted_sum,
)
from tinykg.profile import ActivationTracker

CFG = CompressionConfig(bits=2, group_size=32)
K_SIGMA = 6.0


def _d(*shape, seed=0, positive=False):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (t.abs() + 0.1 if positive else t).requires_grad_()


def _edges(num_targets, num_sources, num_edges, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_targets, (num_edges,), generator=g), torch.randint(0, num_sources, (num_edges,), generator=g)


# float64 inputs are saved exactly, so gradcheck tests each hand-written backward formula itself.
GRADCHECK_CASES = {
    "linear": lambda: (lambda x, w, b: compressed_linear(x, w, b, CFG), (_d(3, 4, 5), _d(6, 5, seed=1), _d(6, seed=2))),
    "relu": lambda: (lambda x: compressed_relu(x, CFG), (_d(4, 7),)),
    "leaky_relu": lambda: (lambda x: compressed_leaky_relu(x, 0.2, CFG), (_d(4, 7),)),
    "dropout": lambda: (
        lambda x: compressed_dropout(x, 0.3, True, CFG, generator=torch.Generator().manual_seed(0)),
        (_d(4, 7),),
    ),
    "sigmoid": lambda: (lambda x: compressed_sigmoid(x, CFG), (_d(4, 7),)),
    "tanh": lambda: (lambda x: compressed_tanh(x, CFG), (_d(4, 7),)),
    "softmax": lambda: (lambda x: compressed_softmax(x, 1, CFG), (_d(3, 5, 2),)),
    "mul": lambda: (lambda a, b: compressed_mul(a, b, CFG), (_d(3, 1, 4), _d(3, 5, 4, seed=1))),
    "dot": lambda: (lambda a, b: compressed_dot(a, b, CFG), (_d(3, 1, 4), _d(3, 5, 4, seed=1))),
    "normalize": lambda: (lambda x: compressed_normalize(x, -1, 1e-12, CFG), (_d(5, 6),)),
    "embedding": lambda: (lambda w: compressed_embedding(torch.tensor([[0, 3], [3, 1]]), w, CFG), (_d(4, 3),)),
    "weighted_sum": lambda: (lambda v, w: weighted_sum(v, w, "mean", CFG), (_d(2, 3, 4, 5), _d(2, 3, 4, seed=1))),
    "gather_aggregate": lambda: (
        lambda s, w: gather_aggregate(s, torch.tensor([[0, 2, 2], [1, 4, 0]]), w, "mean", CFG),
        (_d(5, 3), _d(2, 3, seed=1)),
    ),
    "edge_aggregate": lambda: (
        lambda w, x: edge_aggregate(*_edges(4, 6, 15), w, x, 4, CFG),
        (_d(15), _d(6, 3, seed=1)),
    ),
    "sparse_matmul": lambda: (lambda x: sparse_matmul(_adjacency(x.dtype), x, CFG), (_d(6, 3),)),
    "bpr_loss": lambda: (lambda u, p, n: compressed_bpr_loss(u, p, n, 0.3, CFG), (_d(5, 4), _d(5, 4, seed=1), _d(5, 4, seed=2))),
}


def _adjacency(dtype):
    values = torch.rand(10, dtype=dtype, generator=torch.Generator().manual_seed(0))
    return torch.sparse_coo_tensor(torch.stack(_edges(4, 6, 10)), values, (4, 6), check_invariants=True).coalesce()


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_op_backward_gradcheck_float64(name):
    fn, inputs = GRADCHECK_CASES[name]()
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("name", sorted(set(GRADCHECK_CASES) - {"dropout"}))
def test_op_forward_exact_with_compression(name):
    """The forward pass computes with exact activations: same output with and without a config."""
    fn, inputs = GRADCHECK_CASES[name]()
    inputs32 = [t.detach().float().requires_grad_() for t in inputs]
    with_config = fn(*inputs32)
    global CFG
    saved, CFG = CFG, None
    try:
        plain = fn(*[t.detach() for t in inputs32])
    finally:
        CFG = saved
    assert torch.allclose(with_config, plain, rtol=1e-6, atol=1e-6)


def test_dot_is_mul_then_sum_with_the_same_codes():
    """compressed_dot is compressed_mul + .sum(-1) in one node: the same forward, and with the same seeds
    (the same quantized factors) the same gradients to the last bit."""
    a0, b0 = torch.randn(6, 1, 40), torch.randn(6, 3, 40, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (lambda a, b: compressed_mul(a, b, CFG).sum(-1), lambda a, b: compressed_dot(a, b, CFG)):
        a, b = (a0 * 1).requires_grad_(), (b0 * 1).requires_grad_()
        torch.manual_seed(7)
        out = fn(a * 1, b * 1)  # intermediates: quantized afresh, seeds from the global generator
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        out.backward(g)
        grads.append((out.detach(), a.grad, b.grad))
    for first, second in zip(*grads):
        assert torch.equal(first, second)


def test_dropout_masks_follow_torch_seeds_not_the_quantizer_stream():
    """One seed per mask, drawn from the generator given, else from the global generator (so
    ``torch.manual_seed`` decides the masks, as it does F.dropout's), never from the quantizer's own stream."""
    from tinykg.compress import quantizer_generator, restoring_quantizer_seed, seed_quantizer

    x = torch.randn(64, 33, requires_grad=True)

    def mask(**kwargs):
        return compressed_dropout(x, 0.5, True, CFG, **kwargs) != 0

    assert torch.equal(mask(generator=torch.Generator().manual_seed(5)), mask(generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(mask(generator=torch.Generator().manual_seed(5)), mask(generator=torch.Generator().manual_seed(6)))
    with restoring_quantizer_seed():
        seed_quantizer(0)
        state = quantizer_generator().get_state()
        torch.manual_seed(11)
        first = mask()
        assert torch.equal(quantizer_generator().get_state(), state)
        seed_quantizer(1)  # another quantizer stream: the same global seed gives the same mask
        torch.manual_seed(11)
        assert torch.equal(mask(), first)


def test_masks_refuse_a_tensor_of_another_shape():
    from tinykg.nn._saved import BitMask

    mask = BitMask.greater(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"mask of shape \(4, 6\) applied to a tensor of shape \(6, 4\)"):
        mask.scale(torch.randn(6, 4), 1.0, 0.0)


def test_dropout_mask_matches_scaling_and_rate():
    x = torch.ones(200, 100, requires_grad=True)
    y = compressed_dropout(x, 0.25, True, CFG, generator=torch.Generator().manual_seed(0))
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 6 * math.sqrt(0.25 * 0.75 / kept.numel())
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    assert torch.equal(compressed_dropout(x, 0.25, False, CFG), x)
    with pytest.raises(ValueError, match="dropout probability"):
        compressed_dropout(x, 1.5, True, CFG)
    x.grad = None
    dropped = compressed_dropout(x, 1.0, True, CFG)  # as F.dropout: all zeros, and a zero gradient
    assert torch.equal(dropped, torch.zeros_like(x))
    dropped.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("fused", [False, True])
def test_output_activation_gradient_unbiased_at_2_bits(activation, fused):
    # tanh's and sigmoid's derivatives are quadratic in their output: with the output quantized the mean of
    # N gradients stayed ~6 standard errors from fp32's (tanh); with the square kept it is within 4.
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    w1, w2 = torch.randn(64, 16) / 4, torch.randn(1, 64) / 8
    config = CompressionConfig(bits=2)

    def first_layer_grad(cfg):
        w = w1.clone().requires_grad_()
        if fused:
            h = compressed_linear(x, w, None, cfg, activation)
        else:
            act = compressed_tanh if activation == "tanh" else compressed_sigmoid
            h = act(compressed_linear(x, w, None, cfg), cfg)
        # w2 is a constant: the second layer keeps nothing, so h's rounding reaches w only through the activation
        (h @ w2.t()).pow(2).mean().backward()
        return w.grad

    reference = first_layer_grad(None)
    samples = []
    for seed in range(100):
        torch.manual_seed(seed)
        samples.append(first_layer_grad(config))
    samples = torch.stack(samples)
    standard_error = (samples.var(0).sum() / len(samples)).sqrt()
    assert (samples.mean(0) - reference).norm() <= 4 * standard_error


def test_linear_gradient_unbiased():
    """grad_W = g^T x_hat. Per entry the error is sum_n g[n,o] e[n,i] with independent e of spread s[n,i],
    so the mean of N draws deviates by at most K * sqrt(sum_n g^2 s^2 / 4 / N)."""
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    weight = torch.randn(8, 32, requires_grad=True)
    g = torch.randn(64, 8)
    config = CompressionConfig(bits=2, group_size=32)
    exact = g.t() @ x
    num_draws = 300
    total = torch.zeros_like(exact, dtype=torch.float64)
    for _ in range(num_draws):
        weight.grad = None
        compressed_linear(x, weight, None, config).backward(g)
        total += weight.grad.double()
    rows_range = x.amax(1) - x.amin(1)  # group = one 32-wide row
    step = (rows_range / 3).unsqueeze(1).expand_as(x) * 1.01  # fp16 rounding up of the scale
    bound = K_SIGMA * torch.sqrt((g.double().t() ** 2) @ (step.double() ** 2) / 4 / num_draws)
    assert ((total / num_draws - exact.double()).abs() <= bound).all()


@pytest.mark.parametrize("l2_weight", [0.0, 0.5])
def test_bpr_loss_same_forward_and_unbiased_gradients(l2_weight):
    """The fused BPR loss computes the plain composition's value to the last bit, and its gradients are
    linear in the packed copies: du = s (n - p) + c u, dp = -s u + c p, dn = s u + c n with s = g sigmoid(z) / B
    and c = g l2 / B exact. Each entry's rounding errors are independent with variance at most step^2 / 4
    (one 32-wide row per group), so the mean of N draws deviates by at most K * sqrt(sum coef^2 step^2 / 4 / N)."""
    torch.manual_seed(2)
    u0, p0, n0 = (torch.randn(16, 32) for _ in range(3))
    config = CompressionConfig(bits=2, group_size=32)
    leaves = [t.clone().requires_grad_() for t in (u0, p0, n0)]
    plain = compressed_bpr_loss(*leaves, l2_weight, None)
    plain.backward()
    exact = [t.grad.double() for t in leaves]
    num_draws = 300
    totals = [torch.zeros_like(e) for e in exact]
    for _ in range(num_draws):
        leaves = [t.clone().requires_grad_() for t in (u0, p0, n0)]
        loss = compressed_bpr_loss(*[t * 1 for t in leaves], l2_weight, config)  # intermediates: fresh noise
        assert torch.equal(loss.detach(), plain.detach())
        loss.backward()
        for total, t in zip(totals, leaves):
            total += t.grad.double()
    step = [((t.amax(1) - t.amin(1)) / 3 * 1.01).double().unsqueeze(1).expand_as(t) for t in (u0, p0, n0)]
    z = (u0 * n0).sum(-1) - (u0 * p0).sum(-1)
    s = (torch.sigmoid(z).double() / 16).unsqueeze(1)
    c = l2_weight / 16
    variances = [  # of one draw's error, per entry, for du, dp, dn
        s**2 * (step[2] ** 2 + step[1] ** 2) / 4 + c**2 * step[0] ** 2 / 4,
        s**2 * step[0] ** 2 / 4 + c**2 * step[1] ** 2 / 4,
        s**2 * step[0] ** 2 / 4 + c**2 * step[2] ** 2 / 4,
    ]
    for total, want, var in zip(totals, exact, variances):
        assert ((total / num_draws - want).abs() <= K_SIGMA * torch.sqrt(var / num_draws)).all()


def test_bpr_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="three \\(B, D\\) tensors"):
        compressed_bpr_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 2))


def test_edge_aggregate_gradient_unbiased():
    """Sparse x dense with learnable edge weights: grad_w[e] = <g[target_e], x_hat[source_e]>."""
    torch.manual_seed(1)
    target, source = _edges(30, 40, 200, seed=3)
    x = torch.randn(40, 32)
    w = torch.rand(200, requires_grad=True)
    g = torch.randn(30, 32)
    config = CompressionConfig(bits=2, group_size=32)
    exact = (g[target] * x[source]).sum(1)
    num_draws = 300
    total = torch.zeros(200, dtype=torch.float64)
    for _ in range(num_draws):
        w.grad = None
        edge_aggregate(target, source, w, x, 30, config).backward(g)
        total += w.grad.double()
    step = ((x.amax(1) - x.amin(1)) / 3 * 1.01).unsqueeze(1).expand_as(x)[source]
    bound = K_SIGMA * torch.sqrt((g[target].double() ** 2 * step.double() ** 2).sum(1) / 4 / num_draws)
    assert ((total / num_draws - exact.double()).abs() <= bound).all()


def _mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10), nn.Sigmoid())


def test_compress_swaps_in_place_keeping_weights_and_state_dict():
    torch.manual_seed(0)
    model = _mlp()
    reference = _mlp()
    reference.load_state_dict(model.state_dict())
    weights_before = [id(p) for p in model.parameters()]
    compress_(model, CompressionConfig(bits=2))
    assert isinstance(model[0], CompressedLinear)
    assert [id(p) for p in model.parameters()] == weights_before
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(16, 64)
    model.eval(), reference.eval()
    assert torch.equal(model(x), reference(x))
    reference.load_state_dict(model.state_dict())
    model.load_state_dict(reference.state_dict())
    model.train()
    compress_(model, None)  # switch off: plain ops, bit-identical to the original in train mode too
    reference.train()
    torch.manual_seed(5)
    a = model(x)
    torch.manual_seed(5)
    assert torch.equal(a, reference(x))


def test_ops_plain_without_grad():
    x = torch.randn(8, 4)
    w = torch.randn(3, 4, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(compressed_linear(x, w, None, CFG), F.linear(x, w))


def _activation_bytes(model, x):
    with ActivationTracker(model) as tracker:
        out = model(x).sum()
    report = tracker.report()
    out.backward()
    return report.total_bytes


def test_ops_keep_tensors_whose_packed_copy_would_be_larger():
    # A batch of 2 rows of 8 in a group of 65,536 at 8 bits: packed, 65,540 B per saved tensor. Kept as
    # they are, the ops hold no more than fp32 does, and the gradients are fp32's exactly.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(2, 8)
    fp32 = _activation_bytes(model, x)
    fp32_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compress_(model, CompressionConfig(bits=8, group_size=65536))
    assert _activation_bytes(model, x) <= fp32
    for p, want in zip(model.parameters(), fp32_grads):
        assert torch.equal(p.grad, want)


def test_ops_keep_a_small_slice_without_its_large_base():
    # An 8-element slice of a 16 MB intermediate, too small to pack: the op keeps a compact copy.
    big = torch.randn(1 << 22, requires_grad=True) * 1.0
    w = torch.randn(4, 8, requires_grad=True)
    saved = []
    with observe_saved_tensors(lambda stored, *rest: saved.append(stored)):
        out = compressed_linear(big[:8].view(1, 8), w, None, CompressionConfig(bits=2))
    kept = [t for t in saved if t.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()]
    assert kept and max(t.untyped_storage().nbytes() for t in kept) <= 8 * 4
    out.sum().backward()
    assert torch.equal(w.grad, big.detach()[:8].view(1, 8).expand(4, 8))


def test_mlp_two_relu_layers_at_most_tenth_of_fp32_at_2_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 16))
    x = torch.randn(1024, 256)
    fp32 = _activation_bytes(model, x)
    compress_(model, CompressionConfig(bits=2, group_size=256))
    packed = _activation_bytes(model, x)
    assert packed * 10 <= fp32, (fp32, packed)


class _KGCNStyleAggregator(nn.Module):
    """One KGCN iteration: user-relation attention over K sampled neighbours, weighted mean, linear, tanh."""

    def __init__(self, num_entities, num_relations, dim, config):
        super().__init__()
        self.entity = nn.Parameter(torch.randn(num_entities, dim) * 0.1)
        self.relation = nn.Parameter(torch.randn(num_relations, dim) * 0.1)
        self.linear = nn.Linear(dim, dim)
        self.config = config

    def forward(self, user, item, neighbor, relation):
        # user: (B, D); item: (B,); neighbor, relation: (B, K)
        c = self.config
        rel = compressed_embedding(relation, self.relation, c)  # (B, K, D)
        scores = compressed_mul(user.unsqueeze(1), rel, c).mean(-1)  # (B, K)
        weights = compressed_softmax(scores, -1, c)
        neigh = gather_aggregate(self.entity, neighbor, weights, "mean", c)  # (B, D)
        self_vec = compressed_embedding(item, self.entity, c)
        return compressed_tanh(compressed_linear(self_vec + neigh, self.linear.weight, self.linear.bias, c), c)


def test_kgcn_style_gather_aggregate_at_most_tenth_of_fp32_at_2_bits():
    torch.manual_seed(0)
    batch, k, dim, num_entities = 2048, 8, 64, 5000
    user = torch.randn(batch, dim, requires_grad=True)
    item = torch.randint(0, num_entities, (batch,))
    neighbor = torch.randint(0, num_entities, (batch, k))
    relation = torch.randint(0, 60, (batch, k))
    sizes = {}
    for name, config in [("fp32", None), ("2bit", CompressionConfig(bits=2, group_size=256))]:
        model = _KGCNStyleAggregator(num_entities, 60, dim, config)
        with ActivationTracker(model, exclude=[neighbor, relation, item]) as tracker:
            out = model(user, item, neighbor, relation).sum()
        sizes[name] = tracker.report().total_bytes
        out.backward()
    assert sizes["2bit"] * 10 <= sizes["fp32"], sizes


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_index_ops_accept_narrow_indices_and_save_them_narrow(dtype):
    table = torch.randn(200, 8, requires_grad=True)
    index = torch.randint(0, 200, (64, 4)).to(dtype)
    weights = torch.rand(64, 4, requires_grad=True)
    expected = (table[index.long()] * weights.unsqueeze(-1)).sum(-2)
    with ActivationTracker() as tracker:
        out = gather_aggregate(table, index, weights, "sum", CFG)
        emb = compressed_embedding(index, table, CFG)
        edges = edge_aggregate(index[:, 0], index[:, 1], weights[:, 0], table, 200, CFG)
    assert torch.allclose(out, expected)
    assert torch.equal(emb, table[index.long()])
    ints = [r for r in tracker._records.values() if r.ref() is not None and not r.ref().is_floating_point()]
    assert all(r.ref().dtype in (torch.uint8, torch.int16) for r in ints if r.ref().numel() > 0)
    (out.sum() + emb.sum() + edges.sum()).backward()
    assert table.grad is not None and weights.grad is not None


def test_double_backward_through_a_compressed_op_is_an_error_not_a_wrong_number():
    # The hand-written backwards are not differentiable themselves (they read dequantized copies): a
    # second-order gradient through them used to come out wrong without a word.
    from tinykg.nn import compressed_linear

    x = torch.randn(64, 32, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(16, 32))
    out = compressed_linear(x, weight, None, CompressionConfig(bits=8), activation="tanh")
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    (grad_x,) = torch.autograd.grad(out.sum(), x)  # a first-order gradient is unaffected
    assert grad_x.shape == x.shape


def test_compress_gives_a_shared_module_one_twin_and_leaves_hooked_modules_alone():
    import torch.nn.utils.prune as prune

    config = CompressionConfig(bits=2)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    compress_(model, config)
    assert type(model[0]).__name__ == "CompressedLinear" and model[2] is model[0]

    pruned = nn.Linear(4, 4)
    prune.l1_unstructured(pruned, "weight", 0.5)  # a forward pre-hook recomputes the weight from weight_orig
    calls = []
    hooked = nn.Tanh()
    hooked.register_forward_hook(lambda *args: calls.append(1))
    model = nn.Sequential(pruned, nn.ReLU(), hooked)
    compress_(model, config)
    assert model[0] is pruned and model[2] is hooked and type(model[1]).__name__ == "CompressedReLU"
    model(torch.randn(2, 4)).sum().backward()
    assert calls == [1]

    assert type(compress_(nn.Linear(4, 4), config)).__name__ == "CompressedLinear"  # returned, not in place


def test_compressed_softmax_without_dim_picks_the_dim_nn_softmax_picks():
    x = torch.randn(2, 3, 4)
    with pytest.warns(UserWarning):  # torch's own deprecation warning for the implicit dim
        expected = nn.Softmax()(x)
    twin = compress_(nn.Sequential(nn.Softmax()), CompressionConfig(bits=8)).eval()
    assert torch.equal(twin(x), expected)


@pytest.mark.parametrize("other", [lambda x: x > 0, lambda x: (x > 0).int(), lambda x: 0.5])
def test_compressed_mul_takes_masks_and_numbers_like_the_plain_product(other):
    from tinykg.nn import compressed_dot, compressed_mul

    x = torch.randn(64, 32, requires_grad=True)
    factor = other(x.detach())
    for op, plain in ((compressed_mul, lambda a, b: a * b), (compressed_dot, lambda a, b: (a * b).sum(-1))):
        x.grad = None
        plain(x, factor).sum().backward()
        expected = x.grad.clone()
        x.grad = None
        out = op(x, factor, CompressionConfig(bits=2))
        assert torch.equal(out, plain(x, factor))
        out.sum().backward()
        assert torch.equal(x.grad, expected)  # the mask or number is kept as it is: an exact gradient


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "dropout"])
@pytest.mark.parametrize("config", [None, CompressionConfig(bits=2)], ids=["plain", "compressed"])
def test_inplace_activations_write_into_their_input_and_give_the_same_gradients(kind, config):
    # nn.ReLU(inplace=True) converted by compress_ used to allocate a new output (the flag was dropped).
    def run(inplace):
        torch.manual_seed(0)
        x = torch.randn(16, 32, requires_grad=True)
        h = x * 2.0
        if kind == "relu":
            out = compressed_relu(h, config, inplace=inplace)
        elif kind == "leaky_relu":
            out = compressed_leaky_relu(h, 0.1, config, inplace=inplace)
        else:
            out = compressed_dropout(h, 0.5, True, config, inplace=inplace)
        same_storage = out.data_ptr() == h.data_ptr()
        (out * torch.arange(32.0)).sum().backward()
        return out.detach(), x.grad, same_storage

    out, grad, shared = run(inplace=True)
    ref_out, ref_grad, ref_shared = run(inplace=False)
    assert shared and not ref_shared
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)


def test_compress_keeps_the_inplace_flag():
    model = compress_(nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Dropout(0.1, inplace=True)),
                      CompressionConfig(bits=2))
    assert model[1].inplace and model[2].inplace
    x = torch.randn(4, 8)
    hidden = model[0](x)
    assert model[1](hidden).data_ptr() == hidden.data_ptr()
