"""Softmax attention of a query over rows of a small key table picked by index (KGCN's user-relation
attention), as one autograd Function.

    w[b, m, :] = softmax_k( scale * <query[b], keys[index[b, m, k]]> )      b < B, m < M, k < K

The scores of every key are one (B, N) product (N keys: a relation table, tens of rows), and the picked
logits are gathered from it. Unlike composing linear -> gather -> softmax, nothing of the (B, M, K) logits
or of a (B * N)-row score table is kept: autograd holds the query (quantized, when the keys need a
gradient), the key table by reference (a parameter), the index narrowed to the key count (uint8 for up
to 256 keys, however large the batch) and the quantized weights. Quantization order (query, then
weights) is that of the unfused ops, so the numbers match them.

Legend: B queries (batch rows), d features, N keys, M groups per query, K candidates per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ._saved import as_dtype, compression_active, first_order, gather_index, keep_index, load, maybe_quantize, save


def _check_shapes(query: torch.Tensor, keys: torch.Tensor, index: torch.Tensor) -> None:
    if query.dim() != 2 or keys.dim() != 2 or query.shape[1] != keys.shape[1]:
        raise ValueError(f"query (B, d) and keys (N, d) must agree in d, got {tuple(query.shape)} and {tuple(keys.shape)}")
    if index.dim() != 3 or index.shape[0] != query.shape[0]:
        raise ValueError(f"index must be (B, M, K) with B = {query.shape[0]}, got {tuple(index.shape)}")


def _weights(query, keys, index, scale):
    # The picked logits come out of the flattened (B * N, 1) score table by F.embedding (int32 indices
    # allowed), not torch.gather, whose backward would keep the (B, N) scores and an int64 index: the plain
    # path is the fp32 baseline, so it keeps no more than it must.
    batch, num_keys = query.shape[0], keys.shape[0]
    scores = F.linear(query, keys) * scale  # (B, N)
    offsets = torch.arange(batch, device=index.device, dtype=torch.int32).view(batch, 1) * num_keys
    rows = offsets + gather_index(index.reshape(batch, -1))  # (B, M * K), int32 unless int64 was given
    logits = F.embedding(rows, scores.reshape(batch * num_keys, 1))  # (B, M * K, 1)
    return torch.softmax(logits.view(index.shape), -1)  # (B, M, K)


class _IndexedAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, keys, index, scale, config, query_config):
        ctx.scale, ctx.num_keys = scale, keys.shape[0]
        query_saved = maybe_quantize(query, query_config) if keys.requires_grad else None
        weights = _weights(query, keys, index, scale)  # (B, M, K)
        save(ctx, query_saved, keys, keep_index(index, keys.shape[0]), maybe_quantize(weights, config, is_output=True))
        return weights

    @staticmethod
    @first_order
    def backward(ctx, grad_w):
        query, keys, index, weights = load(ctx)
        weights = as_dtype(weights, grad_w.dtype)
        batch = grad_w.shape[0]
        grad_logits = weights * (grad_w - (grad_w * weights).sum(-1, keepdim=True))  # (B, M, K)
        # Logits that picked the same key add up into its score: (B, N).
        grad_scores = grad_w.new_zeros(batch, ctx.num_keys)
        grad_scores.scatter_add_(1, index.reshape(batch, -1).long(), grad_logits.reshape(batch, -1))
        grad_scores.mul_(ctx.scale)
        grad_q = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_q = grad_scores @ as_dtype(keys, grad_scores.dtype)  # (B, d)
        if ctx.needs_input_grad[1]:
            grad_k = grad_scores.t() @ as_dtype(query, grad_scores.dtype)  # (N, d)
        return grad_q, grad_k, None, None, None, None


def indexed_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    index: torch.Tensor,
    scale: float = 1.0,
    config: CompressionConfig | None = None,
    query_config: CompressionConfig | None = None,
) -> torch.Tensor:
    """Weights (B, M, K): softmax over k of ``scale * <query[b], keys[index[b, m, k]]>``.

    Args:
        query: (B, d). keys: (N, d), a small table (the (B, N) score product is formed).
        index: (B, M, K) integers in [0, N), any integer dtype.
        scale: multiplies the dot products (KGCN: 1 / d, a mean over the features).
        config: how saved activations are stored; None = plain PyTorch.
        query_config: how the saved query is stored (default ``config``): a model whose scoring head
            also saves the query keeps it at the head's bits, so that one packed copy serves both.
    """
    _check_shapes(query, keys, index)
    if not compression_active(config, query, keys):
        return _weights(query, keys, index, scale)
    if query_config is None:
        query_config = config
    return _IndexedAttentionFunction.apply(query, keys, index, float(scale), config, query_config)


class IndexedAttention(nn.Module):
    """`indexed_attention` as a module (compression only in training mode)."""

    def __init__(self, scale: float = 1.0, config: CompressionConfig | None = None):
        super().__init__()
        self.scale, self.config = float(scale), config

    def forward(self, query: torch.Tensor, keys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return indexed_attention(query, keys, index, self.scale, self.config if self.training else None)
