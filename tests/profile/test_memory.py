"""ActivationTracker counts exactly the bytes autograd holds for backward."""

import torch
from torch import nn

from tinykg.compress import CompressionConfig, compress_saved_tensors
from tinykg.nn import compress_
from tinykg.profile import ActivationTracker


def test_tracker_counts_known_saved_tensors_exactly():
    x = torch.randn(100, 30, requires_grad=True)  # a leaf that requires grad: treated as a parameter
    with ActivationTracker() as tracker:
        h = x * 3  # MulBackward saves nothing of size (the scalar), x is a leaf
        y = torch.exp(h)  # saves its output: 100*30*4 bytes
        z = (y * h).sum()  # saves y (already counted) and h: another 12,000 bytes
    report = tracker.report()
    assert report.total_bytes == 2 * 100 * 30 * 4
    z.backward()


def test_tracker_excludes_parameters_and_buffers_and_labels_modules():
    model = nn.Sequential(nn.Linear(20, 40), nn.Tanh(), nn.BatchNorm1d(40), nn.Linear(40, 1))
    x = torch.randn(64, 20)
    with ActivationTracker(model) as tracker:
        out = model(x).sum()
    report = tracker.report()
    # Linear(0) saves x; Tanh saves its output; BatchNorm saves its input (the tanh output, deduplicated)
    # plus per-channel statistics; Linear(3) saves the BatchNorm output.
    assert report.by_op["0"] == 64 * 20 * 4
    assert report.by_op["1"] == 64 * 40 * 4
    assert report.by_op["3"] == 64 * 40 * 4
    assert report.total_bytes == sum(report.by_op.values())
    parameter_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert report.total_bytes < 64 * 20 * 4 + 3 * 64 * 40 * 4 + parameter_bytes
    out.backward()


def test_tracker_forgets_released_graphs():
    x = torch.randn(256, 64)
    w = torch.randn(64, 64, requires_grad=True)
    with ActivationTracker() as tracker:
        kept = torch.tanh(x @ w).sum()
        dropped = torch.sigmoid(x @ w).sum()
    before = tracker.report().total_bytes
    del dropped
    after = tracker.report().total_bytes
    assert before == after + 256 * 64 * 4
    kept.backward()


def test_tracker_composes_with_compression_in_either_order():
    model = nn.Sequential(nn.Linear(128, 256), nn.Tanh(), nn.Linear(256, 1))
    x = torch.randn(512, 128)
    config = CompressionConfig(bits=2, group_size=128)
    outputs = []  # keep each graph alive: a dropped graph holds nothing
    with ActivationTracker(model) as fp32:
        outputs.append(model(x).sum())
    with ActivationTracker(model) as outer, compress_saved_tensors(config):
        outputs.append(model(x).sum())
    with compress_saved_tensors(config), ActivationTracker(model) as inner:
        outputs.append(model(x).sum())
    compress_(model, config)
    with ActivationTracker(model) as modules:
        outputs.append(model(x).sum())
    assert outer.report().total_bytes == inner.report().total_bytes
    # fp32 keeps x and the tanh output once; packed, below 8 bits tanh also keeps the square of its output
    # (its unbiased derivative, tinykg.nn.activation) beside the next layer's copy of the output.
    fp32_bytes = fp32.report().total_bytes
    tanh_out_bytes = 512 * 256 * 4
    assert fp32_bytes == 512 * 128 * 4 + tanh_out_bytes
    expected = config.ideal_ratio() * fp32_bytes / (fp32_bytes + tanh_out_bytes)
    for packed in (outer, modules):
        ratio = fp32_bytes / packed.report().total_bytes
        assert 0.97 * expected <= ratio <= expected * 1.01


def test_report_table_aligns_the_total_with_short_names():
    from tinykg.profile import ActivationReport

    rows = ActivationReport(1_500, {"fc": 1_000, "ab": 500}).table().splitlines()
    assert rows[-1].startswith("total") and len({len(row) for row in rows}) == 1
    assert rows[0].split() == ["fc", "1,000", "B"]


def test_peak_allocated_counts_the_allocator_bytes_exactly():
    """The peak is the largest sum of live allocations since the call's start: two 4,000-byte tensors at
    once, whatever was allocated before the call or freed after the peak."""
    from tinykg.profile import peak_allocated

    before = torch.empty(10_000)  # allocated before the call: not counted

    def fn():
        a = torch.empty(1000)  # 4,000 B
        b = torch.empty(1000)  # 8,000 B live
        del a, b
        c = torch.empty(500)  # 2,000 B: below the peak
        return c

    out, peak = peak_allocated(fn)
    assert out.shape == (500,) and peak == 8000
    assert peak_allocated(before.zero_)[1] == 0  # in place: nothing allocated
