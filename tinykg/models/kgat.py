"""KGAT: Knowledge Graph Attention Network for Recommendation (Wang et al., KDD 2019).

Behaviour follows the authors' TF code (xiangwang1223/knowledge_graph_attention_network, ``alg_type=bi``).
The collaborative KG (`tinykg.data.ckg.build_ckg`): users and entities are nodes ``0..N-1`` (users first),
relation 0 = interact, KG relations shifted by 1, every relation with an inverse. Per epoch the training
loop alternates two phases:

(I) recommendation, over the whole CKG with the fixed edge weights ``pi`` (the attention):

    side        e_N^(l)   = sum_{(h, r, t)} pi(h, r, t) e_t^(l)                       (N, d_l)
    bi-inter.   e^(l+1)   = LeakyReLU(W1 (e + e_N) + b1) + LeakyReLU(W2 (e * e_N) + b2)  (slope 0.2, TF's)
                e^(l+1)   = dropout(e^(l+1), mess_dropout)
    output      e*        = [e^(0) || norm(e^(1)) || ... || norm(e^(L))]              (N, d + sum d_l)
    score       y(u, i)   = e*_u . e*_i
    loss        BPR + l2_weight * (||e*_u||^2 + ||e*_i||^2 + ||e*_j||^2) / (2B)

(II) knowledge graph, TransR on CKG triples (h, r, t) with a corrupted tail t':

    project     h_r = e_h W_r,  t_r = e_t W_r          (W_r: (d, k) per relation)
    score       f(h, r, t) = ||h_r + e_r - t_r||^2
    loss        mean softplus(f(h, r, t) - f(h, r, t')) + kg_l2_weight * (l2 of h_r, e_r, t_r, t'_r) / B

then the attention is recomputed for every edge, without gradient, from the raw embeddings and softmax-
normalised over the edges of each head (`update_attention`):

    pi(h, r, t) = (e_t W_r)^T tanh(e_h W_r + e_r),   pi <- softmax over {(h, r', t')} of pi

Before the first refresh ``pi`` is the per-relation normalised adjacency (``adj_type=si``). The original
initialises users and items from a pretrained BPR-MF (``pretrain=-1``); those files are not available, so
every embedding starts from Xavier initialisation here (expect more epochs than the original needs).

Memory layout with a `CompressionConfig` (what autograd keeps in phase I): the propagation over E edges
is a product with the attention as a CSR matrix, which the model caches (`KGAT.adjacency`): nothing is
kept for it, and the (E, d) messages never exist (`_propagate`). Each bi-interaction layer is one op
(`_bi_interaction`) keeping 2-bit copies of x and e_N and two 1-bit LeakyReLU masks; dropout keeps a 1-bit
mask; layer 0 reads the embedding table by reference. The loss gathers the batch's rows of each layer and
normalises only those (the L2 normalisation is per row): it keeps their quantized output and one norm
per row, never an (N, d_l) normalised layer. TransR's per-triple projection never gathers the (B, d, k)
matrices (`_RelationProjectFunction` keeps the triple and relation indices only).

Peak memory (what a step holds at once, beyond what it keeps): on the CPU the backward of the bi-
interaction, of the CSR product and of the normalisation run in row chunks (`tinykg.nn._chunks`), with
the packed copies dequantized a chunk at a time, and the rows gathered from every layer but the last give
sparse gradients, added into the dense one the next layer's backward makes; none of them forms a zero-
filled (N, d_l) gradient at the start of backward.

Legend: U users, I items, N = U + N_e nodes, E CKG edges, R CKG relations, d embedding dim, k TransR dim,
L layers, B batch.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig, checkpoint
from ..compress.gathered import scatter_index
from ..nn import (
    compressed_bpr_loss,
    compressed_dropout,
    compressed_embedding,
    compressed_linear,
    compressed_dot,
    compressed_mul,
    compressed_normalize,
)
from ..nn._chunks import joined, row_chunks, rows_of
from ..nn._saved import (
    BitMask, as_dtype, compression_active, first_order, load, loaded_rows, maybe_quantize, narrow_index, row_multiple, save,
)
from ..nn.activation import mask_grad
from .base import BPR_COLUMNS, check_batch, check_count, index_buffer, op_index, sparse_rows_grad
from .bprmf import TopKModel

# --------------------------------------------------------------------------------------------------------
# Private ops (candidates for tinykg.nn)
# --------------------------------------------------------------------------------------------------------


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, num_rows: int, num_cols: int) -> torch.Tensor:
    """Sparse CSR (num_rows, num_cols) of the edges (rows[e], cols[e], values[e]), ``rows`` sorted."""
    dtype = torch.int32 if rows.numel() < 2**31 else torch.int64  # int32 halves the index memory
    crow = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.bincount(rows.long(), minlength=num_rows).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow.to(dtype), cols.to(dtype), values, (num_rows, num_cols), check_invariants=False
        )


def _csr_mm(adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``adjacency @ x``: CSR (M, N) @ (N, D) -> (M, D), in row chunks on the CPU (`tinykg.nn._chunks`).

    PyTorch's CSR product fills a zero (M, D) tensor and returns a new one, so it holds two outputs at
    once; in chunks of rows, written into one output, it holds one and a chunk's two (measured: 2.0 ->
    1.08-1.17 outputs at M = 100,000, D = 64, chunks of 4,096-8,192 rows; where a chunk is a large part of
    M, less is saved: 1.83 at M = 20,000). Each row's sum runs over its nonzeros in the same order either
    way: the chunks give one piece's bits.
    """
    parts = row_chunks(adjacency.shape[0], x.shape[1], x)
    if len(parts) == 1:
        return torch.sparse.mm(adjacency, x)
    crow, col, values = adjacency.crow_indices(), adjacency.col_indices(), adjacency.values()
    bounds = crow[[part.start for part in parts] + [adjacency.shape[0]]].tolist()  # first nonzero of each chunk
    out = x.new_empty(adjacency.shape[0], x.shape[1])
    with warnings.catch_warnings():  # "sparse CSR support is in beta", as in `_csr`
        warnings.simplefilter("ignore", UserWarning)
        for i, part in enumerate(parts):
            first, last = bounds[i], bounds[i + 1]
            rows = torch.sparse_csr_tensor(
                crow[part.start : part.stop + 1] - first, col[first:last], values[first:last],
                (part.stop - part.start, adjacency.shape[1]), check_invariants=False,
            )
            out[part] = torch.sparse.mm(rows, x)
    return out


