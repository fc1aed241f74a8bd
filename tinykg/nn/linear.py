"""Linear layer that keeps a quantized copy of its input for the weight gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ._saved import compression_active, load, maybe_quantize, save


class _CompressedLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, config):
        # x: (..., in), weight: (out, in), bias: (out,) or None
        ctx.has_bias = bias is not None
        save(ctx, maybe_quantize(x, config) if weight.requires_grad else None, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x_hat, weight = load(ctx)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight.to(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
            grad_w = g2.t() @ x_hat.reshape(-1, x_hat.shape[-1]).to(g2.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None


def compressed_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config: CompressionConfig | None = None
) -> torch.Tensor:
    """``F.linear`` whose saved input is quantized with ``config`` (plain ``F.linear`` when None)."""
    if not compression_active(config, x, weight, bias):
        return F.linear(x, weight, bias)
    return _CompressedLinearFunction.apply(x, weight, bias, config)


class CompressedLinear(nn.Linear):
    """Drop-in ``nn.Linear``; same parameters and state-dict keys."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, config: CompressionConfig | None = None, **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return compressed_linear(x, self.weight, self.bias, self.config if self.training else None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, config={self.config}"
