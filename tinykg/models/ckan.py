"""CKAN: Collaborative Knowledge-aware Attentive Network for Recommender Systems (Wang et al., SIGIR 2020).

Behaviour follows the authors' PyTorch code (weberrr/CKAN). Users and items are represented by triple
sets built once before training (`tinykg.data.ckan_triple_sets`): the user's initial entities are its
training positives, the item's its collaborative neighbours (items co-liked with it); L layers of
directed KG propagation then give (h, r, t) sets of S_u (users) or S_i (items) triples per layer.
There is no user embedding table.

    attention   pi(h, r) = sigmoid(W3 relu(W2 relu(W1 [e_h || e_r])))        (no biases)
                a_j = softmax_j pi(h_j, r_j)   over the set of a layer
    layer l     e^(l) = sum_j a_j e_{t_j},   l = 1..L
    layer 0     user: e_u^(0) = mean_j e_{h_j} over its layer-1 heads (its positives, drawn with
                replacement in proportion to their out-degree); item: e_v^(0) = e_v, and for the sum and
                pool aggregators also mean_j e_{h_j} over the item's layer-1 heads
    aggregate   concat: [e^(L) || ... || e^(0)];  sum: sum_l e^(l);  pool: element-wise max_l e^(l)
    score       y = sigmoid(e_u . e_v)
    loss        mean BCE; L2 through Adam's weight_decay (``weight_decay`` attribute, l2_weight 1e-5)

Memory: the element-wise max of two vectors is written b + relu(a - b), which keeps a 1-bit mask for
backward (torch.maximum keeps both inputs). With compression the attention pi is one op
(`_KnowledgeAttentionFunction`): it keeps only the triples' head and relation indices, and in backward
gathers e_h and e_r again from the parameter tables and recomputes the MLP, so nothing of it is rounded;
on the CPU it runs in chunks of the batch.

Legend: B batch, L layers, S triples per set (S_u for users, S_i for items), d embedding dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ..nn import (
    compressed_dot,
    compressed_embedding,
    compressed_linear,
    compressed_relu,
    compressed_softmax,
    gather_aggregate,
)
from ..nn._chunks import joined, row_chunks, rows_of
from ..nn._saved import as_dtype, compression_active, first_order, gather_index, keep_index, load, save
from .base import CTRModel, check_choice, check_count, index_buffer, op_index, position_rows, user_mask_buffer

AGGREGATORS = ("concat", "sum", "pool")


def _attention_input(entity, relation, heads, relations) -> torch.Tensor:
    """[e_h || e_r] of the triples: (N, d), (R, d) tables, (b, S) indices -> (b, S, 2d)."""
    return torch.cat([F.embedding(heads, entity), F.embedding(relations, relation)], dim=-1)


def _attention_layers(x, w1, w2, w3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention MLP on (b, S, 2d) inputs: hidden layers h1, h2 (b, S, d') and the score (b, S, 1)."""
    h1 = F.linear(x, w1).relu_()
    h2 = F.linear(h1, w2).relu_()
    score = torch.sigmoid(F.linear(h2, w3))
    return h1, h2, score