class _PropagateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, adjacency, adjacency_t):
        # x: (N, D); adjacency: constant CSR (N, N) pi[h, t]; adjacency_t: its transpose, also CSR -> (N, D)
        # The adjacency is graph structure the model caches (`KGAT.adjacency`), not an activation: it is
        # kept on ctx by reference and nothing of size D is saved.
        ctx.adjacency_t = adjacency_t
        return _csr_mm(adjacency, x)

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        return _csr_mm(ctx.adjacency_t, grad_out), None, None


def _propagate(x: torch.Tensor, adjacency: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``side[h] = sum_t pi(h, t) x[t]`` -> (N, D) with a constant adjacency (the attention is refreshed
    outside autograd), in fp32 and compressed training alike.

    A CSR matmul, as the original's ``tf.sparse_tensor_dense_matmul``: it never forms the (E, D) messages
    that gathering and scattering per edge (the previous implementation) created as a transient in forward
    and backward (the peak of a KGAT step: 742 MB at 2.9M edges and D = 64); measured 4x faster on CPU
    at that size (0.31 s vs 1.25 s per product, one thread). Backward multiplies by a prebuilt transposed
    CSR (2x faster than the CSC view ``adjacency.t()``).
    """
    return _PropagateFunction.apply(x, *adjacency)


def _add_transposed_product(grad_x: torch.Tensor, adjacency: torch.Tensor, grad_side: torch.Tensor, part: slice,
                            first: int, last: int) -> None:
    """``grad_x += A[part]^T grad_side`` for the rows ``part`` of the CSR ``adjacency`` (whose nonzeros are
    ``first:last``) and their gradient ``grad_side`` (len(part), d): each edge's message added at its column,
    in edge order, in slices of edges within one thread's chunk budget. (On a GPU, with
    ``TINYKG_DEVICE_CHUNK_ELEMENTS`` set, ``index_add_`` adds with atomics: the bits may vary between runs.)"""
    crow = adjacency.crow_indices()
    counts = crow[part.start + 1 : part.stop + 1] - crow[part.start : part.stop]
    rows = torch.arange(part.stop - part.start, dtype=torch.int32, device=counts.device)
    row_of_edge = torch.repeat_interleave(rows, counts, output_size=last - first)  # (last - first,) int32
    col, values = adjacency.col_indices()[first:last], adjacency.values()[first:last]
    for edges in row_chunks(last - first, grad_side.shape[1], grad_side, per_thread=False):
        edges = edges or slice(0, last - first)
        messages = grad_side.index_select(0, row_of_edge[edges]).mul_(values[edges].unsqueeze(1))  # (e, d)
        grad_x.index_add_(0, scatter_index(col[edges]), messages)


class _BiInteractionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, side, w1, b1, w2, b2, slope, config, adjacency):
        # x, side: (N, d); w1, w2: (d', d); b1, b2: (d',) -> (N, d')
        # adjacency: None, or the constant CSR pair (A, A^T) of `KGAT.adjacency`, and then side is None and
        # computed here as A x (`_propagate` inside the op, so that its gradient A^T g_side is added into
        # x's gradient chunk by chunk: apart, g_side and A^T g_side were two more (N, d) tensors beside x's
        # gradient and grad_out at the peak of a large KGAT step).
        # Only x and e_N are kept (quantized; layer 0's x is the embedding table, kept by reference): the
        # backward rebuilds x + e_N and x * e_N from the two copies. Each copy is unbiased and their
        # rounding noise is independent, so the sum and the product are unbiased too.
        if adjacency is not None:
            side = _csr_mm(adjacency[0], x)
        ctx.adjacency = adjacency
        x_saved, side_saved = maybe_quantize(x, config), maybe_quantize(side, config)
        num_rows, d_out = x.shape[0], w1.shape[0]
        # Row chunks on the CPU (`tinykg.nn._chunks`): x + e_N, x * e_N and the two (N, d') pre-activations
        # exist a chunk at a time (in one piece they were a large step's forward peak, beside x and e_N);
        # each chunk starts on a whole byte of the masks, which are joined from the chunks' bits.
        # The same chunks whatever the thread count: a matrix product's bits may depend on its row count.
        parts = row_chunks(num_rows, max(x.shape[1], d_out), x, per_thread=False,
                           multiple=BitMask.whole_bytes(d_out))
        out = x.new_empty(num_rows, d_out) if len(parts) > 1 else None
        bits1, bits2 = [], []
        for part in parts:
            x_part, side_part = rows_of(x, part), rows_of(side, part)
            summed = F.linear(x_part + side_part, w1, b1)  # (n, d')
            product = F.linear(x_part * side_part, w2, b2)  # (n, d')
            bits1.append(BitMask.greater(summed).bits)
            bits2.append(BitMask.greater(product).bits)
            result = F.leaky_relu_(summed, slope).add_(F.leaky_relu_(product, slope))
            if out is None:
                out = result
            else:
                out[part] = result
        shape = torch.Size((num_rows, d_out))
        masks = BitMask(joined(bits1), shape), BitMask(joined(bits2), shape)
        ctx.slope = slope
        save(ctx, x_saved, side_saved, w1, w2, *masks)
        return out

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        x, side, w1, w2, positive1, positive2 = load(ctx, packed=True)  # large x, e_N stay packed
        need = ctx.needs_input_grad
        dtype, (num_rows, d), d_out = grad_out.dtype, x.shape, grad_out.shape[-1]
        w1, w2 = as_dtype(w1, dtype), as_dtype(w2, dtype)
        # This backward sets the peak memory of a large KGAT step (1.3 GB per (N, d) tensor at 10M
        # triples). In one piece it held x, e_N, the two (N, d) products with W1 and W2 and a gradient at
        # once besides grad_out; in row chunks (`tinykg.nn._chunks`, the same ones whatever the thread
        # count, as the weights' gradients are sums over them) it holds grad_out and the two gradients it
        # returns, and x, e_N are dequantized a chunk at a time. One piece runs the same operations in the
        # same order as the chunks, with the last temporary updated in place.
        parts = row_chunks(num_rows, max(d, d_out), grad_out, per_thread=False,
                           multiple=row_multiple(x, side, positive1, positive2))
        chunked = len(parts) > 1
        adjacency = ctx.adjacency
        # With the adjacency inside the op, side's gradient feeds x's: A^T g_side, added into x's gradient
        # (in chunks: by edge, after a zero start, since a chunk's edges reach any row).
        need_side = need[1] or (adjacency is not None and need[0])
        scatter = adjacency is not None and need[0] and chunked
        if scatter:
            grad_x = grad_out.new_zeros(num_rows, d)
            bounds = adjacency[0].crow_indices()[[part.start for part in parts] + [num_rows]].tolist()
        else:
            grad_x = grad_out.new_empty(num_rows, d) if need[0] and chunked else None
        grad_side = grad_out.new_empty(num_rows, d) if need_side and chunked and not scatter else None
        sums = [None, None, None, None]  # W1, b1, W2, b2: summed over the chunks

        def add(slot: int, value: torch.Tensor) -> None:
            sums[slot] = value if sums[slot] is None else sums[slot].add_(value)

        for i, part in enumerate(parts):
            x_part, side_part = loaded_rows(x, part, dtype), loaded_rows(side, part, dtype)
            grad_part = rows_of(grad_out, part)
            g1 = mask_grad(positive1.rows(part), grad_part, ctx.slope)  # (n, d')
            if need[2]:
                add(0, g1.t() @ (x_part + side_part))
            if need[3]:
                add(1, g1.sum(0))
            grad_in = g1 @ w1  # (n, d): gradient of x + e_N, shared by both
            del g1
            g2 = mask_grad(positive2.rows(part), grad_part, ctx.slope)
            if need[4]:
                add(2, g2.t() @ (x_part * side_part))
            if need[5]:
                add(3, g2.sum(0))
            grad_product = g2 @ w2  # (n, d): gradient of x * e_N
            del g2
            if need[0]:
                if scatter:
                    grad_x[part].addcmul_(grad_product, side_part).add_(grad_in)
                elif chunked:
                    torch.addcmul(grad_in, grad_product, side_part, out=grad_x[part])
                else:
                    grad_x = torch.addcmul(grad_in, grad_product, side_part)
            if need_side:
                if scatter:
                    _add_transposed_product(grad_x, adjacency[0], grad_in.addcmul_(grad_product, x_part), part,
                                            bounds[i], bounds[i + 1])
                elif chunked:
                    torch.addcmul(grad_in, grad_product, x_part, out=grad_side[part])
                else:
                    grad_side = grad_in.addcmul_(grad_product, x_part)
        if adjacency is not None and need[0] and not scatter:
            grad_x = grad_x.add_(_csr_mm(adjacency[1], grad_side))  # one piece: A^T g_side, as `_propagate`
            grad_side = None
        return grad_x, grad_side if need[1] else None, *sums, None, None, None


def _bi_interaction(x, side, w1, b1, w2, b2, slope: float, config: CompressionConfig | None,
                    adjacency: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """KGAT's bi-interaction aggregator LeakyReLU(W1 (x + e_N) + b1) + LeakyReLU(W2 (x * e_N) + b2), (N, d'),
    of x and its neighbourhood e_N: ``side``, or with ``adjacency`` (the pair of `KGAT.adjacency`, and side
    None) A x (`_propagate`).

    Compressed, one op keeping 2-bit x and e_N and two 1-bit masks: the composition of compressed linears
    and a compressed product kept x + e_N, x, e_N and x * e_N (twice the codes, twice the quantize calls).
    Where its backward runs in row chunks it also forms A x, and adds A^T g_side into x's gradient chunk by
    chunk. Without compression: the plain PyTorch composition (the fp32 baseline).
    """
    if (side is None) == (adjacency is None):
        raise ValueError("give the neighbourhood side or the adjacency to form it, not both")
    compressed = compression_active(config, x, side, w1, w2)
    # A x inside the op only where its backward runs in chunks (the CPU, a large graph): in one piece it
    # would hold A^T g_side beside g_side, x's gradient and grad_out, one (N, d) more than `_propagate`.
    if adjacency is not None and not (compressed and len(row_chunks(x.shape[0], max(x.shape[1], w1.shape[0]), x,
                                                                    per_thread=False)) > 1):
        side, adjacency = _propagate(x, adjacency), None  # (N, d)
    if not compressed:
        summed = compressed_linear(x + side, w1, b1, None, "leaky_relu", slope)
        product = compressed_linear(compressed_mul(x, side, None), w2, b2, None, "leaky_relu", slope)
        return summed + product
    return _BiInteractionFunction.apply(x, side, w1, b1, w2, b2, float(slope), config, adjacency)


def _project_grouped(x: torch.Tensor, rel_type: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``out[b] = x[b] @ projection[rel_type[b]]``: (B, d), (B,), (R, d, k) -> (B, k).

    Rows are grouped by relation (one matmul per relation present), so the (B, d, k) gathered matrices
    the original builds never exist. Differentiable with plain autograd.
    """
    rel_type = rel_type.long()
    order = torch.argsort(rel_type)
    counts = torch.bincount(rel_type, minlength=projection.shape[0]).tolist()
    x_sorted = x.index_select(0, order)  # (B, d)
    pieces, start = [], 0
    for relation, count in enumerate(counts):
        if count:
            pieces.append(x_sorted[start : start + count] @ projection[relation])  # (count, k)
            start += count
    if not pieces:
        return x.new_zeros(0, projection.shape[2])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return torch.cat(pieces).index_select(0, inverse)


