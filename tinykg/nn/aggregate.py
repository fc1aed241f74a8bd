"""Gathers and neighbour aggregation, the core of sampled-neighbourhood KG recommenders.

Shapes: N rows in the source table, D features, K neighbours per target, ``*`` any leading dims.
Index tensors saved for backward are narrowed to the smallest integer dtype that holds ``N - 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ..compress.gathered import scatter_index
from ._chunks import row_chunks, rows_of
from ._saved import as_dtype, compression_active, first_order, gather_index, gathered_rows, keep_index, load, mark_gathered, maybe_quantize, narrow_index, needs_graph, save

REDUCES = ("sum", "mean")


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")


class _EmbeddingFunction(torch.autograd.Function):
    # Saves one integer tensor, which the generic hook never compresses: plain save_for_backward, without
    # the per-call Python of `save` / `load` (a sampled model's small step embeds twice), unless the index
    # is itself a lookup in a held table (``kept``, RippleNet's memories), saved as that reference.
    @staticmethod
    def forward(ctx, index, weight, kept, sparse):  # index already narrowed (`compressed_embedding`)
        ctx.num_rows, ctx.kept, ctx.sparse = weight.shape[0], kept is not None, sparse
        if ctx.kept:
            save(ctx, kept)
        else:
            ctx.save_for_backward(index)
        return F.embedding(gather_index(index), weight)

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        (index,) = load(ctx) if ctx.kept else ctx.saved_tensors
        if ctx.sparse:
            return None, _sparse_lookup_grad(grad_out, index, ctx.num_rows), None, None
        return None, _lookup_grad(grad_out, index, ctx.num_rows), None, None


def _lookup_grad(grad_out: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The table's gradient of ``table[rows]``: grad_out (*rows.shape, D) -> (num_rows, D)."""
    # index_add_, not aten's embedding_dense_backward: measured 3.3x faster on CPU for 200k rows.
    grad_w = grad_out.new_zeros(num_rows, grad_out.shape[-1])
    # A strided gradient (a column slice of a concatenation) sends index_add_ down a 3x slower path:
    # (B, D) is cheap to copy.
    values = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
    grad_w.index_add_(0, scatter_index(rows.reshape(-1)), values)
    return grad_w


