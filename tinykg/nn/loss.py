"""The BPR loss as one op: the score products, softplus and L2 term of a top-K model's batch in one node.

    loss = mean_b softplus(<u_b, n_b> - <u_b, p_b>) + l2_weight * (||u||^2 + ||p||^2 + ||n||^2) / (2 B)

With u, p, n (B, D) the batch's user, positive and negative vectors. As a composition of compressed
products (two dots and three squares) it was five autograd nodes whose backwards dequantized u four
times, p and n three times each; this op keeps one packed copy of each, dequantizes each once, and keeps
only sigmoid(<u, n> - <u, p>) (B,) exactly. Its gradients are linear in the packed copies, so they are
unbiased:

    s = g sigmoid(z) / B,   c = g l2_weight / B,   z = <u, n> - <u, p>
    du = s (n - p) + c u,   dp = -s u + c p,   dn = s u + c n
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ._saved import as_dtype, compression_active, first_order, load, maybe_quantize, save


def _score_gap(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """z = <u, n> - <u, p> (B,), in the order the plain composition computes it."""
    return (user * neg).sum(-1) - (user * pos).sum(-1)


def _bpr_value(z: torch.Tensor, user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, l2_weight: float) -> torch.Tensor:
    """The loss from z, the L2 term (three passes over (B, D)) only when it is weighted: the same operations
    with and without compression, so that the compressed forward gives the plain loss to the last bit."""
    loss = F.softplus(z).mean()
    if not l2_weight:
        return loss
    squares = (user * user).sum() + (pos * pos).sum() + (neg * neg).sum()
    return loss + l2_weight * squares / (2 * user.shape[0])


class _BPRLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, user, pos, neg, l2_weight, config):
        # user, pos, neg: (B, D) -> scalar
        z = _score_gap(user, pos, neg)
        ctx.batch, ctx.l2_weight = user.shape[0], l2_weight
        save(ctx, maybe_quantize(user, config), maybe_quantize(pos, config), maybe_quantize(neg, config),
             torch.sigmoid(z))
        return _bpr_value(z, user, pos, neg, l2_weight)

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        user, pos, neg, sig = load(ctx)
        dtype, need = grad_out.dtype, ctx.needs_input_grad
        user, pos, neg = as_dtype(user, dtype), as_dtype(pos, dtype), as_dtype(neg, dtype)
        s = (as_dtype(sig, dtype) * (grad_out / ctx.batch)).unsqueeze(-1)  # (B, 1)
        c = grad_out * (ctx.l2_weight / ctx.batch)  # () : the L2 term's factor
        l2 = bool(ctx.l2_weight)
        grad_user = grad_pos = grad_neg = None
        if need[0]:
            grad_user = s * (neg - pos)
            if l2:
                grad_user = grad_user.add_(c * user)
        if need[1] or need[2]:
            su = s * user  # (B, D)
            if need[1]:
                grad_pos = c * pos - su if l2 else -su
            if need[2]:
                grad_neg = su.add_(c * neg) if l2 else su
        return grad_user, grad_pos, grad_neg, None, None


def compressed_bpr_loss(
    user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, l2_weight: float = 0.0,
    config: CompressionConfig | None = None,
) -> torch.Tensor:
    """BPR loss of (B, D) user, positive and negative vectors with the batch-embedding L2 term (module
    docstring), keeping one packed copy of each vector. Without compression: the plain PyTorch
    composition (the fp32 baseline), which computes the same value."""
    if user.dim() != 2 or pos.shape != user.shape or neg.shape != user.shape:
        raise ValueError(f"expected three (B, D) tensors of one shape, got {tuple(user.shape)}, "
                         f"{tuple(pos.shape)} and {tuple(neg.shape)}")
    if not compression_active(config, user, pos, neg):
        return _bpr_value(_score_gap(user, pos, neg), user, pos, neg, l2_weight)
    return _BPRLossFunction.apply(user, pos, neg, float(l2_weight), config)


class CompressedBPRLoss(nn.Module):
    def __init__(self, l2_weight: float = 0.0, config: CompressionConfig | None = None):
        super().__init__()
        self.l2_weight, self.config = l2_weight, config

    def forward(self, user, pos, neg):
        return compressed_bpr_loss(user, pos, neg, self.l2_weight, self.config if self.training else None)