class _RelationProjectFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, index, rel_type, projection):
        # table: (N, d) parameter; index, rel_type: (B,); projection: (R, d, k) parameter -> (B, k)
        out = _project_grouped(table.index_select(0, index.long()), rel_type, projection)
        # Both operands are parameters (kept by reference); only the narrowed indices are new.
        save(ctx, narrow_index(index, table.shape[0]), narrow_index(rel_type, projection.shape[0]), table, projection)
        return out

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        index, rel_type, table, projection = load(ctx)
        index, rel_type = index.long(), rel_type.long()
        order = torch.argsort(rel_type)
        counts = torch.bincount(rel_type, minlength=projection.shape[0]).tolist()
        g_sorted = grad_out.index_select(0, order)  # (B, k)
        index_sorted = index.index_select(0, order)
        need_table, need_projection = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        x_sorted = table.index_select(0, index_sorted) if need_projection else None  # (B, d)
        grad_projection = torch.zeros_like(projection) if need_projection else None
        grad_x_pieces, start = [], 0
        for relation, count in enumerate(counts):
            if not count:
                continue
            g = g_sorted[start : start + count]  # (count, k)
            if need_table:
                grad_x_pieces.append(g @ projection[relation].t())  # (count, d)
            if need_projection:
                grad_projection[relation] = x_sorted[start : start + count].t() @ g  # (d, k)
            start += count
        grad_table = None
        if need_table:
            grad_table = torch.zeros_like(table)
            if grad_x_pieces:
                grad_table.index_add_(0, index_sorted, torch.cat(grad_x_pieces))
        return grad_table, None, None, grad_projection