def _sparse_lookup_grad(grad_out: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The same gradient as a sparse COO tensor of the looked-up rows (uncoalesced: a repeated row is two
    entries, summed wherever it is added to a dense tensor), as ``F.embedding(..., sparse=True)`` gives."""
    d = grad_out.shape[-1]
    values = grad_out.reshape(-1, d).contiguous()
    return torch.sparse_coo_tensor(rows.reshape(1, -1).long(), values, (num_rows, d), check_invariants=False)


class _SparseGradLookup(torch.autograd.Function):
    # The plain (uncompressed) lookup with ``sparse_grad``: F.embedding(sparse=True)'s gradient, except
    # under grad mode (double backward, ``create_graph=True``), where it is dense and differentiable, since
    # autograd cannot add a sparse gradient to a dense one out of place (it adds them in place otherwise).
    @staticmethod
    def forward(ctx, index, weight):
        ctx.save_for_backward(index)
        ctx.num_rows = weight.shape[0]
        return F.embedding(index, weight)

    @staticmethod
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # recorded by autograd: differentiable in grad_out
            return None, _lookup_grad(grad_out, index, ctx.num_rows)
        return None, _sparse_lookup_grad(grad_out, index, ctx.num_rows)


def compressed_embedding(
    index: torch.Tensor, weight: torch.Tensor, config: CompressionConfig | None = None, *, sparse_grad: bool = False,
) -> torch.Tensor:
    """``weight[index]`` -> (*index.shape, D), saving only the narrowed index (F.embedding keeps int64).
    ``index`` may be any integer dtype (uint8/int16 included). Rows of a parameter table are marked
    (`mark_gathered`): the compressed ops that save them keep that same index and gather them again in
    backward instead of keeping a packed copy.

    ``sparse_grad``: the table's gradient is a sparse COO tensor of the looked-up rows, as with
    ``F.embedding(..., sparse=True)``, compressed or not. Meant for a table that also gets a dense
    gradient from elsewhere, such as a layer's output that the next layer reads (KGAT's layers): autograd
    adds the sparse rows into that gradient, and no zero-filled (N, D) one is made and held until then.
    A parameter whose only gradient is sparse needs an optimizer that takes sparse gradients (Adam does
    not). Under ``create_graph=True`` the uncompressed lookup's gradient is dense (the compressed ops give
    first-order gradients only)."""
    if not compression_active(config, weight):
        if sparse_grad and needs_graph(weight):
            return _SparseGradLookup.apply(gather_index(index), weight)
        return F.embedding(gather_index(index), weight)
    kept = gathered_rows(index)  # the index is itself a lookup in a held table: kept as that reference
    narrow = narrow_index(index, weight.shape[0])
    out = _EmbeddingFunction.apply(narrow, weight, kept, sparse_grad)
    return mark_gathered(out, weight, narrow if kept is None else index)


def batch_rows(index: torch.Tensor, rows_per_batch: int) -> torch.Tensor:
    """Rows of a (B * N, D) table for ``index`` (B, *) into each batch row's own N rows:
    ``b * N + index[b, ...]`` (int32 while it fits, as the gather ops take it)."""
    batch = index.shape[0]
    dtype = torch.int32 if batch * rows_per_batch <= torch.iinfo(torch.int32).max else torch.int64
    offsets = torch.arange(batch, device=index.device, dtype=dtype) * rows_per_batch
    return offsets.view(batch, *([1] * (index.dim() - 1))) + gather_index(index)


class _BatchedLookupFunction(torch.autograd.Function):
    # Saves the per-batch index (as `keep_index` keeps it: narrowed to N, or the reference it is), never
    # the (B, *) row index into the flattened table, which is rebuilt in backward.
    @staticmethod
    def forward(ctx, index, table):
        # index (B, *) in [0, N), table (B, N, D) -> (B, *, D)
        batch, n, d = table.shape
        ctx.n = n
        save(ctx, keep_index(index, n))
        return F.embedding(batch_rows(index, n), table.reshape(batch * n, d))

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        (index,) = load(ctx)
        batch, n = index.shape[0], ctx.n
        return None, _lookup_grad(grad_out, batch_rows(index, n), batch * n).view(batch, n, -1)


def batched_lookup(index: torch.Tensor, table: torch.Tensor, config: CompressionConfig | None = None) -> torch.Tensor:
    """``table[b, index[b, ...]]`` -> (*index.shape, D): a lookup in each batch row's own table, e.g.
    RippleNet's R_r^T v picked per memory from the (B, N_r, d) products of every relation.

    Args:
        index: (B, *) integers in [0, N), any integer dtype.
        table: (B, N, D).
        config: compressed path when given (in training): keeps the (B, *) index narrowed to N (or as the
            reference it is, `keep_index`) instead of the (B, *) rows of the flattened (B * N, D) table,
            which need int32 from 32,768 rows on. None = plain PyTorch.
    """
    if table.dim() != 3 or index.shape[0] != table.shape[0]:
        raise ValueError(f"batched_lookup takes a (B, N, D) table and a (B, ...) index, got {tuple(table.shape)} and {tuple(index.shape)}")
    if not compression_active(config, table):
        batch, n, d = table.shape
        return F.embedding(batch_rows(index, n), table.reshape(batch * n, d))
    return _BatchedLookupFunction.apply(index, table)


class BatchedLookup(nn.Module):
    """`batched_lookup` as a module (compression only in training mode)."""

    def __init__(self, config: CompressionConfig | None = None):
        super().__init__()
        self.config = config

    def forward(self, index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return batched_lookup(index, table, self.config if self.training else None)


class CompressedEmbedding(nn.Embedding):
    """Drop-in ``nn.Embedding`` (dense gradients) whose saved index is narrowed."""

    def __init__(self, num_embeddings: int, embedding_dim: int, config: CompressionConfig | None = None, **kw):
        super().__init__(num_embeddings, embedding_dim, **kw)
        self.config = config

    def forward(self, index):
        if self.padding_idx is not None or self.max_norm is not None or self.sparse:
            return super().forward(index)
        return compressed_embedding(index, self.weight, self.config if self.training else None)


class _WeightedSumFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, weights, scale, config):
        # values: (*, K, D), weights: (*, K) -> (*, D)
        ctx.scale = scale
        save(
            ctx,
            maybe_quantize(values, config) if weights.requires_grad else None,
            maybe_quantize(weights, config) if values.requires_grad else None,
        )
        return (values * weights.unsqueeze(-1)).sum(-2) * scale

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        values, weights = load(ctx)
        g = grad_out.unsqueeze(-2) * ctx.scale  # (*, 1, D)
        grad_v = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_v = g * as_dtype(weights, g.dtype).unsqueeze(-1)
        if ctx.needs_input_grad[1]:
            grad_w = (g * as_dtype(values, g.dtype)).sum(-1)
        return grad_v, grad_w, None, None


def weighted_sum(
    values: torch.Tensor, weights: torch.Tensor | None = None, reduce: str = "sum", config: CompressionConfig | None = None
) -> torch.Tensor:
    """Sum (or mean) over the neighbour axis of ``weights[..., k] * values[..., k, :]``.

    This is KGCN's attention-weighted neighbour vector (softmax weights, ``reduce="mean"``) and, with
    ``weights=None``, the plain sum/mean aggregator. values: (*, K, D), weights: (*, K) -> (*, D).
    """
    _check_reduce(reduce)
    scale = 1.0 / values.shape[-2] if reduce == "mean" else 1.0
    if weights is None:
        out = values.sum(-2)  # linear: saves nothing
        return out * scale if reduce == "mean" else out
    if not compression_active(config, values, weights):
        return (values * weights.unsqueeze(-1)).sum(-2) * scale
    return _WeightedSumFunction.apply(values, weights, scale, config)


def block_rows(block_index: torch.Tensor, block: int) -> torch.Tensor:
    """The rows ``block_index[..., None] * block + k``, k < block, of each selected block: (*,) -> (*, block),
    int32 or int64 (narrow indices are widened first, so the products cannot overflow)."""
    index = gather_index(block_index)
    return index.unsqueeze(-1) * block + torch.arange(block, device=index.device, dtype=index.dtype)


class _GatherAggregateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, index, weights, scale, config, block=None):
        # source: (N, D), index: (*, K) in [0, N), weights: (*, K) or None -> (*, D); with ``block``, index is
        # (*,) in [0, N / block) and the neighbours are its blocks' rows (`block_rows`, K = block)
        ctx.num_rows, ctx.scale, ctx.has_weights, ctx.block = source.shape[0], scale, weights is not None, block
        need_source = weights is not None and weights.requires_grad
        save(
            ctx,
            keep_index(index, source.shape[0] // block if block else source.shape[0]),
            maybe_quantize(source, config) if need_source else None,
            maybe_quantize(weights, config) if weights is not None and source.requires_grad else None,
        )
        rows = block_rows(index, block) if block else index
        return gather_reductions(source, rows, weights, scale)[0]

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        index, source, weights = load(ctx)
        if ctx.block:
            index = block_rows(index, ctx.block)  # narrow indices are widened a chunk at a time below
        g = grad_out * ctx.scale  # (*, D)
        grad_s = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_s = g.new_zeros(ctx.num_rows, g.shape[-1])
            add_gather_grad(grad_s, g, index, weights)
        if ctx.has_weights and ctx.needs_input_grad[2]:
            grad_w = gather_weights_grad(g, index, source)
        return grad_s, None, grad_w, None, None, None


def _neighbour_chunks(index, weights, g, d: int, like: torch.Tensor) -> tuple:
    """The row chunks (`row_chunks`) of an op over ``index`` (*, K) neighbours of D = ``d`` features, with
    ``index``, ``weights`` (*, K) and ``g`` (*, D) ready to be sliced by them: as they are for one piece (no
    views), else flattened to the leading rows B' ((B', K), (B', K), (B', D)), ``weights`` and ``g``
    expanded first where they broadcast against the index's rows (a (K,) weight vector)."""
    lead, k = index.shape[:-1], index.shape[-1]
    parts = row_chunks(lead.numel(), k * d, like)
    if len(parts) > 1:
        index = index.reshape(lead.numel(), k)
        weights = weights.expand(*lead, k).reshape(lead.numel(), k) if weights is not None else None
        g = g.expand(*lead, d).reshape(lead.numel(), d) if g is not None else None
    return parts, index, weights, g


