"""Linear layer that keeps a quantized copy of its input for the weight gradient, optionally fused with
the activation that follows it.

Fusing ``act(linear(x))`` into one autograd Function saves what the two ops would save separately (the
quantized input; a 1-bit mask for ReLU / LeakyReLU or the quantized output for tanh / sigmoid) with one
Python-level Function instead of two. On small batches the per-Function cost of Python autograd dominates
the step (KGCN on Last.FM at batch 128: about 1 ms per step in all), so every Function saved counts.
Quantization happens in the same order as in the unfused pair (input, then output), so a fused layer
draws the same noise and gives the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ._saved import BitMask, as_dtype, compression_active, first_order, load, maybe_quantize, save
from .activation import mask_grad, output_activation_grad, output_activation_saved

ACTIVATIONS = (None, "relu", "leaky_relu", "tanh", "sigmoid")


def _check_activation(activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _plain_activation(out: torch.Tensor, activation: str | None, negative_slope: float) -> torch.Tensor:
    if activation is None:
        return out
    if activation == "relu":
        return torch.relu(out)
    if activation == "leaky_relu":
        return F.leaky_relu(out, negative_slope)
    return torch.tanh(out) if activation == "tanh" else torch.sigmoid(out)


class _CompressedLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, config, activation, negative_slope, output_config, share_output):
        # x: (..., in), weight: (out, in), bias: (out,) or None -> (..., out)
        ctx.has_bias = bias is not None
        ctx.activation = activation
        ctx.negative_slope = negative_slope if activation == "leaky_relu" else 0.0
        x_saved = maybe_quantize(x, config) if weight.requires_grad else None
        out = F.linear(x, weight, bias)  # a fresh tensor: the activation may work in place on it
        act_saved = None
        if activation in ("relu", "leaky_relu"):
            act_saved = BitMask.greater(out)
            out = out.relu_() if activation == "relu" else F.leaky_relu_(out, negative_slope)
        elif activation is not None:
            out = out.tanh_() if activation == "tanh" else out.sigmoid_()
            act_saved, ctx.is_square = output_activation_saved(out, activation, output_config, share_output)
        save(ctx, x_saved, weight, act_saved)
        return out

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        x_hat, weight, act = load(ctx)
        if ctx.activation in ("relu", "leaky_relu"):
            grad_out = mask_grad(act, grad_out, ctx.negative_slope)
        elif ctx.activation is not None:
            grad_out = output_activation_grad(act, grad_out, ctx.activation, ctx.is_square)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ as_dtype(weight, grad_out.dtype)
        if ctx.needs_input_grad[1]:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
            grad_w = g2.t() @ x_hat.reshape(-1, x_hat.shape[-1]).to(g2.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def compressed_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: CompressionConfig | None = None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    output_config: CompressionConfig | None = None,
    share_output: bool = False,
) -> torch.Tensor:
    """``act(F.linear(x, weight, bias))`` whose saved input is quantized with ``config`` (plain PyTorch
    when None).

    ``activation``: None, "relu", "leaky_relu" (with ``negative_slope``), "tanh" or "sigmoid"; the fused
    activation saves what `compressed_relu` / `compressed_leaky_relu` / `compressed_tanh` /
    `compressed_sigmoid` would (a 1-bit mask, or for tanh / sigmoid `output_activation_saved`'s choice).
    ``output_config``: how tanh's / sigmoid's saved value is stored (default ``config``).
    ``share_output``: tanh / sigmoid keep their output itself, not its square, at every width, so that a
    later op keeping the output at ``output_config`` (a scoring head) shares the packed copy; their own
    gradient then has the second-order bias of `tinykg.nn.activation`.
    """
    _check_activation(activation)
    if not compression_active(config, x, weight, bias):
        return _plain_activation(F.linear(x, weight, bias), activation, negative_slope)
    if output_config is None:
        output_config = config
    return _CompressedLinearFunction.apply(
        x, weight, bias, config, activation, float(negative_slope), output_config, bool(share_output))


class CompressedLinear(nn.Linear):
    """Drop-in ``nn.Linear`` (same parameters and state-dict keys), with an optional fused activation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: CompressionConfig | None = None,
        activation: str | None = None,
        negative_slope: float = 0.01,
        **kw,
    ):
        super().__init__(in_features, out_features, bias=bias, **kw)
        _check_activation(activation)
        self.config = config
        self.activation, self.negative_slope = activation, negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return compressed_linear(
            x, self.weight, self.bias, self.config if self.training else None, self.activation, self.negative_slope
        )

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation else ""
        return f"{super().extra_repr()}{act}, config={self.config}"