class _KnowledgeAttentionFunction(torch.autograd.Function):
    """pi(h, r) = sigmoid(w3 relu(w2 relu(w1 [e_h || e_r]))) of (B, S) triples, one op that keeps nothing
    but the two index tensors: backward gathers [e_h || e_r] again from the tables and recomputes the MLP,
    per chunk of the batch (one chunk off the CPU), so its gradients are fp32's (up to rounding).

    Why recompute here: the MLP has 2d -> d' -> d' -> 1 units per triple, and what a compressed copy keeps of
    it (both hidden layers at 2 bits, their 1-bit masks, the score's square) was 85% of a 2-bit CKAN step
    (Last.FM: 21.2 of 24.9 MB). Recomputing costs two (b S, 2d) x (2d, d') and (b S, d') x (d', d')
    products per backward, against quantizing and packing those layers in forward and unpacking them in
    backward. Until session 16 the op kept them quantized (and, since session 15, gathered its input
    again).
    """

    @staticmethod
    def forward(ctx, heads, relations, entity, relation, w1, w2, w3):
        # heads, relations: (B, S) int; entity: (N, d); relation: (R, d); w1: (d', 2d); w2: (d', d'); w3: (1, d')
        # -> (B, S)
        batch, size = heads.shape
        wide_heads, wide_relations = gather_index(heads), gather_index(relations)
        parts = row_chunks(batch, size * w1.shape[1], entity, per_thread=False)
        scores = []
        for part in parts:
            x = _attention_input(entity, relation, rows_of(wide_heads, part), rows_of(wide_relations, part))
            scores.append(_attention_layers(x, w1, w2, w3)[2].squeeze(-1))  # (b, S)
        ctx.parts = parts
        save(ctx, keep_index(heads, entity.shape[0]), keep_index(relations, relation.shape[0]), entity, relation, w1, w2, w3)
        return joined(scores)

    @staticmethod
    @first_order
    def backward(ctx, grad_score):
        heads, relations, entity, relation, w1, w2, w3 = load(ctx)
        need = ctx.needs_input_grad
        dtype = grad_score.dtype
        heads, relations = heads.long(), relations.long()
        entity, relation = as_dtype(entity, dtype), as_dtype(relation, dtype)
        w1, w2, w3 = as_dtype(w1, dtype), as_dtype(w2, dtype), as_dtype(w3, dtype)
        d = entity.shape[1]
        grads = {}  # parameter index -> gradient, summed over the chunks
        if need[2]:
            grads[2] = torch.zeros_like(entity)
        if need[3]:
            grads[3] = torch.zeros_like(relation)

        def add(index: int, value: torch.Tensor) -> None:
            grads[index] = value if index not in grads else grads[index].add_(value)

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, t.shape[-1])

        for part in ctx.parts:
            chunk_heads, chunk_relations = rows_of(heads, part), rows_of(relations, part)
            x = _attention_input(entity, relation, chunk_heads, chunk_relations)  # (b, S, 2d)
            h1, h2, score = _attention_layers(x, w1, w2, w3)
            g3 = rows_of(grad_score, part).unsqueeze(-1) * score * (1.0 - score)  # (b, S, 1): through the sigmoid
            del score
            if need[6]:
                add(6, flat(g3).t() @ flat(h2))
            g2 = (g3 * w3).mul_(h2 > 0)  # (b, S, d'): through w3 and the second ReLU
            del g3, h2
            if need[5]:
                add(5, flat(g2).t() @ flat(h1))
            g1 = (g2 @ w2).mul_(h1 > 0)  # (b, S, d')
            del g2, h1
            if need[4]:
                add(4, flat(g1).t() @ flat(x))
            del x
            rows = flat(g1)  # (b S, d')
            if need[2]:
                grads[2].index_add_(0, chunk_heads.reshape(-1), rows @ w1[:, :d])
            if need[3]:
                grads[3].index_add_(0, chunk_relations.reshape(-1), rows @ w1[:, d:])
        return (None, None, *(grads.get(i) for i in range(2, 7)))


def knowledge_attention_scores(
    heads: torch.Tensor,
    relations: torch.Tensor,
    entity: torch.Tensor,
    relation: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor,
    config: CompressionConfig | None,
) -> torch.Tensor:
    """CKAN's pi(h, r) = sigmoid(w3 relu(w2 relu(w1 [e_h || e_r]))) -> (B, S) for (B, S) heads and relations.

    Without compression: the plain composition (the fp32 baseline). With it, one op
    (`_KnowledgeAttentionFunction`) that keeps only the indices and recomputes the MLP in backward.
    """
    if not compression_active(config, entity, relation, w1, w2, w3):
        hidden = torch.cat([compressed_embedding(heads, entity), compressed_embedding(relations, relation)], dim=-1)
        hidden = compressed_linear(hidden, w1, None, None, "relu")  # (B, S, d)
        hidden = compressed_linear(hidden, w2, None, None, "relu")  # (B, S, d)
        return compressed_linear(hidden, w3, None, None, "sigmoid").squeeze(-1)  # (B, S)
    return _KnowledgeAttentionFunction.apply(heads, relations, entity, relation, w1, w2, w3)


