"""KGIN: Learning Intents behind Interactions with Knowledge Graph for Recommendation (Wang et al., WWW 2021).

Behaviour follows the authors' PyTorch code (huangtinglin/Knowledge_Graph_based_Intent_Network). The KG
is taken with inverse relations (``kg_with_inverse``: relations ``0..R-1``, R = 2 x the KG's); users reach
items through the D^-1-normalised user-item matrix. With F intents p_f, relation embeddings e_r and one
propagation step per hop l = 0..L-1:

    intents     a(p_f)     = sum_r softmax_r(w_f)_r e_r                         (F, d)  w: (F, R) logits
                beta(u, f) = softmax_f(e_u^(l) . p_f)                            (U, F)  p_f: intent embeddings
    users       m_u        = sum_{i in N_u} e_i^(l) / |N_u|                     (U, d)
                e_u^(l+1)  = (sum_f beta(u, f) a(p_f)) * m_u + m_u
    entities    e_h^(l+1)  = mean_{(h, r, t)} e_r * e_t^(l)                      (N_e, d) (relational path-aware)
    per hop     e^(l+1)    = normalize(dropout(e^(l+1), mess_dropout))
    output      e*         = e^(0) + e^(1) + ... + e^(L)                         (residual sum)
    score       y(u, i)    = e*_u . e*_i
    loss        BPR + l2_weight * (||e*_u||^2 + ||e*_i||^2 + ||e*_j||^2) / (2B) + sim_weight * sum_{f<f'} ind(w_f, w_f')

ind = distance correlation (default) or squared cosine similarity of two intents' relation logits. In
training, node dropout samples the graph anew at every step: a random (1 - node_dropout) share of the KG
edges is kept (the original keeps ``int(E * rate)``: the same at its rate 0.5), and every user-item entry is
kept with probability 1 - node_dropout and rescaled by 1 / (1 - node_dropout).

Memory layout with a `CompressionConfig`: the relational aggregation over the E sampled KG edges keeps the
narrowed (head, tail, relation) indices -- sampled once per step, shared by all hops -- and a quantized copy
of the entity table, never the (E, d) messages (`_RelationalMeanFunction`); the user-item aggregation is
`tinykg.nn.edge_aggregate` without weights (indices only), scaled by a degree buffer; intent attention,
products, dropout and normalisation go through the compressed ops. The intent mixture a(p) keeps its
(F, R) softmax (plain autograd); the independence loss, a scalar of the (F, R) logits with O(F R^2)
intermediates, is differentiated in forward and keeps its (F, R) gradient: both independent of the graph.
Rows that aggregate nothing in a step (node dropout) have their gradient cut (`_cut_zero_rows`): exact,
and it keeps normalize's grad/eps spike at zero rows from leaking through quantized zeros. On the CPU the
(E, d) messages and per-edge gradients are formed in chunks of edges (`tinykg.nn._chunks`). On graphs much
larger than a batch the loss gathers each hop's batch rows as the hop is computed (`KGIN.batch_rows`),
with sparse row gradients, so neither the residual sums nor a zero-filled (N_e, d) gradient of them exist.

Legend: U users, I items, N_e entities, R KG relations with inverses, E KG edges, F intents, d embedding
dim, L hops, B batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..compress import CompressionConfig
from ..nn import (
    compressed_bpr_loss,
    compressed_dropout,
    compressed_embedding,
    compressed_linear,
    compressed_mul,
    compressed_normalize,
    compressed_softmax,
    edge_aggregate,
)
from ..nn._chunks import row_chunks, rows_of
from ..nn._saved import as_dtype, compression_active, first_order, load, maybe_quantize, needs_graph, save
from .base import BPR_COLUMNS, check_batch, check_choice, check_count, index_buffer, op_index, sparse_rows_grad
from .bprmf import TopKModel

INDEPENDENCE = ("distance", "cosine")

# --------------------------------------------------------------------------------------------------------
# Private ops (candidates for tinykg.nn)
# --------------------------------------------------------------------------------------------------------


def _capturing(device: torch.device) -> bool:
    """Whether ops on ``device`` are being captured into a CUDA graph (`tinykg.train.graphed`)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _sample_edges(num_edges: int, count: int, device: torch.device) -> torch.Tensor:
    """``count`` distinct edge indices in [0, num_edges), sorted, uniformly at random.

    Inside a CUDA graph's capture by sorting random keys: a small ``randperm`` on a GPU is drawn on the
    host and copied over, which a capture cannot hold (and a replay would repeat); ``torch.rand`` advances
    its generator at every replay."""
    if _capturing(device):
        return torch.rand(num_edges, device=device).argsort()[:count].sort().values
    return torch.randperm(num_edges, device=device)[:count].sort().values


