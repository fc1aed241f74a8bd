"""Nonlinearities and dropout. ReLU, LeakyReLU and dropout keep a 1-bit mask; softmax keeps a quantized
copy of its output; tanh and sigmoid keep what their derivative reads (`output_activation_saved`).

Tanh's derivative 1 - y**2 and sigmoid's y (1 - y) = 1/4 - (y - 1/2)**2 are quadratic in the output y, and
for a stochastically rounded y, E[y_q**2] = y**2 + Var(y_q): quantizing y biases the gradient by the
rounding variance, and no function of one rounded copy of y is unbiased. So below 8 bits they keep the
square v = (y - c)**2 quantized (E[v_q] = v; the derivative is linear in it), at the price of a second copy
where the next op keeps y too (``share_output`` keeps y instead, for a caller that prefers the shared copy:
KGCN's item vector). At 8 bits the variance is at most (range / 255)**2 / 4 and y itself is kept. The same
square in `compress_saved_tensors` (`benchmarks/bench_hooks.py`, a Linear-Tanh-Linear first-layer gradient
averaged over 200 seeds): z 6.0 with y at 2 bits, 1.1 with the square, 1.0 with y at 8 bits. Softmax's
backward y * (g - sum(g * y)) is quadratic in y as well; only two independently rounded copies would make it
unbiased, and its output is kept once (a bias of the same order, left as it is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ..compress.rng import draw_torch_seed
from ..compress.hooks import CENTRED_SQUARE, SQUARE, SQUARE_BELOW_BITS, SQUARE_CENTRES, centred_square
from ._saved import BitMask, as_dtype, compression_active, first_order, load, maybe_quantize, save


class _CompressedReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, negative_slope, inplace):
        ctx.negative_slope = negative_slope
        save(ctx, BitMask.greater(x))
        if inplace:  # backward needs only the mask, taken above: x itself may be overwritten
            ctx.mark_dirty(x)
        return _plain_relu(x, negative_slope, inplace)

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        (positive,) = load(ctx)
        return mask_grad(positive, grad_out, ctx.negative_slope), None, None


def _plain_relu(x: torch.Tensor, negative_slope: float, inplace: bool) -> torch.Tensor:
    if negative_slope == 0.0:
        return torch.relu_(x) if inplace else torch.relu(x)
    return F.leaky_relu(x, negative_slope, inplace=inplace)


def mask_grad(positive: BitMask, grad_out: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """Gradient of ReLU (``negative_slope == 0``) or LeakyReLU given the mask of positive inputs:
    ``grad_out`` where positive, ``grad_out * negative_slope`` elsewhere."""
    return positive.scale(grad_out, 1.0, negative_slope)


def compressed_relu(x: torch.Tensor, config: CompressionConfig | None = None, inplace: bool = False) -> torch.Tensor:
    """ReLU storing a 1-bit mask (the mask is exact: ``config`` only switches compression on); ``inplace``
    as ``torch.relu_``."""
    if not compression_active(config, x):
        return _plain_relu(x, 0.0, inplace)
    return _CompressedReLUFunction.apply(x, 0.0, inplace)


def compressed_leaky_relu(
    x: torch.Tensor, negative_slope: float = 0.01, config: CompressionConfig | None = None, inplace: bool = False,
) -> torch.Tensor:
    """LeakyReLU storing a 1-bit mask; ``inplace`` as ``F.leaky_relu(..., inplace=True)``."""
    if not compression_active(config, x):
        return _plain_relu(x, float(negative_slope), inplace)
    return _CompressedReLUFunction.apply(x, float(negative_slope), inplace)


class _CompressedDropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, generator, inplace):
        # Not F.dropout's draws: the mask's bits come straight from the counter-based noise of
        # `tinykg.compress.rng` under one seed drawn from ``generator`` (else the global generator), with no
        # tensor of uniforms. F.dropout's bernoulli_ (on CPU, one fp64 uniform per element) filled (11238, 64)
        # in 5.0 ms on one thread here, torch.rand in 2.9 ms, the fused kernel in 0.14 ms. So with dropout
        # the global random stream of a compressed run parts from the fp32 run's here.
        keep = BitMask.keep(x.shape, p, draw_torch_seed(generator), x.device)
        ctx.scale = 1.0 / (1.0 - p)
        save(ctx, keep)
        if inplace:
            ctx.mark_dirty(x)
            return keep.scale(x, ctx.scale, 0.0, out=x)
        return keep.scale(x, ctx.scale, 0.0)

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        (keep,) = load(ctx)
        return keep.scale(grad_out, ctx.scale, 0.0), None, None, None


def compressed_dropout(
    x: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    config: CompressionConfig | None = None,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Inverted dropout storing a 1-bit keep-mask. Identity when not training or ``p == 0``; zeros (as
    ``F.dropout``) when ``p == 1``, which keeps nothing and saves nothing; ``inplace`` as ``F.dropout``'s.
    Compressed, the mask is drawn from one seed taken from ``generator`` (else torch's global generator),
    so ``torch.manual_seed`` decides it; it is not the mask ``F.dropout`` would draw."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0 or not compression_active(config, x):
        return F.dropout(x, p, training=True, inplace=inplace)
    return _CompressedDropoutFunction.apply(x, p, generator, inplace)


# Gradients of the activations whose derivative is a function of their output y (g: the output's gradient):
# g * y * (1 - y) and g * (1 - y * y), each as the one fused kernel PyTorch's own backward uses (three
# element-wise ops each otherwise; a small step pays ~2 us per op on CPU). The ops' ``.default`` overloads:
# calling the packet resolves the overload in Python on every call.
OUTPUT_GRADS = {
    "sigmoid": lambda y, g: torch.ops.aten.sigmoid_backward.default(g, y),
    "tanh": lambda y, g: torch.ops.aten.tanh_backward.default(g, y),
}


# tanh and sigmoid below 8 bits keep v = (y - centre)**2; their derivative is its value at the centre minus v.
_SQUARE_CENTRE = {"tanh": SQUARE_CENTRES[SQUARE], "sigmoid": SQUARE_CENTRES[CENTRED_SQUARE]}
_DERIVATIVE_AT_CENTRE = {"tanh": 1.0, "sigmoid": 0.25}


def output_activation_saved(y: torch.Tensor, kind: str, config: CompressionConfig, share_output: bool = False):
    """What tanh / sigmoid (``kind``) keep of their output ``y`` for backward, and whether it is the square
    (module docstring): below 8 bits v = (y - c)**2 quantized, else y itself (`maybe_quantize`, shared with
    a next op that keeps y at the same config). ``share_output``: y itself at every width, for a caller
    that knows a later op keeps y and prefers one shared copy to the unbiased square. Hand both results
    to `output_activation_grad`."""
    if share_output or config.bits >= SQUARE_BELOW_BITS:
        return maybe_quantize(y, config, is_output=True), False
    return maybe_quantize(centred_square(y, _SQUARE_CENTRE[kind]), config), True


def output_activation_grad(saved: torch.Tensor, grad_out: torch.Tensor, kind: str, is_square: bool) -> torch.Tensor:
    """The gradient through tanh / sigmoid from what `output_activation_saved` kept (loaded)."""
    saved = as_dtype(saved, grad_out.dtype)
    if is_square:
        return grad_out * (_DERIVATIVE_AT_CENTRE[kind] - saved)
    return OUTPUT_GRADS[kind](saved, grad_out)


class _CompressedOutputActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, dim, config):
        if kind == "sigmoid":
            y = torch.sigmoid(x)
        elif kind == "tanh":
            y = torch.tanh(x)
        else:
            y = torch.softmax(x, dim)
        ctx.kind, ctx.dim = kind, dim
        if kind == "softmax":
            saved, ctx.is_square = maybe_quantize(y, config, is_output=True), False
        else:
            saved, ctx.is_square = output_activation_saved(y, kind, config)
        save(ctx, saved)
        return y

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        (saved,) = load(ctx)
        if ctx.kind == "softmax":
            y = as_dtype(saved, grad_out.dtype)
            grad = y * (grad_out - (grad_out * y).sum(ctx.dim, keepdim=True))
        else:
            grad = output_activation_grad(saved, grad_out, ctx.kind, ctx.is_square)
        return grad, None, None, None


def compressed_sigmoid(x: torch.Tensor, config: CompressionConfig | None = None) -> torch.Tensor:
    """Sigmoid; backward uses y (1 - y) = 1/4 - (y - 1/2)**2, from what `output_activation_saved` keeps."""
    if not compression_active(config, x):
        return torch.sigmoid(x)
    return _CompressedOutputActivation.apply(x, "sigmoid", None, config)


def compressed_tanh(x: torch.Tensor, config: CompressionConfig | None = None) -> torch.Tensor:
    """Tanh; backward uses 1 - y**2, from what `output_activation_saved` keeps."""
    if not compression_active(config, x):
        return torch.tanh(x)
    return _CompressedOutputActivation.apply(x, "tanh", None, config)


def compressed_softmax(x: torch.Tensor, dim: int = -1, config: CompressionConfig | None = None) -> torch.Tensor:
    """Softmax along ``dim`` storing its quantized output; backward uses y * (g - <g, y>)."""
    if not compression_active(config, x):
        return torch.softmax(x, dim)
    return _CompressedOutputActivation.apply(x, "softmax", dim, config)


class CompressedReLU(nn.ReLU):
    def __init__(self, inplace: bool = False, config: CompressionConfig | None = None):
        super().__init__(inplace)
        self.config = config

    def forward(self, x):
        return compressed_relu(x, self.config if self.training else None, self.inplace)


class CompressedLeakyReLU(nn.LeakyReLU):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False, config: CompressionConfig | None = None):
        super().__init__(negative_slope, inplace)
        self.config = config

    def forward(self, x):
        return compressed_leaky_relu(x, self.negative_slope, self.config if self.training else None, self.inplace)


class CompressedDropout(nn.Dropout):
    def __init__(self, p: float = 0.5, inplace: bool = False, config: CompressionConfig | None = None):
        super().__init__(p, inplace)
        self.config = config

    def forward(self, x):
        return compressed_dropout(x, self.p, self.training, self.config, inplace=self.inplace)


class CompressedSigmoid(nn.Sigmoid):
    def __init__(self, config: CompressionConfig | None = None):
        super().__init__()
        self.config = config

    def forward(self, x):
        return compressed_sigmoid(x, self.config if self.training else None)


class CompressedTanh(nn.Tanh):
    def __init__(self, config: CompressionConfig | None = None):
        super().__init__()
        self.config = config

    def forward(self, x):
        return compressed_tanh(x, self.config if self.training else None)


class CompressedSoftmax(nn.Softmax):
    def __init__(self, dim: int | None = None, config: CompressionConfig | None = None):
        super().__init__(dim)
        self.config = config

    def forward(self, x):
        # Without a dim, nn.Softmax's (deprecated) implicit choice: 0 for 0-, 1- and 3-dimensional inputs, else 1.
        dim = self.dim if self.dim is not None else (0 if x.dim() in (0, 1, 3) else 1)
        return compressed_softmax(x, dim, self.config if self.training else None)
