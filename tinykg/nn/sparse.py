"""Sparse adjacency x dense features, the propagation step of full-graph KG recommenders.

Two forms: a constant ``torch.sparse`` matrix (``sparse_matmul``), and an edge list whose per-edge
weights may need gradients, e.g. KGAT's attention (``edge_aggregate``).
Shapes: N target rows, M source rows, E edges, D features.
"""

from __future__ import annotations

import torch
from torch import nn

from ..compress import CompressionConfig
from ..compress.gathered import scatter_index
from ._chunks import joined, row_chunks, rows_of
from ._saved import as_dtype, compression_active, first_order, gather_index, load, maybe_quantize, narrow_index, needs_graph, save


class _SparseMatmulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adjacency, x):
        # adjacency: sparse (N, M), constant; x: (M, D). Only the adjacency is needed for backward; it is
        # a graph buffer held anyway, so nothing of size D is saved.
        save(ctx, adjacency)
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        (adjacency,) = load(ctx)
        return None, torch.sparse.mm(adjacency.t(), grad_out)


def sparse_matmul(adjacency: torch.Tensor, x: torch.Tensor, config: CompressionConfig | None = None) -> torch.Tensor:
    """``adjacency @ x`` for a constant sparse adjacency (N, M) and dense x (M, D) -> (N, D).

    torch.sparse.mm saves x for the (unneeded) adjacency gradient; this op saves only the adjacency.
    """
    if adjacency.requires_grad:
        raise ValueError("sparse_matmul needs a constant adjacency; use edge_aggregate for learnable edge weights")
    if not compression_active(config, x):
        return torch.sparse.mm(adjacency, x)
    return _SparseMatmulFunction.apply(adjacency, x)


def _edge_sum(target_index, source_index, edge_weight, x, num_targets) -> torch.Tensor:
    """``out[target_index[e]] += edge_weight[e] * x[source_index[e]]`` -> (num_targets, D), no autograd node:
    the (E, D) messages formed in chunks of edges on the CPU (`tinykg.nn._chunks`) and freed at once."""
    targets, sources = gather_index(target_index), gather_index(source_index)
    out = x.new_zeros(num_targets, x.shape[1])
    for part in row_chunks(sources.shape[0], x.shape[1], x):
        messages = x.index_select(0, rows_of(sources, part))  # (E, D) or a chunk of it
        if edge_weight is not None:
            messages = messages * rows_of(edge_weight, part).unsqueeze(1)
        out.index_add_(0, scatter_index(rows_of(targets, part)), messages)
    return out


class _EdgeAggregateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, target_index, source_index, edge_weight, x, num_targets, config):
        # target_index, source_index: (E,); edge_weight: (E,) or None; x: (M, D) -> (N, D)
        out = _edge_sum(target_index, source_index, edge_weight, x, num_targets)
        ctx.num_sources = x.shape[0]
        ctx.has_weight = edge_weight is not None
        need_x = edge_weight is not None and edge_weight.requires_grad
        save(
            ctx,
            narrow_index(target_index, num_targets),
            narrow_index(source_index, x.shape[0]),
            maybe_quantize(x, config) if need_x else None,
            maybe_quantize(edge_weight, config) if edge_weight is not None and x.requires_grad else None,
        )
        return out

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        target_index, source_index, x, edge_weight = load(ctx)
        target_index, source_index = target_index.long(), source_index.long()
        dtype, num_edges = grad_out.dtype, target_index.shape[0]
        need_w, need_x = ctx.has_weight and ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        x = as_dtype(x, dtype) if need_w else None
        edge_weight = as_dtype(edge_weight, dtype) if need_x and edge_weight is not None else None
        grad_w_parts = []
        grad_x = grad_out.new_zeros(ctx.num_sources, grad_out.shape[1]) if need_x else None
        for part in row_chunks(num_edges, grad_out.shape[1], grad_out):
            sources = rows_of(source_index, part)
            g_edges = grad_out.index_select(0, rows_of(target_index, part))  # (E, D) or a chunk of it
            if need_w:
                grad_w_parts.append((g_edges * x.index_select(0, sources)).sum(1))
            if need_x:
                if edge_weight is not None:
                    g_edges = g_edges * rows_of(edge_weight, part).unsqueeze(1)
                grad_x.index_add_(0, sources, g_edges)
        grad_w = joined(grad_w_parts) if need_w else None
        return None, None, grad_w, grad_x, None, None


def edge_aggregate(
    target_index: torch.Tensor,
    source_index: torch.Tensor,
    edge_weight: torch.Tensor | None,
    x: torch.Tensor,
    num_targets: int,
    config: CompressionConfig | None = None,
) -> torch.Tensor:
    """``out[target_index[e]] += edge_weight[e] * x[source_index[e]]`` -> (num_targets, D).

    Saves narrowed edge indices, quantized ``x`` only when the edge weights need gradients, and quantized
    edge weights when ``x`` needs one. The (E, D) message tensor is never kept; on the CPU it is formed in
    chunks of edges (`tinykg.nn._chunks`), forward and backward.
    """
    if not compression_active(config, x, edge_weight):
        if not needs_graph(x, edge_weight):  # nothing to differentiate (evaluation): in chunks
            return _edge_sum(target_index, source_index, edge_weight, x, num_targets)
        messages = x.index_select(0, gather_index(source_index))
        if edge_weight is not None:
            messages = messages * edge_weight.unsqueeze(1)
        return x.new_zeros(num_targets, x.shape[1]).index_add_(0, scatter_index(target_index), messages)
    return _EdgeAggregateFunction.apply(target_index, source_index, edge_weight, x, num_targets, config)


class SparseMatmul(nn.Module):
    def __init__(self, config: CompressionConfig | None = None):
        super().__init__()
        self.config = config

    def forward(self, adjacency, x):
        return sparse_matmul(adjacency, x, self.config if self.training else None)


class EdgeAggregate(nn.Module):
    def __init__(self, config: CompressionConfig | None = None):
        super().__init__()
        self.config = config

    def forward(self, target_index, source_index, edge_weight, x, num_targets):
        return edge_aggregate(target_index, source_index, edge_weight, x, num_targets, self.config if self.training else None)