def _edge_count(head: torch.Tensor, num_targets: int, dtype: torch.dtype) -> torch.Tensor:
    """Edges per head (at least 1), (num_targets,) in ``dtype``: exact below 2**24 edges per head in fp32.

    ``torch.bincount`` reads the largest index back to size its output: a device sync per call on a GPU
    (KGIN counted one per hop forward and one per hop backward), which idles the device while the host
    launches the next op. Adding ones at the heads launches the same work with no read-back.
    """
    ones = torch.ones((), dtype=dtype, device=head.device).expand(head.shape[0])
    return torch.zeros(num_targets, dtype=dtype, device=head.device).index_add_(0, head, ones).clamp_min_(1)


def _relational_mean_ref(head, tail, rel_type, x, relation, num_targets):
    """Plain autograd: mean over the edges (h, r, t) of each head of x[t] * relation[r] -> (N, d)."""
    head, tail, rel_type = head.long(), tail.long(), rel_type.long()
    messages = x.index_select(0, tail) * relation.index_select(0, rel_type)  # (E, d)
    total = x.new_zeros(num_targets, x.shape[1]).index_add_(0, head, messages)
    return total / _edge_count(head, num_targets, x.dtype).unsqueeze(1)


def _relational_mean_chunked(head, tail, rel_type, x, relation, num_targets) -> torch.Tensor:
    """`_relational_mean_ref`'s arithmetic with no autograd node, the (E, d) messages formed in chunks of
    edges on the CPU (`tinykg.nn._chunks`): the same bits."""
    head, tail, rel_type = head.long(), tail.long(), rel_type.long()
    total = x.new_zeros(num_targets, x.shape[1])
    for part in row_chunks(head.shape[0], x.shape[1], x):
        messages = x.index_select(0, rows_of(tail, part)) * relation.index_select(0, rows_of(rel_type, part))
        total.index_add_(0, rows_of(head, part), messages)
    return total / _edge_count(head, num_targets, x.dtype).unsqueeze(1)