def _relation_project(
    table: torch.Tensor,
    index: torch.Tensor,
    rel_type: torch.Tensor,
    projection: torch.Tensor,
    config: CompressionConfig | None,
) -> torch.Tensor:
    """``table[index[b]] @ projection[rel_type[b]]`` -> (B, k), saving only the narrowed indices when
    compressing (the table and the projections are parameters)."""
    if not compression_active(config, table, projection):
        return _project_grouped(table.index_select(0, index.long()), rel_type, projection)
    return _RelationProjectFunction.apply(table, index, rel_type, projection)


@torch.no_grad()
def segment_softmax(scores: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``scores`` (E,) over the entries sharing a ``segment`` id (E,) -> (E,); no gradient
    (KGAT's attention is refreshed outside autograd)."""
    segment = segment.long()
    maximum = scores.new_full((num_segments,), -math.inf).scatter_reduce_(0, segment, scores, "amax")
    exp = torch.exp(scores - maximum.index_select(0, segment))
    total = scores.new_zeros(num_segments).index_add_(0, segment, exp)
    return exp / total.index_select(0, segment)


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------


class KGAT(TopKModel):
    """KGAT with the bi-interaction aggregator.

    Args:
        num_users, num_items, num_entities: sizes; nodes are users ``0..U-1`` then entities, item ``i`` is
            node ``U + i`` (``num_items <= num_entities``).
        num_relations: CKG relations R (interact + KG relations, with inverses).
        head_index, rel_type, tail_index: (E,) CKG edges (node ids, relation ids); stored sorted by head
            (stable), the order `tinykg.data.ckg.build_ckg` gives them in.
        edge_weight: (E,) initial propagation weights (the per-relation normalised adjacency).
        embedding_dim: d. layer_sizes: output size of each propagation layer (L = len(layer_sizes)).
        kge_dim: TransR relation space k. mess_dropout: message dropout rate, one per layer or one for all.
        l2_weight: weight of the batch L2 term of the BPR loss (``regs[0]``); kg_l2_weight: of TransR's
            (``regs[1]``). negative_slope: LeakyReLU slope (TF's default 0.2).
        head_bits: minimum bits of the per-batch activations (BPR scoring head, TransR batch), see
            `tinykg.models.base.head_config`; None = the compression config's bits everywhere.
        compression: how saved activations are stored in training; None = plain fp32.
        checkpoint_layers: recompute each propagation layer in backward instead of keeping its
            activations (activation checkpointing, the alternative to compression; see `propagate`).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_entities: int,
        num_relations: int,
        head_index,
        rel_type,
        tail_index,
        edge_weight,
        embedding_dim: int = 64,
        layer_sizes: Sequence[int] = (64, 32, 16),
        kge_dim: int = 64,
        mess_dropout: float | Sequence[float] = 0.1,
        l2_weight: float = 1e-5,
        kg_l2_weight: float = 1e-5,
        negative_slope: float = 0.2,
        head_bits: int | None = 8,
        compression: CompressionConfig | None = None,
        checkpoint_layers: bool = False,
    ) -> None:
        super().__init__(compression, head_bits)
        self.checkpoint_layers = bool(checkpoint_layers)
        self.num_users = check_count("num_users", num_users)
        self.num_items = check_count("num_items", num_items)
        self.num_entities = check_count("num_entities", num_entities)
        if num_items > num_entities:
            raise ValueError(f"items must be entities: num_items={num_items} > num_entities={num_entities}")
        self.num_relations = check_count("num_relations", num_relations)
        self.embedding_dim = check_count("embedding_dim", embedding_dim)
        self.kge_dim = check_count("kge_dim", kge_dim)
        self.layer_sizes = tuple(check_count("layer size", size) for size in layer_sizes)
        if not self.layer_sizes:
            raise ValueError("layer_sizes must hold at least one layer")
        num_layers = len(self.layer_sizes)
        if isinstance(mess_dropout, (int, float)):
            rates = [float(mess_dropout)] * num_layers
        else:
            rates = [float(p) for p in mess_dropout]
        if len(rates) != num_layers or not all(0.0 <= p < 1.0 for p in rates):
            raise ValueError(f"mess_dropout must be one rate in [0, 1) or {num_layers} of them, got {mess_dropout!r}")
        self.mess_dropout = tuple(rates)
        self.l2_weight, self.kg_l2_weight = float(l2_weight), float(kg_l2_weight)
        self.negative_slope = float(negative_slope)

        num_nodes = self.num_nodes
        head = index_buffer(head_index, num_nodes)
        tail = index_buffer(tail_index, num_nodes)
        rel = index_buffer(rel_type, num_relations)
        weight = torch.as_tensor(edge_weight, dtype=torch.float32)
        if not (head.shape == tail.shape == rel.shape == weight.shape) or head.dim() != 1:
            raise ValueError("head_index, rel_type, tail_index and edge_weight must be 1-D of one length")
        if head.numel() > 1 and bool((head[1:] < head[:-1]).any()):
            # Propagation is a CSR product, whose rows must come in order (build_ckg's edges already do).
            order = torch.argsort(head, stable=True)
            head, rel, tail, weight = head[order], rel[order], tail[order], weight[order]
        self.register_buffer("head_index", head)  # (E,) sorted
        self.register_buffer("rel_type", rel)  # (E,)
        self.register_buffer("tail_index", tail)  # (E,)
        self.register_buffer("attention", weight.clone().contiguous())  # (E,) pi, refreshed by update_attention

        d, k = embedding_dim, kge_dim
        self.node_embedding = nn.Parameter(torch.empty(num_nodes, d))
        self.relation_embedding = nn.Parameter(torch.empty(num_relations, k))
        self.relation_projection = nn.Parameter(torch.empty(num_relations, d, k))
        sizes = (d, *self.layer_sizes)
        self.gc_weights = nn.ParameterList(nn.Parameter(torch.empty(sizes[i + 1], sizes[i])) for i in range(num_layers))
        self.gc_biases = nn.ParameterList(nn.Parameter(torch.empty(sizes[i + 1])) for i in range(num_layers))
        self.bi_weights = nn.ParameterList(nn.Parameter(torch.empty(sizes[i + 1], sizes[i])) for i in range(num_layers))
        self.bi_biases = nn.ParameterList(nn.Parameter(torch.empty(sizes[i + 1])) for i in range(num_layers))
        self.reset_parameters()

    @classmethod
    def from_ckg(cls, ckg, num_items: int, **kwargs) -> "KGAT":
        """KGAT over a `tinykg.data.ckg.CollaborativeGraph`."""
        return cls(
            ckg.num_users, num_items, ckg.num_entities, ckg.num_relations,
            ckg.head_index, ckg.rel_type, ckg.tail_index, ckg.edge_weight, **kwargs,
        )

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_entities

    @property
    def output_dim(self) -> int:
        return self.embedding_dim + sum(self.layer_sizes)

    def reset_parameters(self) -> None:
        """TF's Xavier-uniform initializers: user and entity tables separately, biases as (1, out) matrices,
        the (R, d, k) projections with TF's fans (d R, k R)."""
        nn.init.xavier_uniform_(self.node_embedding.data[: self.num_users])
        nn.init.xavier_uniform_(self.node_embedding.data[self.num_users :])
        nn.init.xavier_uniform_(self.relation_embedding)
        bound = math.sqrt(6.0 / ((self.embedding_dim + self.kge_dim) * self.num_relations))
        nn.init.uniform_(self.relation_projection, -bound, bound)
        for weights, biases in ((self.gc_weights, self.gc_biases), (self.bi_weights, self.bi_biases)):
            for weight, bias in zip(weights, biases):
                nn.init.xavier_uniform_(weight)
                nn.init.xavier_uniform_(bias.data.view(1, -1))

    # -- phase I: propagation and BPR ------------------------------------------------------------------

    def __getstate__(self) -> dict:
        # The CSR cache is derived state, rebuilt on first use: copies and pickles leave it out (deepcopy
        # cannot copy a sparse CSR tensor).
        state = super().__getstate__().copy()
        state.pop("_adjacency_cache", None)
        return state

    def adjacency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention as a CSR matrix pi[h, t] (N, N) and its transpose, also CSR.

        Built on first use and again whenever the edges change (their version counters, e.g. after loading
        a state dict) or move to another device; a new attention (`update_attention`) is written into the
        same matrices, which a step captured in a CUDA graph holds (a rebuild after a capture would leave
        the graph reading freed tensors: capture again). Not a buffer: it
        is derived state, never saved. Memory: 8 bytes per edge and direction (int32 column, fp32 value).
        """
        key = (self.attention.device, self.attention.data_ptr(), self.head_index._version, self.tail_index._version)
        cached = self.__dict__.get("_adjacency_cache")
        if cached is None or cached[0] != key:
            n = self.num_nodes
            forward = _csr(self.head_index, self.tail_index, self.attention, n, n)  # edges sorted by head
            order = self._tail_order()
            transpose = _csr(self.tail_index[order], self.head_index[order], self.attention[order], n, n)
            cached = [key, self.attention._version, (forward, transpose)]
            self.__dict__["_adjacency_cache"] = cached
        elif cached[1] != self.attention._version:
            # New attention on the same edges: written into the matrices in place, so that a step captured
            # in a CUDA graph (`tinykg.train.graphed`), which holds these tensors, reads it too.
            forward, transpose = cached[2]
            if forward.values().data_ptr() != self.attention.data_ptr():
                forward.values().copy_(self.attention)
            transpose.values().copy_(self.attention[self._tail_order()])
            cached[1] = self.attention._version
        return cached[2]

    def _tail_order(self) -> torch.Tensor:
        """The edges in the transposed matrix's order: by tail, heads in order within a tail."""
        return torch.argsort(self.tail_index, stable=True)

    def propagate_layer(self, layer: int, x: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One bi-interaction layer: x (N, d_l) -> (the next x (N, d_l+1), its row-L2-normalised copy, or
        None without ``normalize``)."""
        config = self.active_config
        x = _bi_interaction(
            x, None, self.gc_weights[layer], self.gc_biases[layer], self.bi_weights[layer], self.bi_biases[layer],
            self.negative_slope, config, adjacency=self.adjacency(),
        )  # (N, d_l+1)
        x = compressed_dropout(x, self.mess_dropout[layer], self.training, config)
        return x, compressed_normalize(x, -1, 1e-12, config) if normalize else None

    def propagate_layers(self) -> list[torch.Tensor]:
        """Every layer's representation of all nodes: [e^(0) (N, d), norm(e^(1)) (N, d_1), ...].

        With ``checkpoint_layers`` (training only), each layer is an activation checkpoint: its input is
        kept, its intermediates are recomputed in backward (`tinykg.compress.checkpoint`)."""
        x = self.node_embedding  # (N, d)
        outputs = [x]
        for layer in range(len(self.layer_sizes)):
            x, normalized = self._layer(layer, x, normalize=True)
            outputs.append(normalized)
        return outputs

    def _layer(self, layer: int, x: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.checkpoint_layers and self.training:
            return checkpoint(self.propagate_layer, layer, x, normalize)
        return self.propagate_layer(layer, x, normalize)

    def batch_rows(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The rows ``index`` (B',) of every layer's representation: [e^(0)[index] (B', d),
        norm(e^(1))[index] (B', d_1), ...], the rows of `propagate_layers` without its (N, d_l) tensors.

        Each layer's rows are gathered as soon as the layer is computed, and then normalised (the
        normalisation is per row): only the current layer's (N, d_l) tensors exist at a time, and no
        normalised (N, d_l) layer is formed or kept for backward. The rows of a layer the next one reads
        (and of the embedding table, when there is a layer) get their gradient as a sparse tensor where
        that is the smaller (B' rows well below N), added
        into the dense gradient that layer gets anyway, where a zero-filled (N, d_l) one per layer would be
        made at the start of backward and held until autograd reached that layer (the original's TF gather
        gives sparse IndexedSlices too). The last layer's gradient is these rows only: dense, for the ops
        before it.
        """
        config = self.active_config
        num_layers = len(self.layer_sizes)

        x = self.node_embedding  # (N, d)
        # sparse_rows_grad: not on a graph of a few batches' nodes
        rows = [compressed_embedding(index, x, config, sparse_grad=sparse_rows_grad(index.numel(), x, num_layers > 0))]
        for layer in range(num_layers):
            x, _ = self._layer(layer, x, normalize=False)  # (N, d_l+1)
            read_again = layer < num_layers - 1
            looked_up = compressed_embedding(index, x, config, sparse_grad=sparse_rows_grad(index.numel(), x, read_again))
            rows.append(compressed_normalize(looked_up, -1, 1e-12, config))
        return rows

    def propagate(self) -> torch.Tensor:
        """Representations of all nodes, (N, d + sum(layer_sizes)): the concatenation of every layer."""
        return torch.cat(self.propagate_layers(), dim=1)

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        nodes = self.propagate()
        return nodes[: self.num_users], nodes[self.num_users : self.num_users + self.num_items]

    def loss(self, user_index: torch.Tensor, pos_index: torch.Tensor, neg_index: torch.Tensor) -> torch.Tensor:
        """BPR loss of phase I (B,) x 3 -> scalar.

        The batch's rows are gathered from each layer at once, users, positives and negatives together
        (`batch_rows`): neither the (N, d + sum d_l) concatenation of all nodes (3.4 GiB at 10M triples) nor
        a normalised (N, d_l) layer is formed.
        """
        config = self.active_config
        sizes = (self.num_users, self.num_items, self.num_items)
        batch, offset = check_batch(BPR_COLUMNS, user_index, pos_index, neg_index, sizes=sizes), self.num_users
        index = op_index(torch.cat([user_index, pos_index + offset, neg_index + offset]))  # (3B,)
        if compression_active(config, self.node_embedding):
            index = narrow_index(index, self.num_nodes)  # narrowed once: every layer's gather saves this tensor
        rows = torch.cat(self.batch_rows(index), dim=1)  # (3B, D'); the per-layer pieces are freed here
        user, pos, neg = rows.split(batch)  # (B, D') each
        return compressed_bpr_loss(user, pos, neg, self.l2_weight, self.active_head_config)

    # -- phase II: TransR and the attention refresh ----------------------------------------------------

    def kg_loss(
        self, head_index: torch.Tensor, rel_type: torch.Tensor, pos_tail: torch.Tensor, neg_tail: torch.Tensor
    ) -> torch.Tensor:
        """TransR loss on CKG triples (h, r, t) and corrupted tails t', all (B,) node/relation ids -> scalar.
        Every activation here is per batch: stored at ``head_bits`` at least."""
        config = self.active_head_config
        batch = head_index.shape[0]
        table, projection = self.node_embedding, self.relation_projection
        head = _relation_project(table, head_index, rel_type, projection, config)  # (B, k)
        pos = _relation_project(table, pos_tail, rel_type, projection, config)  # (B, k)
        neg = _relation_project(table, neg_tail, rel_type, projection, config)  # (B, k)
        relation = compressed_embedding(op_index(rel_type), self.relation_embedding, config)  # (B, k)
        translated = head + relation
        pos_diff, neg_diff = translated - pos, translated - neg
        pos_score = compressed_dot(pos_diff, pos_diff, config)  # (B,)
        neg_score = compressed_dot(neg_diff, neg_diff, config)  # (B,)
        kg_loss = F.softplus(pos_score - neg_score).mean()
        squares = sum(compressed_mul(v, v, config).sum() for v in (head, relation, pos, neg))
        return kg_loss + self.kg_l2_weight * squares / (2 * batch)

    @torch.no_grad()
    def attention_scores(self, chunk_size: int = 1 << 16) -> torch.Tensor:
        """Unnormalised pi(h, r, t) = (e_t W_r)^T tanh(e_h W_r + e_r) for every CKG edge, (E,)."""
        table, projection = self.node_embedding, self.relation_projection
        scores = table.new_empty(self.head_index.shape[0])
        for start in range(0, scores.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            rel = self.rel_type[rows].long()
            head = _project_grouped(table.index_select(0, self.head_index[rows].long()), rel, projection)  # (C, k)
            tail = _project_grouped(table.index_select(0, self.tail_index[rows].long()), rel, projection)  # (C, k)
            scores[rows] = (tail * torch.tanh(head + self.relation_embedding.index_select(0, rel))).sum(-1)
        return scores

    @torch.no_grad()
    def update_attention(self, chunk_size: int = 1 << 16) -> None:
        """Recompute the attention of every edge and softmax-normalise it over the edges of each head (and
        write it into the cached CSR matrices at once: a step replayed from a CUDA graph reads them without
        calling `adjacency`)."""
        scores = self.attention_scores(chunk_size)
        self.attention.copy_(segment_softmax(scores, self.head_index, self.num_nodes))
        if "_adjacency_cache" in self.__dict__:
            self.adjacency()