class CKAN(CTRModel):
    """CKAN with concat (default), sum or pool aggregation over layers.

    Args:
        num_users, num_items, num_entities, num_relations: table sizes (items are entities).
        user_heads, user_relations, user_tails: (num_users, L, S_u) user triple sets.
        item_heads, item_relations, item_tails: (num_items, L, S_i) item triple sets.
        embedding_dim: d. aggregator: "concat", "sum" or "pool".
        l2_weight: exposed as ``weight_decay`` for Adam (CKAN adds no L2 term to its loss).
        user_mask: (num_users,) bool, False for users without a triple set (no training positive);
            the original drops their rows. Kept as the ``user_mask`` buffer; default all True.
        compression: how saved activations are stored in training; None = plain fp32.
        head_bits: minimum code width of the (B, d) operands of the score (`tinykg.models.base.head_config`):
            at 1 bit they stay at 2 bits; None = the compression config's bits everywhere.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_entities: int,
        num_relations: int,
        user_heads,
        user_relations,
        user_tails,
        item_heads,
        item_relations,
        item_tails,
        embedding_dim: int = 64,
        aggregator: str = "concat",
        l2_weight: float = 1e-5,
        user_mask=None,
        compression: CompressionConfig | None = None,
        head_bits: int | None = 2,
    ) -> None:
        super().__init__(compression, head_bits)
        self.num_users = check_count("num_users", num_users)
        self.num_items = check_count("num_items", num_items)
        self.num_entities = check_count("num_entities", num_entities)
        self.num_relations = check_count("num_relations", num_relations)
        self.embedding_dim = check_count("embedding_dim", embedding_dim)
        self.aggregator = check_choice("aggregator", aggregator, AGGREGATORS)
        self.weight_decay = float(l2_weight)

        for prefix, count, triples in (
            ("user", num_users, (user_heads, user_relations, user_tails)),
            ("item", num_items, (item_heads, item_relations, item_tails)),
        ):
            heads = index_buffer(triples[0], num_entities)
            relations = index_buffer(triples[1], num_relations)
            tails = index_buffer(triples[2], num_entities)
            if heads.dim() != 3 or heads.shape[0] != count:
                raise ValueError(f"{prefix} triple sets must have shape ({count}, L, S), got {tuple(heads.shape)}")
            if relations.shape != heads.shape or tails.shape != heads.shape:
                raise ValueError(f"{prefix} heads, relations and tails must have the same shape")
            self.register_buffer(f"{prefix}_heads", heads)  # (U or I, L, S)
            self.register_buffer(f"{prefix}_relations", relations)
            self.register_buffer(f"{prefix}_tails", tails)
        if self.user_heads.shape[1] != self.item_heads.shape[1]:
            raise ValueError(
                f"user and item triple sets need the same number of layers, got "
                f"{self.user_heads.shape[1]} and {self.item_heads.shape[1]}"
            )
        self.register_buffer("user_mask", user_mask_buffer(user_mask, num_users))  # (U,)
        self.num_layers = check_count("num_layers (triple_sets.shape[1])", int(self.user_heads.shape[1]))

        d = embedding_dim
        self.entity_embedding = nn.Parameter(torch.empty(num_entities, d))
        self.relation_embedding = nn.Parameter(torch.empty(num_relations, d))
        self.attention_weights = nn.ParameterList(
            [nn.Parameter(torch.empty(d, 2 * d)), nn.Parameter(torch.empty(d, d)), nn.Parameter(torch.empty(1, d))]
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform everywhere, as the original ``_init_weight``."""
        nn.init.xavier_uniform_(self.entity_embedding)
        nn.init.xavier_uniform_(self.relation_embedding)
        for weight in self.attention_weights:
            nn.init.xavier_uniform_(weight)

    def knowledge_attention(self, heads, relations, tails, config) -> torch.Tensor:
        """sum_j softmax_j(pi(h_j, r_j)) e_{t_j}: heads/relations/tails (B, S) integers (int32, or the buffers'
        narrow dtypes with compression) -> (B, d)."""
        w1, w2, w3 = self.attention_weights
        scores = knowledge_attention_scores(
            heads, relations, self.entity_embedding, self.relation_embedding, w1, w2, w3, config
        )  # (B, S)
        weights = compressed_softmax(scores, -1, config)  # (B, S)
        return gather_aggregate(self.entity_embedding, tails, weights, config=config)  # (B, d)

    def _triples(self, prefix: str, index: torch.Tensor, marked: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(heads, relations, tails), (B, S) each, of every layer's triple set of the users or items
        ``index`` (int32 (B,)), from the ``{prefix}_*`` buffers; with compression (``marked``) marked
        lookups that the ops saving them keep as the buffer and a (B,) row index (`position_rows`)."""
        buffers = [getattr(self, f"{prefix}_{part}") for part in ("heads", "relations", "tails")]
        return [tuple(position_rows(buffers, index, layer, marked)) for layer in range(self.num_layers)]

    def _layers(self, triples, config) -> list[torch.Tensor]:
        # triples: L (heads, relations, tails) of (B, S) -> L vectors (B, d)
        return [self.knowledge_attention(heads, relations, tails, config) for heads, relations, tails in triples]

    def _combine(self, vectors: list[torch.Tensor], config) -> torch.Tensor:
        # vectors: list of (B, d) -> (B, d) or (B, len * d) for concat
        if self.aggregator == "concat":
            return torch.cat(vectors[::-1], dim=-1)  # [e^(L) || ... || e^(0)], as the original
        out = vectors[0]
        for vector in vectors[1:]:
            out = out + vector if self.aggregator == "sum" else vector + compressed_relu(out - vector, config)
        return out

    def forward(self, user_index: torch.Tensor, item_index: torch.Tensor) -> torch.Tensor:
        config = self.active_config
        user_index, item_index = op_index(user_index), op_index(item_index)  # a uint8 index would be a bool mask
        user_triples = self._triples("user", user_index, marked=config is not None)  # L x 3 x (B, S_u)
        item_triples = self._triples("item", item_index, marked=config is not None)  # L x 3 x (B, S_i)

        # layer 0: mean of the heads of the first layer (B, d)
        user_vectors = [gather_aggregate(self.entity_embedding, user_triples[0][0], reduce="mean", config=config)]
        user_vectors += self._layers(user_triples, config)
        item_vectors = [compressed_embedding(op_index(item_index), self.entity_embedding, config)]  # (B, d)
        item_vectors += self._layers(item_triples, config)
        if self.aggregator != "concat":
            item_vectors.append(gather_aggregate(self.entity_embedding, item_triples[0][0], reduce="mean", config=config))
        user = self._combine(user_vectors, config)
        item = self._combine(item_vectors, config)
        return compressed_dot(user, item, self.active_head_config)  # (B,)