class _RelationalMeanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, head, tail, rel_type, x, relation, num_targets, config, cut_zero_rows):
        # head, tail, rel_type: (E,) narrow ints; x: (M, d); relation: (R, d) -> (num_targets, d)
        out = _relational_mean_chunked(head, tail, rel_type, x, relation, num_targets)
        ctx.num_targets, ctx.num_sources, ctx.num_relations = num_targets, x.shape[0], relation.shape[0]
        live = None
        if cut_zero_rows:  # `_cut_zero_rows` inside the op: one bool per row, no (num_targets, d) where
            live = (out != 0).any(dim=1, keepdim=True)  # (num_targets, 1)
            out.masked_fill_(~live, 0.0)  # as torch.where(live, out, 0.0): a -0.0 row becomes 0.0
        save(
            ctx,
            head, tail, rel_type,  # narrowed by the caller once per step and shared by every hop
            maybe_quantize(x, config) if relation.requires_grad else None,
            relation if x.requires_grad else None,  # a parameter: kept by reference
            live,
        )
        return out

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        head, tail, rel_type, x, relation, live = load(ctx)
        head, tail, rel_type = head.long(), tail.long(), rel_type.long()
        dtype, d = grad_out.dtype, grad_out.shape[1]
        count = _edge_count(head, ctx.num_targets, dtype).unsqueeze(1)  # (num_targets, 1)
        need_x, need_relation = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        relation = as_dtype(relation, dtype) if need_x else None
        x = as_dtype(x, dtype) if need_relation else None
        grad_x = grad_out.new_zeros(ctx.num_sources, d) if need_x else None
        grad_relation = grad_out.new_zeros(ctx.num_relations, d) if need_relation else None
        for part in row_chunks(head.shape[0], d, grad_out):  # (E, d) temporaries in chunks on the CPU
            edge_tail, edge_rel = rows_of(tail, part), rows_of(rel_type, part)
            # The mean's gradient per edge, divided per edge rather than per head first (the same quotient
            # of the same two numbers): no (num_targets, d) quotient is held through the loop.
            edge_head = rows_of(head, part)
            g_edges = grad_out.index_select(0, edge_head).div_(count.index_select(0, edge_head))  # (E, d) or a chunk
            if live is not None:  # no gradient through a cut row
                g_edges.masked_fill_(~live.index_select(0, edge_head), 0.0)
            if need_x:
                grad_x.index_add_(0, edge_tail, g_edges * relation.index_select(0, edge_rel))
            if need_relation:
                grad_relation.index_add_(0, edge_rel, g_edges * x.index_select(0, edge_tail))
        return None, None, None, grad_x, grad_relation, None, None, None

def _relational_mean(
    head: torch.Tensor,
    tail: torch.Tensor,
    rel_type: torch.Tensor,
    x: torch.Tensor,
    relation: torch.Tensor,
    num_targets: int,
    config: CompressionConfig | None,
    cut_zero_rows: bool = False,
) -> torch.Tensor:
    """KGIN's relational path-aware aggregation ``mean_{(h, r, t)} relation[r] * x[t]`` -> (num_targets, d).

    head, tail, rel_type: (E,) edges; x: (M, d); relation: (R, d). With compression, saves the index
    tensors as given (narrow them once and share them), a quantized ``x`` (for the relation gradient) and
    ``relation`` by reference; the (E, d) messages are recomputed edge-wise in backward, never kept.
    ``cut_zero_rows``: the result goes through `_cut_zero_rows`; compressed, inside the op, whose backward
    then zeroes the cut rows' edges instead of a where forming another (num_targets, d) gradient.
    """
    if not compression_active(config, x, relation):
        if not needs_graph(x, relation):  # nothing to differentiate (evaluation): in chunks
            out = _relational_mean_chunked(head, tail, rel_type, x, relation, num_targets)
        else:
            out = _relational_mean_ref(head, tail, rel_type, x, relation, num_targets)
        return _cut_zero_rows(out) if cut_zero_rows else out
    return _RelationalMeanFunction.apply(head, tail, rel_type, x, relation, num_targets, config, cut_zero_rows)


