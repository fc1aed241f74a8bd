"""KGCN: Knowledge Graph Convolutional Networks for Recommender Systems (Wang et al., WWW 2019).

Behaviour follows the authors' TF code (hwwang55/KGCN). Every entity has a fixed sample of K
neighbours (KG made undirected, sampled once before training): ``adj_entity, adj_relation`` (E, K).
For a batch of (user u, item v) the receptive field is hop-i entities e_i (B, K^i), i = 0..H.

    attention   pi(u, r)  = mean_d (u * r)                         (a mean over dims, not a sum)
                w_k       = softmax_k pi(u, r_k)                    over the K neighbours of a node
    neighbours  v_N       = mean_k w_k e_k                          (a mean over K, not a sum)
    aggregate   sum:       act(W (v + v_N) + b)
                concat:    act(W [v || v_N] + b)                    (W: 2d -> d)
                neighbor:  act(W v_N + b)
    iterations  i = 1..H, iteration i updates hops 0..H-i with the weights of iteration i;
                act = ReLU for i < H, tanh for i = H
    score       y = sigmoid(u . v^(H))
    loss        mean BCE + l2_weight * (l2(U) + l2(E) + l2(R) + sum_i l2(W_i)),  l2(x) = ||x||^2 / 2

Memory layout (what autograd keeps with a `CompressionConfig`): mean_d(u * r) is computed as
``(u R^T)[b, r_k] / d`` -- one (B, num_relations) product inside `indexed_attention`, which keeps u (a
row of the user table, gathered again in backward: `tinykg.compress.gathered`), the per-neighbour
relation index (a reference to the adjacency buffer, see `receptive_field`) and the quantized weights,
never the (B, K, d) relation vectors or the logits. The attention of hop h depends only on the
user and the relations, so it is computed once and shared by all iterations (the TF code recomputes
identical values). Each aggregator's linear map and activation are one fused op. Neighbours of iteration
1 are gathered straight from the entity table (`gather_aggregate`: narrowed index + quantized weights saved,
table by reference); with the sum aggregator iteration 1 is one op from the table to the activation
(`_SumAggregateFunction`, the same saved state and no copy of the linear map's input, which its backward
rebuilds from them).

Legend: B batch, K neighbours per entity, H iterations (hops), d embedding dim, E entities,
N_r relations, n = K^h nodes of hop h per batch row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ..compress.gathered import scatter_index
from ..nn import compressed_dot, compressed_embedding, compressed_linear, gather_aggregate, indexed_attention, weighted_sum
from ..nn._chunks import row_chunks, rows_of
from ..nn._saved import BitMask, as_dtype, compression_active, first_order, gather_index, keep_index, load, mark_gathered, maybe_quantize, narrow_index, save
from ..nn.activation import OUTPUT_GRADS, mask_grad
from ..nn.aggregate import add_gather_grad, gather_reductions
from .base import CTRModel, check_choice, check_count, index_buffer, op_index, tf_l2

AGGREGATORS = ("sum", "concat", "neighbor")


class _SumAggregateFunction(torch.autograd.Function):
    """Iteration 1 of the sum aggregator on one hop, read straight from the entity table, as one op:

        out = act(W x + b),    x = e[self] + (1/K) sum_k w_k e[neighbor_k]

    It keeps both indices narrowed, the attention weights quantized (the copy the attention already made),
    the table by reference (a parameter) and the activation's mask or quantized output; not x. The
    gradient of W needs x, and backward rebuilds it as x~ = e[self] + (1/K) sum_k w~_k e[neighbor_k] from
    the quantized weights w~ and the neighbour rows it gathers anyway for the weights' gradient. x~ is
    linear in w~, so E[x~] = x, and its noise is independent of the other factor's (grad_pre, from the
    activation's own copy and the output's gradient): the gradient of W stays unbiased as long as that
    output gradient carries no noise of the same w~, as in KGCN and KGNN-LS, whose later ops keep their
    own copies. Its noise is that of the weights, which are near 1/K and tightly grouped, not that of a
    2-bit copy of x spanning the values' range: on Last.FM W's gradient has 2.5x less variance (relative
    rms error 0.45 -> 0.28, `benchmarks/bench_grad_noise.py`), and the step makes one quantize and one
    dequantize fewer and keeps 544 B fewer (of 6,000) at KGCN's batch of 128.
    Fusing also saves two autograd nodes, their save/load bookkeeping and the add, and the table's
    gradient is one zero-filled (E, d) tensor with both scatters into it instead of two that autograd
    then adds. The forward computes the same numbers as the unfused ops.

    ``score_query`` (B, d'): with one iteration (H = 1) the output is the item vector, and the op also takes
    the score u . v (`KGCN.score`) and returns the logits (B,): the same arithmetic and the same saved
    copies as `compressed_dot` after this op (both operands' packed copies exist already: the attention's
    of u, this op's of its output), without the dot's autograd node and its save/load bookkeeping. Given
    the same seeds, logits and gradients equal the unfused pair's to the bit.
    """

    @staticmethod
    def forward(ctx, table, self_index, neighbor_index, weights, weight, bias, config, activation, output_config,
                score_query=None):
        # table (E, d), self_index (B, n), neighbor_index (B, n, K), weights (B, n, K), weight (d', d),
        # bias (d',) -> (B, n, d'); with score_query (B, d') and n = 1 -> logits (B,)
        if score_query is not None and activation != "tanh":
            raise ValueError("the score can be fused only into the last iteration (tanh), whose output is the item vector")
        num_rows, k = table.shape[0], neighbor_index.shape[-1]
        # The (B, n, K, d) gathered neighbours exist only inside `gather_reductions` (in chunks on the CPU).
        neighbor_sum, _ = gather_reductions(table, neighbor_index, weights, 1.0 / k)  # (B, n, d)
        x = neighbor_sum  # x = e[self] + neighbour sum, added into the sum's own buffer (one (B, n, d) fewer)
        x += F.embedding(gather_index(self_index), table)
        del neighbor_sum
        ctx.num_rows, ctx.scale, ctx.activation = num_rows, 1.0 / k, activation
        out = F.linear(x, weight, bias)
        del x
        if activation == "relu":
            act_saved = BitMask.greater(out)
            out = out.relu_()
        else:
            out = out.tanh_()
            # The output itself, not its square (`tinykg.nn.activation`): it is the item vector, which the
            # score keeps at the same config, so this is one shared copy. The square's unbiased tanh
            # gradient cost 9% more bytes per step and changed no AUC on Last.FM at 2 bits (5 seeds: KGCN
            # -0.03% vs +0.03%, KGNN-LS -0.10% vs -0.10% against fp32; session 11).
            act_saved = maybe_quantize(out, output_config, is_output=True)
        # The weights serve the table's gradient and the rebuilt x (W's gradient).
        keep_weights = table.requires_grad or weight.requires_grad
        ctx.scored = score_query is not None
        query_saved = logits = None
        if ctx.scored:
            logits = (score_query * out.view(score_query.shape)).sum(-1)  # (B,), as compressed_dot computes it
            query_saved = maybe_quantize(score_query, output_config)
        save(
            ctx,
            keep_index(self_index, num_rows),
            keep_index(neighbor_index, num_rows),
            maybe_quantize(weights, config) if keep_weights else None,
            table,
            weight,
            act_saved,
            query_saved,
        )
        return logits if ctx.scored else out

    @staticmethod
    @first_order
    def backward(ctx, grad_out):
        self_index, neighbor_index, weights, table, weight, act, query = load(ctx)
        need = ctx.needs_input_grad
        if ctx.activation == "tanh":
            act = as_dtype(act, grad_out.dtype)  # the quantized output (the item vector when scored)
        grad_query = None
        if ctx.scored:  # grad_out: the logits' (B,); the products' gradients as compressed_dot forms them
            grad_products = grad_out.unsqueeze(-1)  # (B, 1)
            if need[9]:  # score_query
                grad_query = grad_products * act.view(query.shape)  # (B, d')
            grad_out = (grad_products * as_dtype(query, grad_out.dtype)).view(act.shape)  # (B, 1, d')
        dtype, d, k, d_out = grad_out.dtype, table.shape[-1], neighbor_index.shape[-1], grad_out.shape[-1]
        lead = neighbor_index.shape[:-1]  # (B, n)
        rows = lead.numel()
        grad_out = grad_out.reshape(rows, d_out)
        act = BitMask(act.bits, torch.Size((rows, d_out))) if ctx.activation == "relu" else act.reshape(rows, d_out)
        self_index, neighbor_index = self_index.reshape(rows), neighbor_index.reshape(rows, k)
        weights = as_dtype(weights, dtype).reshape(rows, k) if weights is not None else None
        table, weight = as_dtype(table, dtype), as_dtype(weight, dtype)
        grad_table = grad_out.new_zeros(ctx.num_rows, d) if need[0] else None
        grad_weights = grad_weight = grad_bias = None
        # Row chunks (`tinykg.nn._chunks`; the same ones whatever the thread count, as W's and b's gradients
        # are sums over them): each chunk's (b, K, d) neighbours are gathered once, for both their weighted
        # sum (it rebuilds W's input) and their dots with g (the weights' gradient), and its (b, d) / (b, d')
        # rows live only as long as the chunk. In one piece the operations and their order are the
        # unchunked op's. Whole-batch temporaries here set a large step's peak: in one piece this backward
        # held six (B, n, d) or (B, n, K) tensors at once, and KGCN's 2-bit step at batch 8192 (synthetic
        # default) peaked 39.7 MB above its start; in chunks 16.8 MB (`benchmarks/bench_step.py --cpu-peak`).
        parts = row_chunks(rows, k * d, grad_out, per_thread=False, multiple=8)  # 8 rows: the mask at whole bytes
        if need[3] and len(parts) > 1:
            grad_weights = grad_out.new_empty(rows, k)
        for part in parts:
            grad_part = rows_of(grad_out, part)
            if ctx.activation == "relu":
                grad_pre = mask_grad(act.rows(part), grad_part, 0.0)
            else:
                grad_pre = OUTPUT_GRADS["tanh"](rows_of(act, part), grad_part)  # (b, d')
            grad_x = grad_pre @ weight  # (b, d)
            # int64 for the self rows' scatter (`scatter_index`); the neighbours are widened inside the gather ops
            self_rows, neighbor_rows = scatter_index(rows_of(self_index, part)), rows_of(neighbor_index, part)
            part_weights = rows_of(weights, part)
            if need[0]:  # one buffer for the self rows and the neighbour rows
                grad_table.index_add_(0, self_rows, grad_x)
            g = grad_x.mul_(ctx.scale)  # gradient of the neighbours' weighted sum
            if need[3] or need[4]:
                neighbor_sum, dots = gather_reductions(
                    table, neighbor_rows, part_weights if need[4] else None, ctx.scale, g if need[3] else None,
                    summed=need[4],
                )
                if need[3]:
                    if part is None:
                        grad_weights = dots
                    else:
                        grad_weights[part] = dots
            if need[4]:
                # x~ (class docstring): the input of the linear map, rebuilt from the quantized weights.
                x_hat = F.embedding(self_rows, table)
                x_hat += neighbor_sum  # (b, d)
                del neighbor_sum
                grad_weight = grad_pre.t() @ x_hat if grad_weight is None else grad_weight.addmm_(grad_pre.t(), x_hat)
            if need[5]:
                grad_bias = grad_pre.sum(0) if grad_bias is None else grad_bias.add_(grad_pre.sum(0))
            if need[0]:
                add_gather_grad(grad_table, g, neighbor_rows, part_weights)
        if grad_weights is not None:
            grad_weights = grad_weights.view(*lead, k)
        return grad_table, None, None, grad_weights, grad_weight, grad_bias, None, None, None, grad_query


class KGCN(CTRModel):
    """KGCN with sum, concat or neighbor aggregator.

    Args:
        num_users, num_entities, num_relations: table sizes (items are entities ``0..num_items-1``).
        adj_entity, adj_relation: (E, K) sampled neighbours and their relations (numpy or tensor).
        embedding_dim: d. num_layers: H (iterations = hops). num_neighbors: K (must match the tables).
        aggregator: "sum", "concat" or "neighbor".
        l2_weight: weight of the TF-style L2 term over all embedding tables and aggregator weights.
        compression: how saved activations are stored in training; None = plain fp32.
        head_bits: minimum code width of the (B, d) operands of the score (`tinykg.models.base.head_config`):
            at 1 bit they stay at 2 bits; None = the compression config's bits everywhere.
    """

    def __init__(
        self,
        num_users: int,
        num_entities: int,
        num_relations: int,
        adj_entity,
        adj_relation,
        embedding_dim: int = 16,
        num_layers: int = 1,
        num_neighbors: int = 8,
        aggregator: str = "sum",
        l2_weight: float = 1e-4,
        compression: CompressionConfig | None = None,
        head_bits: int | None = 2,
    ) -> None:
        super().__init__(compression, head_bits)
        self.num_users = check_count("num_users", num_users)
        self.num_entities = check_count("num_entities", num_entities)
        self.num_relations = check_count("num_relations", num_relations)
        self.embedding_dim = check_count("embedding_dim", embedding_dim)
        self.num_layers = check_count("num_layers", num_layers)
        self.num_neighbors = check_count("num_neighbors", num_neighbors)
        self.aggregator = check_choice("aggregator", aggregator, AGGREGATORS)
        self.l2_weight = float(l2_weight)

        adj_entity = index_buffer(adj_entity, num_entities)
        adj_relation = index_buffer(adj_relation, num_relations)
        expected = (num_entities, num_neighbors)
        if tuple(adj_entity.shape) != expected or tuple(adj_relation.shape) != expected:
            raise ValueError(
                f"adj_entity and adj_relation must have shape {expected}, got "
                f"{tuple(adj_entity.shape)} and {tuple(adj_relation.shape)}"
            )
        self.register_buffer("adj_entity", adj_entity)  # (E, K)
        self.register_buffer("adj_relation", adj_relation)  # (E, K)

        d = embedding_dim
        self.user_embedding = nn.Parameter(torch.empty(num_users, d))
        self.entity_embedding = nn.Parameter(torch.empty(num_entities, d))
        self.relation_embedding = nn.Parameter(torch.empty(num_relations, d))
        in_features = 2 * d if aggregator == "concat" else d
        self.aggregator_weights = nn.ParameterList(nn.Parameter(torch.empty(d, in_features)) for _ in range(num_layers))
        self.aggregator_biases = nn.ParameterList(nn.Parameter(torch.zeros(d)) for _ in range(num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform tables and weights, zero biases (the TF code's initializers)."""
        for table in (self.user_embedding, self.entity_embedding, self.relation_embedding):
            nn.init.xavier_uniform_(table)
        for weight, bias in zip(self.aggregator_weights, self.aggregator_biases):
            nn.init.xavier_uniform_(weight)
            nn.init.zeros_(bias)

    # -- receptive field ------------------------------------------------------------------------

    def receptive_field(
        self, item_index: torch.Tensor, narrow: bool = False
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Hop-h entities [(B, K^h) for h = 0..H] and relations [(B, K^(h+1)) for h = 0..H-1].

        ``narrow=False`` (the plain fp32 ops): int32 once, here: the plain ops then save views of these very
        tensors (the gather of hop h and the self embedding of hop h share one), where indices kept narrow
        would be widened into separate copies by each op (measured: +8 KB per step for KGCN on the synthetic
        default). ``narrow=True`` (the compressed ops, which keep indices narrow): hops 1..H in the
        adjacency's own narrow dtypes, hop 0 narrowed to the entity count: the ops keep them as they are instead
        of narrowing int32 copies back (at H = 1 three index conversions per step instead of six, each a few
        microseconds). Hops 1..H are then marked as lookups of the adjacency buffers (`mark_gathered`): an op
        that saves hop h + 1's entities or relations keeps a reference to the buffer and hop h's entities,
        and gathers them again in backward. References nest down to the item column, so no hop's index is
        kept (Book-Crossing, H = 3: 1.35 MB -> 0.61 MB per 2-bit step).
        """
        batch = item_index.shape[0]
        as_op = (lambda index: index) if narrow else op_index
        # Narrowed here, so that the reference hop 1 keeps (and the first op's self index) is the narrow copy.
        first = narrow_index(item_index, self.entity_embedding.shape[0]) if narrow else op_index(item_index)
        entities = [first.view(batch, 1)]
        relations = []
        for hop in range(self.num_layers):
            rows = gather_index(entities[hop])  # int16 cannot index a tensor and uint8 would be a mask
            hop_entities, hop_relations = self.adj_entity[rows], self.adj_relation[rows]  # (B, K^h, K)
            if narrow:
                mark_gathered(hop_entities, self.adj_entity, entities[hop], held=True)
                mark_gathered(hop_relations, self.adj_relation, entities[hop], held=True)
            entities.append(as_op(hop_entities.view(batch, -1)))
            relations.append(as_op(hop_relations.view(batch, -1)))
        return entities, relations

    def attention(self, user_vectors: torch.Tensor, relations: list[torch.Tensor], config) -> list[torch.Tensor]:
        """Softmax weights [(B, K^h, K) for h = 0..H-1] of mean_d(u * r) over each node's K neighbours."""
        batch, k = user_vectors.shape[0], self.num_neighbors
        scale = 1.0 / self.embedding_dim  # mean over d
        head = self.active_head_config  # u is a score operand too: one packed copy at the head's bits
        return [
            indexed_attention(
                user_vectors, self.relation_embedding, hop_relations.view(batch, -1, k), scale, config, head
            )
            for hop_relations in relations  # (B, n * K)
        ]

    def _aggregate(self, iteration: int, self_vectors, neighbor_vectors, config) -> torch.Tensor:
        # self_vectors, neighbor_vectors: (B, n, d) -> (B, n, d)
        if self.aggregator == "sum":
            inputs = self_vectors + neighbor_vectors
        elif self.aggregator == "concat":
            inputs = torch.cat([self_vectors, neighbor_vectors], dim=-1)  # (B, n, 2d)
        else:
            inputs = neighbor_vectors
        last = iteration == self.num_layers - 1
        # The last iteration's tanh output is the item vector, a score operand: kept itself (not its square)
        # at the head's bits, one copy shared with the score (see _SumAggregateFunction.forward).
        return compressed_linear(
            inputs, self.aggregator_weights[iteration], self.aggregator_biases[iteration], config,
            "tanh" if last else "relu", output_config=self.active_head_config if last else None, share_output=True,
        )

    def encode(self, user_index: torch.Tensor, item_index: torch.Tensor, fuse_score: bool = False) -> dict[str, object]:
        """User vectors (B, d), item vectors (B, d) and the receptive field with its attention.

        ``fuse_score``: where the fused first iteration is the last one (H = 1, sum aggregator, compressed
        training), it also takes the score (`_SumAggregateFunction`): the result then has the logits (B,)
        under ``"logits"`` and no item vectors (``"item"`` is None)."""
        config = self.active_config
        batch, d, k = item_index.shape[0], self.embedding_dim, self.num_neighbors
        user_vectors = compressed_embedding(op_index(user_index), self.user_embedding, config)  # (B, d)
        entities, relations = self.receptive_field(item_index, narrow=config is not None)
        weights = self.attention(user_vectors, relations, config)

        # Iteration 1 reads raw embeddings: neighbours are gathered from the table directly.
        vectors = []
        for hop in range(self.num_layers):
            neighbor_index = entities[hop + 1].view(batch, -1, k)  # (B, n, K)
            weight, bias = self.aggregator_weights[0], self.aggregator_biases[0]
            if self.aggregator == "sum" and compression_active(config, self.entity_embedding, weights[hop], weight, bias):
                last = self.num_layers == 1
                query = user_vectors if fuse_score and last else None
                out = _SumAggregateFunction.apply(
                    self.entity_embedding, entities[hop].view(batch, -1), neighbor_index, weights[hop], weight, bias,
                    config, "tanh" if last else "relu", self.active_head_config if last else config, query,
                )
                if query is not None:  # H = 1: the one hop, scored inside the op
                    return {"user": user_vectors, "item": None, "logits": out, "entities": entities, "weights": weights}
                vectors.append(out)
                continue
            self_vectors = None
            if self.aggregator != "neighbor":
                self_vectors = compressed_embedding(entities[hop], self.entity_embedding, config)  # (B, n, d)
            neighbor_vectors = gather_aggregate(
                self.entity_embedding, neighbor_index, weights[hop], reduce="mean", config=config
            )  # (B, n, d)
            vectors.append(self._aggregate(0, self_vectors, neighbor_vectors, config))
        # Iterations 2..H read the previous iteration's vectors.
        for iteration in range(1, self.num_layers):
            next_vectors = []
            for hop in range(self.num_layers - iteration):
                neighbors = vectors[hop + 1].view(batch, -1, k, d)  # (B, n, K, d)
                neighbor_vectors = weighted_sum(neighbors, weights[hop], reduce="mean", config=config)  # (B, n, d)
                next_vectors.append(self._aggregate(iteration, vectors[hop], neighbor_vectors, config))
            vectors = next_vectors
        item_vectors = vectors[0].view(batch, d)
        return {
            "user": user_vectors,
            "item": item_vectors,
            "entities": entities,
            "weights": weights,
        }

    def score(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Logits u . v (B,)."""
        return compressed_dot(user_vectors, item_vectors, self.active_head_config)

    def logits(self, encoded: dict[str, object]) -> torch.Tensor:
        """Logits (B,) of an `encode` result: the ones the fused iteration took, else `score`'s."""
        if "logits" in encoded:
            return encoded["logits"]
        return self.score(encoded["user"], encoded["item"])

    def forward(self, user_index: torch.Tensor, item_index: torch.Tensor) -> torch.Tensor:
        if item_index.shape[0] == 0:  # nothing to score (the receptive field's reshapes need a row)
            return self.user_embedding.new_zeros(0)
        return self.logits(self.encode(user_index, item_index, fuse_score=True))

    def regularization(self) -> torch.Tensor:
        l2 = tf_l2(self.user_embedding, self.entity_embedding, self.relation_embedding, *self.aggregator_weights)
        return self.l2_weight * l2
