"""Element-wise product and row L2-normalisation with quantized saved state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ._chunks import row_chunks
from ._saved import as_dtype, compression_active, first_order, load, loaded_rows, maybe_quantize, row_multiple, save


class _CompressedMulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, config, dot):
        # Each factor is needed only for the other's gradient. ``dot``: the product summed over the last
        # dimension (a score), in the same op: no separate sum node, no kept product.
        save(
            ctx,
            maybe_quantize(a, config) if b.requires_grad else None,
            maybe_quantize(b, config) if a.requires_grad else None,
        )
        product = a * b
        # The products' full shape, for the sum's gradient: read here, not with torch.broadcast_shapes in
        # backward, a Python function that took ~30 us, as long as the rest of KGCN's score backward.
        ctx.shapes, ctx.dot = (a.shape, b.shape, product.shape), dot
        return product.sum(-1) if dot else product

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        a_hat, b_hat = load(ctx)
        shape_a, shape_b, shape_product = ctx.shapes
        if ctx.dot:
            # (*) -> the products' full shape (a view): the sum's gradient, expanded once, so that a factor
            # that broadcasts along the summed dimension ((*, 1), a number) still gets one term per product.
            grad_out = grad_out.unsqueeze(-1).expand(shape_product)
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = (grad_out * as_dtype(b_hat, grad_out.dtype)).sum_to_size(shape_a)
        if ctx.needs_input_grad[1]:
            grad_b = (grad_out * as_dtype(a_hat, grad_out.dtype)).sum_to_size(shape_b)
        return grad_a, grad_b, None, None


def _as_tensors(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Python numbers as tensors beside the other factor (as ``a * b`` would treat them)."""
    if not isinstance(a, torch.Tensor):
        a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
    if not isinstance(b, torch.Tensor):
        b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    return a, b


def compressed_mul(a: torch.Tensor, b: torch.Tensor, config: CompressionConfig | None = None) -> torch.Tensor:
    """``a * b`` (broadcasting; either may be a bool or integer mask or a Python number) saving quantized
    floating factors."""
    a, b = _as_tensors(a, b)
    if not compression_active(config, a, b):
        return a * b
    return _CompressedMulFunction.apply(a, b, config, False)


def compressed_dot(a: torch.Tensor, b: torch.Tensor, config: CompressionConfig | None = None) -> torch.Tensor:
    """``(a * b).sum(-1)`` (broadcasting; a model's score, a bilinear logit) saving quantized factors:
    what `compressed_mul` followed by ``.sum(-1)`` saves and computes, in one autograd node."""
    a, b = _as_tensors(a, b)
    if not compression_active(config, a, b):
        return (a * b).sum(-1)
    return _CompressedMulFunction.apply(a, b, config, True)


class CompressedMul(nn.Module):
    def __init__(self, config: CompressionConfig | None = None):
        super().__init__()
        self.config = config

    def forward(self, a, b):
        return compressed_mul(a, b, self.config if self.training else None)


class CompressedDot(nn.Module):
    def __init__(self, config: CompressionConfig | None = None):
        super().__init__()
        self.config = config

    def forward(self, a, b):
        return compressed_dot(a, b, self.config if self.training else None)


class _CompressedNormalizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, eps, config):
        norm = x.norm(dim=dim, keepdim=True)  # (..., 1, ...): one value per row, kept exactly
        denom = norm.clamp_min(eps)
        y = x / denom
        ctx.dim, ctx.eps = dim, eps
        save(ctx, maybe_quantize(y, config, is_output=True), denom)
        return y

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        y, denom = load(ctx, packed=True)  # a large y stays packed
        dim = ctx.dim if ctx.dim >= 0 else ctx.dim + grad_out.dim()
        # Rows normalised along the last dim (KGAT's layers, (N, d)) go in row chunks (`tinykg.nn._chunks`)
        # with y dequantized a chunk at a time; any other layout in one piece. Each row is computed alone,
        # so the chunks give one piece's bits. In one piece this backward held y and three (N, d)
        # temporaries besides grad_out: one of a large KGAT step's peaks.
        parts = [None]
        if grad_out.dim() == 2 and dim == 1:
            parts = row_chunks(grad_out.shape[0], grad_out.shape[1], grad_out, multiple=row_multiple(y))
        if len(parts) == 1:
            return _normalize_grad(grad_out, loaded_rows(y, None, grad_out.dtype), denom, dim, ctx.eps), None, None, None
        grad = torch.empty_like(grad_out)
        for part in parts:
            _normalize_grad(grad_out[part], loaded_rows(y, part, grad_out.dtype), denom[part], dim, ctx.eps, out=grad[part])
        return grad, None, None, None


def _normalize_grad(grad_out, y, denom, dim: int, eps: float, out=None) -> torch.Tensor:
    # d(x/|x|) = (g - y <g, y>) / |x|; where the norm was clamped to eps, y = x / eps is linear in x.
    projected = grad_out - y * (grad_out * y).sum(dim, keepdim=True)
    return torch.div(torch.where(denom > eps, projected, grad_out), denom, out=out)


def compressed_normalize(
    x: torch.Tensor, dim: int = -1, eps: float = 1e-12, config: CompressionConfig | None = None
) -> torch.Tensor:
    """``F.normalize(x, p=2, dim=dim, eps=eps)`` saving the quantized output and the exact row norms."""
    if not compression_active(config, x):
        return F.normalize(x, p=2.0, dim=dim, eps=eps)
    return _CompressedNormalizeFunction.apply(x, dim, eps, config)


class CompressedNormalize(nn.Module):
    def __init__(self, dim: int = -1, eps: float = 1e-12, config: CompressionConfig | None = None):
        super().__init__()
        self.dim, self.eps, self.config = dim, eps, config

    def forward(self, x):
        return compressed_normalize(x, self.dim, self.eps, self.config if self.training else None)