def _cut_zero_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, d) unchanged, with no gradient through its all-zero rows; keeps one bool per row.

    A row aggregates to exactly zero when all its edges were dropped this step, or all its neighbours were
    such rows at the previous hop: zero whatever the parameters, so its true gradient is zero. But the
    gradient of ``normalize`` at a zero row is grad / eps (1e12x, as F.normalize); in fp32 the exact zeros
    downstream cancel it, whereas a quantized zero is not zero and the spike leaks through the saved copies
    (into the intents, the relations, the embeddings). Cutting it here is exact.
    """
    with torch.no_grad():
        live = (x != 0).any(dim=1, keepdim=True)  # (N, 1)
    return torch.where(live, x, 0.0)


class _ValueAndGradFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, *params):
        # ``fn`` maps parameters to a scalar: its gradient is computed here, with its value, and kept (as
        # many numbers as the parameters). Autograd would keep fn's intermediates instead (O(F R^2) for the
        # distance correlation); recomputing them in backward ran fn a second time, ~2 ms of a KGIN step's
        # host time on an H200 host (benchmarks/results/gpu_host_profile_h200_s14.txt).
        with torch.enable_grad():
            inputs = [p.detach().requires_grad_(needs) for p, needs in zip(params, ctx.needs_input_grad[1:])]
            value = fn(*inputs)
            if value.dim() != 0:
                raise ValueError(f"a parameter function differentiated in forward must return a scalar, got shape "
                                 f"{tuple(value.shape)}")
            wanted = [t for t in inputs if t.requires_grad]
            # allow_unused: a parameter fn does not read gets no gradient (None), as plain autograd gives it
            grads = torch.autograd.grad(value, wanted, allow_unused=True) if wanted else ()
        save(ctx, *grads)
        return value.detach()

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        grads = iter(load(ctx))
        out = []
        for needs in ctx.needs_input_grad[1:]:
            grad = next(grads) if needs else None
            out.append(None if grad is None else grad_out * grad)
        return (None, *out)


def _scalar_parameter_function(fn, *params: torch.Tensor, eager_grad: bool) -> torch.Tensor:
    """``fn(*params)``, a scalar of parameters only; with ``eager_grad`` its gradient is taken in forward
    and kept in place of its intermediates (same value, same gradient, one pass of each)."""
    if not eager_grad or not needs_graph(*params):
        return fn(*params)
    return _ValueAndGradFunction.apply(fn, *params)


def intent_mixture(intent_relation_logits: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
    """a(p_f) = softmax_r(w_f) @ e_r: (F, R), (R, d) -> (F, d)."""
    return torch.softmax(intent_relation_logits, dim=-1) @ relation


def distance_correlation(intent_relation_logits: torch.Tensor) -> torch.Tensor:
    """Sum over intent pairs f < f' of the distance correlation of rows w_f, w_f' (each a sample of R
    scalars), KGIN's ``DistanceCorrelation`` (same 1e-8 terms), vectorised over pairs. (F, R) -> scalar.

    Computed in fp32 whatever the parameters' dtype (F x R values): in fp16 the 1e-8 terms underflow to 0,
    and sqrt's gradient at a zero distance (every diagonal) is then inf, which made the whole step NaN.
    """
    num_intents, num_relations = intent_relation_logits.shape
    dtype = intent_relation_logits.dtype
    x = intent_relation_logits.float().unsqueeze(-1)  # (F, R, 1)
    square = x * x
    squared = square - 2 * x @ x.transpose(1, 2) + square.transpose(1, 2)  # (F, R, R) |x_p - x_q|^2
    distance = torch.sqrt(squared.clamp_min(0) + 1e-8)
    centered = distance - distance.mean(1, keepdim=True) - distance.mean(2, keepdim=True)
    centered = centered + distance.mean((1, 2), keepdim=True)  # double centring
    flat = centered.reshape(num_intents, -1)  # (F, R * R)
    dcov = torch.sqrt((flat @ flat.t() / num_relations**2).clamp_min(0) + 1e-8)  # (F, F)
    diag = dcov.diagonal()
    dcor = dcov / torch.sqrt(diag.unsqueeze(1) * diag.unsqueeze(0) + 1e-8)
    rows, cols = torch.triu_indices(num_intents, num_intents, 1, device=dcor.device)
    return dcor[rows, cols].sum().to(dtype)


def cosine_independence(intent_relation_logits: torch.Tensor) -> torch.Tensor:
    """Sum over intent pairs f < f' of the squared cosine similarity of w_f and w_f' (KGIN's ``cosine``)."""
    normalized = intent_relation_logits / intent_relation_logits.norm(dim=1, keepdim=True)
    cosine = normalized @ normalized.t()  # (F, F)
    rows, cols = torch.triu_indices(cosine.shape[0], cosine.shape[0], 1, device=cosine.device)
    return cosine[rows, cols].pow(2).sum()


_INDEPENDENCE_FNS = {"distance": distance_correlation, "cosine": cosine_independence}

# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------


class KGIN(TopKModel):
    """KGIN with relational path-aware aggregation, user intents and the independence loss.

    Args:
        num_users, num_items, num_entities: sizes (items are entities ``0..I-1``).
        num_relations: KG relations R including inverses (`tinykg.data.ckg.kg_with_inverse`).
        head_index, rel_type, tail_index: (E,) KG triples over entities, inverses included.
        user_index, item_index: (P,) training positives (the user-item graph).
        embedding_dim: d. num_hops: L (``context_hops``). num_intents: F (``n_factors``).
        node_dropout: share of KG edges and user-item entries dropped at every training step.
        mess_dropout: message dropout after every hop.
        l2_weight: batch L2 weight (``l2``). sim_weight: independence-loss weight (``sim_regularity``).
        independence: "distance" (distance correlation, default) or "cosine".
        head_bits: minimum bits of the per-batch BPR scoring head (`tinykg.models.base.head_config`);
            None = the compression config's bits everywhere.
        compression: how saved activations are stored in training; None = plain fp32.
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
        user_index,
        item_index,
        embedding_dim: int = 64,
        num_hops: int = 3,
        num_intents: int = 4,
        node_dropout: float = 0.5,
        mess_dropout: float = 0.1,
        l2_weight: float = 1e-5,
        sim_weight: float = 1e-4,
        independence: str = "distance",
        head_bits: int | None = 8,
        compression: CompressionConfig | None = None,
    ) -> None:
        super().__init__(compression, head_bits)
        self.num_users = check_count("num_users", num_users)
        self.num_items = check_count("num_items", num_items)
        self.num_entities = check_count("num_entities", num_entities)
        if num_items > num_entities:
            raise ValueError(f"items must be entities: num_items={num_items} > num_entities={num_entities}")
        self.num_relations = check_count("num_relations", num_relations)
        self.embedding_dim = check_count("embedding_dim", embedding_dim)
        self.num_hops = check_count("num_hops", num_hops)
        self.num_intents = check_count("num_intents", num_intents)
        for name, rate in (("node_dropout", node_dropout), ("mess_dropout", mess_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {rate!r}")
        self.node_dropout, self.mess_dropout = float(node_dropout), float(mess_dropout)
        self.l2_weight, self.sim_weight = float(l2_weight), float(sim_weight)
        self.independence = check_choice("independence", independence, INDEPENDENCE)

        self.register_buffer("kg_head", index_buffer(head_index, num_entities))  # (E,)
        self.register_buffer("kg_rel", index_buffer(rel_type, num_relations))  # (E,)
        self.register_buffer("kg_tail", index_buffer(tail_index, num_entities))  # (E,)
        self.register_buffer("ui_user", index_buffer(user_index, num_users))  # (P,)
        self.register_buffer("ui_item", index_buffer(item_index, num_items))  # (P,)
        same_kg = self.kg_head.shape == self.kg_rel.shape == self.kg_tail.shape
        if not same_kg or self.ui_user.shape != self.ui_item.shape:
            raise ValueError("the KG triples and the user-item pairs must be 1-D arrays of matching lengths")
        degree = torch.bincount(self.ui_user.long(), minlength=num_users).float()
        inv_degree = torch.where(degree > 0, 1.0 / degree.clamp_min(1), 0.0)
        self.register_buffer("user_inv_degree", inv_degree.unsqueeze(1))  # (U, 1)

        d = embedding_dim
        self.node_embedding = nn.Parameter(torch.empty(num_users + num_entities, d))  # users, then entities
        self.intent_embedding = nn.Parameter(torch.empty(num_intents, d))
        self.relation_embedding = nn.Parameter(torch.empty(num_relations, d))
        self.intent_relation_logits = nn.Parameter(torch.empty(num_intents, num_relations))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform everywhere, the node table as one matrix (the original's ``all_embed``)."""
        for weight in self.parameters():
            nn.init.xavier_uniform_(weight)

    def _graph(self) -> tuple[torch.Tensor, ...]:
        """KG edges (head, rel, tail), user-item pairs (user, item), the user-mean rescale factor and the
        number of user rows the pairs point to, node dropout applied in training (one fresh sample per call).

        Inside a CUDA graph's capture the dropped pairs point to one extra row past the users instead of
        being removed: removing them (boolean indexing) reads their count back to the host, which a capture
        cannot do. The kept pairs are summed in the same order either way: the same user rows."""
        head, rel, tail, user, item = self.kg_head, self.kg_rel, self.kg_tail, self.ui_user, self.ui_item
        if not (self.training and self.node_dropout > 0):
            return head, rel, tail, user, item, 1.0, self.num_users
        keep_prob = 1.0 - self.node_dropout
        num_edges = head.shape[0]
        picked = _sample_edges(num_edges, int(round(num_edges * keep_prob)), head.device)
        kept = torch.rand(user.shape[0], device=user.device) < keep_prob
        if _capturing(user.device):
            spare = torch.full((), self.num_users, dtype=torch.int32, device=user.device)
            return (head[picked], rel[picked], tail[picked], torch.where(kept, user.int(), spare), item,
                    1.0 / keep_prob, self.num_users + 1)
        return head[picked], rel[picked], tail[picked], user[kept], item[kept], 1.0 / keep_prob, self.num_users

    def hops(self):
        """Each hop's user (U, d) and entity (N_e, d) representations, hop 0 (the embedding table's views)
        first: a generator, so that a caller keeps only what it needs of each hop."""
        config = self.active_config
        compress = compression_active(config, self.node_embedding)
        head, rel, tail, ui_user, ui_item, ui_scale, user_rows = self._graph()
        if compress:
            ui_user, ui_item = op_index(ui_user), op_index(ui_item)  # the KG indices stay narrow (saved as is)
        else:
            head, rel, tail, ui_user, ui_item = (t.long() for t in (head, rel, tail, ui_user, ui_item))
        user_x = self.node_embedding[: self.num_users]  # (U, d) views of the parameter
        entity_x = self.node_embedding[self.num_users :]  # (N_e, d)
        yield user_x, entity_x
        # (F, d); plain autograd either way: it keeps its (F, R) softmax, F R floats whatever the graph.
        intents = intent_mixture(self.intent_relation_logits, self.relation_embedding)
        # F.normalize's 1e-12 (the original's), unless the dtype cannot hold it: in fp16 it rounds to 0 and a
        # zero row (an entity without neighbours) became 0 / 0.
        eps = max(1e-12, torch.finfo(entity_x.dtype).tiny)
        for _ in range(self.num_hops):
            entity_agg = _relational_mean(
                head, tail, rel, entity_x, self.relation_embedding, self.num_entities, config, cut_zero_rows=True,
            )
            logits = compressed_linear(user_x, self.intent_embedding, None, config)  # (U, F)
            attention = compressed_softmax(logits, -1, config)  # (U, F)
            intent_mix = compressed_linear(attention, intents.t(), None, config)  # (U, d)
            user_mean = edge_aggregate(ui_user, ui_item, None, entity_x, user_rows, config)  # (U, d)
            if user_rows != self.num_users:
                user_mean = user_mean[: self.num_users]  # without the dropped pairs' spare row
            user_mean = user_mean * self.user_inv_degree  # constant buffer: saved by reference
            if ui_scale != 1.0:
                user_mean = user_mean * ui_scale
            user_agg = compressed_mul(user_mean, intent_mix + 1.0, config)  # m_u * (intent) + m_u
            user_agg = _cut_zero_rows(user_agg)
            entity_agg = compressed_dropout(entity_agg, self.mess_dropout, self.training, config)
            user_agg = compressed_dropout(user_agg, self.mess_dropout, self.training, config)
            entity_x = compressed_normalize(entity_agg, -1, eps, config)  # (N_e, d)
            user_x = compressed_normalize(user_agg, -1, eps, config)  # (U, d)
            yield user_x, entity_x

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user (U, d) and entity (N_e, d) representations: the residual sum over hops."""
        hops = self.hops()
        user_sum, entity_sum = next(hops)
        for user_x, entity_x in hops:
            entity_sum = entity_sum + entity_x
            user_sum = user_sum + user_x
        return user_sum, entity_sum

    def batch_rows(self, user_index: torch.Tensor, item_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``user_index`` (B,) of `propagate`'s users and ``item_index`` (B',) of its entities.

        On a graph much larger than the batch (where `sparse_rows_grad` says sparse gradients pay), without
        the (U, d) and (N_e, d) sums: each hop's rows are gathered as soon as the hop is computed and added
        up in the same order, so they are the same numbers. The rows of a hop the next one reads get their
        gradient as a sparse tensor (as `KGAT.batch_rows`), added into the dense one that hop gets anyway,
        instead of one zero-filled (N_e, d) gradient held through backward; hop 0's are rows of the
        embedding table itself (its slices would not take a sparse gradient). Otherwise `propagate` and one
        lookup each."""
        config = self.active_config
        user_index, item_index = op_index(user_index), op_index(item_index)
        if not sparse_rows_grad(len(item_index), self.node_embedding[self.num_users :], self.num_hops > 0):
            # A graph of a few batches' entities (the synthetic default): a sparse gradient would not be the
            # smaller, so the sums and one lookup each, the same numbers in fewer ops (there 50 fewer
            # top-level aten ops per 2-bit step, 789 -> 739, each a few microseconds of a GPU's host time).
            users, entities = self.propagate()
            return compressed_embedding(user_index, users, config), compressed_embedding(item_index, entities, config)
        hops = self.hops()
        next(hops)  # hop 0: the table itself
        table, read_again = self.node_embedding, self.num_hops > 0
        users = compressed_embedding(user_index, table, config, sparse_grad=sparse_rows_grad(len(user_index), table, read_again))
        items = compressed_embedding(item_index + self.num_users, table, config,
                                     sparse_grad=sparse_rows_grad(len(item_index), table, read_again))
        for hop, (user_x, entity_x) in enumerate(hops, start=1):
            read_again = hop < self.num_hops
            users = users + compressed_embedding(user_index, user_x, config,
                                                 sparse_grad=sparse_rows_grad(len(user_index), user_x, read_again))
            items = items + compressed_embedding(item_index, entity_x, config,
                                                 sparse_grad=sparse_rows_grad(len(item_index), entity_x, read_again))
        return users, items

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, entities = self.propagate()
        return users, entities[: self.num_items]

    def independence_loss(self) -> torch.Tensor:
        """Sum over intent pairs of the chosen independence measure of their relation logits."""
        eager = compression_active(self.active_config, self.intent_relation_logits)
        measure = _INDEPENDENCE_FNS[self.independence]
        return _scalar_parameter_function(measure, self.intent_relation_logits, eager_grad=eager)

    def loss(self, user_index: torch.Tensor, pos_index: torch.Tensor, neg_index: torch.Tensor) -> torch.Tensor:
        """BPR + batch L2 + sim_weight * independence, (B,) x 3 -> scalar."""
        check_batch(BPR_COLUMNS, user_index, pos_index, neg_index, sizes=(self.num_users, self.num_items, self.num_items))
        # Positives and negatives in one gather (per hop on a large graph: `batch_rows`).
        user, items = self.batch_rows(user_index, torch.cat([pos_index, neg_index]))  # (B, d), (2B, d)
        pos, neg = items.split(user_index.shape[0])  # (B, d) each
        loss = compressed_bpr_loss(user, pos, neg, self.l2_weight, self.active_head_config)
        if self.sim_weight:
            loss = loss + self.sim_weight * self.independence_loss()
        return loss