def gather_reductions(
    source: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor | None = None,
    scale: float = 1.0,
    g: torch.Tensor | None = None,
    *,
    summed: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Two reductions of the gathered rows ``source[index]`` (*, K, D), with no autograd node:

    - ``summed``: ``sum_k weights[..., k] * source[index[..., k]] * scale`` (*, D) (weights None: all ones);
    - ``g`` (*, D) given: the dots ``<source[index[..., k]], g>`` (*, K), the weights' gradient of that sum.

    The gathered rows are formed once for both, in chunks of the leading rows on the CPU
    (`tinykg.nn._chunks`), and freed at once; each chunk's results are written into the outputs, so no
    list of pieces is joined at the end (that join held every (*, D) result twice). index: (*, K), any
    integer dtype; a narrow one is widened a chunk at a time.
    """
    lead, k, d = index.shape[:-1], index.shape[-1], source.shape[-1]
    parts, index, weights, g = _neighbour_chunks(index, weights if summed else None, g, d, source)
    chunked = len(parts) > 1
    total = dot = None
    for part in parts:
        # F.embedding (index_select) rather than source[index]: advanced indexing measured 7x slower on CPU.
        gathered = F.embedding(gather_index(rows_of(index, part)), source)  # (*, K, D) or a chunk of (B', K, D)
        if g is not None:
            dots = (gathered * rows_of(g, part).unsqueeze(-2)).sum(-1)
            if not chunked:
                dot = dots
            else:  # the output in the chunks' own (promoted) dtype
                dot = dots.new_empty(lead.numel(), k) if dot is None else dot
                dot[part] = dots
        if summed:
            if weights is not None:
                gathered = gathered * rows_of(weights, part).unsqueeze(-1)
            if not chunked:
                total = gathered.sum(-2) * scale
            else:
                total = gathered.new_empty(lead.numel(), d) if total is None else total
                torch.sum(gathered, -2, out=total[part]).mul_(scale)
    if chunked:
        total = total.view(*lead, d) if total is not None else None
        dot = dot.view(*lead, k) if dot is not None else None
    return total, dot


def add_gather_grad(grad_source: torch.Tensor, g: torch.Tensor, index: torch.Tensor, weights: torch.Tensor | None) -> None:
    """``grad_source[index[..., k]] += weights[..., k] * g`` in place: the source gradient of
    ``sum_k weights[..., k] * source[index[..., k]]`` given ``g`` (*, D), the gradient of that sum.
    index: (*, K), any integer dtype (widened to int64 a chunk at a time); weights: (*, K) or None
    (all ones); grad_source: (N, D). The (*, K, D) per-edge gradient is formed in chunks on the CPU
    (`tinykg.nn._chunks`)."""
    d = g.shape[-1]
    weights = as_dtype(weights, g.dtype) if weights is not None else None
    parts, index, weights, g = _neighbour_chunks(index, weights, g, d, g)
    for part in parts:
        rows = scatter_index(rows_of(index, part))
        per_edge = rows_of(g, part).unsqueeze(-2).expand(*rows.shape, d)  # (*, K, D) or a chunk of (B', K, D)
        if weights is not None:
            per_edge = per_edge * rows_of(weights, part).unsqueeze(-1)
        grad_source.index_add_(0, rows.reshape(-1), per_edge.reshape(-1, d))


def gather_weights_grad(g: torch.Tensor, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The weights' gradient of ``sum_k weights[..., k] * source[index[..., k]]`` given ``g`` (*, D):
    ``<source[index[..., k]], g>``, (*, K). index: any integer dtype."""
    return gather_reductions(as_dtype(source, g.dtype), index, g=g, summed=False)[1]


def gather_aggregate(
    source: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor | None = None,
    reduce: str = "sum",
    config: CompressionConfig | None = None,
) -> torch.Tensor:
    """``reduce_k weights[..., k] * source[index[..., k]]`` without keeping the gathered (*, K, D) tensor.

    Saves the narrowed index, a quantized ``source`` only when ``weights`` needs a gradient (a parameter
    table is kept by reference, costing nothing), and quantized ``weights`` when ``source`` needs one.
    """
    _check_reduce(reduce)
    scale = 1.0 / index.shape[-1] if reduce == "mean" else 1.0
    if not compression_active(config, source, weights):
        if not needs_graph(source, weights):  # nothing to differentiate (evaluation): in chunks
            return gather_reductions(source, index, weights, scale)[0]
        gathered = source[gather_index(index)]
        if weights is not None:
            gathered = gathered * weights.unsqueeze(-1)
        return gathered.sum(-2) * scale
    return _GatherAggregateFunction.apply(source, index, weights, scale, config)


def block_gather_aggregate(
    source: torch.Tensor,
    block_index: torch.Tensor,
    block: int,
    weights: torch.Tensor,
    config: CompressionConfig | None = None,
) -> torch.Tensor:
    """``sum_k weights[..., k] * source[block_index * block + k]``, k < block: (N, D), (*,), (*, block) -> (*, D).

    `gather_aggregate` over the ``block`` consecutive rows of each selected block, e.g. a vector times one
    of several stacked matrices picked per row (RippleNet's R_r t). The same numbers as `gather_aggregate`
    with the index `block_rows`, but only ``block_index`` is kept for backward, ``block`` times fewer index
    bytes; the rows are rebuilt there.
    """
    if source.shape[0] % block:
        raise ValueError(f"a source of {source.shape[0]} rows does not split into blocks of {block}")
    if not compression_active(config, source, weights):
        return gather_aggregate(source, block_rows(block_index, block), weights, "sum", None)
    return _GatherAggregateFunction.apply(source, block_index, weights, 1.0, config, block)


class GatherAggregate(nn.Module):
    def __init__(self, reduce: str = "sum", config: CompressionConfig | None = None):
        super().__init__()
        _check_reduce(reduce)
        self.reduce, self.config = reduce, config

    def forward(self, source, index, weights=None):
        return gather_aggregate(source, index, weights, self.reduce, self.config if self.training else None)
