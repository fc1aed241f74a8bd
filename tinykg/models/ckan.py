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
backward (torch.maximum keeps both inputs).

Legend: B batch, L layers, S triples per set (S_u for users, S_i for items), d embedding dim.
"""

from __future__ import annotations

import torch
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
from .base import CTRModel, check_choice, check_count, index_buffer, op_index, user_mask_buffer

AGGREGATORS = ("concat", "sum", "pool")


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
        """sum_j softmax_j(pi(h_j, r_j)) e_{t_j}: heads/relations/tails (B, S) int32 -> (B, d)."""
        w1, w2, w3 = self.attention_weights
        head_vectors = compressed_embedding(heads, self.entity_embedding, config)  # (B, S, d)
        relation_vectors = compressed_embedding(relations, self.relation_embedding, config)  # (B, S, d)
        hidden = torch.cat([head_vectors, relation_vectors], dim=-1)  # (B, S, 2d)
        hidden = compressed_linear(hidden, w1, None, config, "relu")  # (B, S, d)
        hidden = compressed_linear(hidden, w2, None, config, "relu")  # (B, S, d)
        scores = compressed_linear(hidden, w3, None, config, "sigmoid").squeeze(-1)  # (B, S)
        weights = compressed_softmax(scores, -1, config)  # (B, S)
        return gather_aggregate(self.entity_embedding, tails, weights, config=config)  # (B, d)

    def _layers(self, heads, relations, tails, config) -> list[torch.Tensor]:
        # heads, relations, tails: (B, L, S) -> L vectors (B, d)
        return [
            self.knowledge_attention(heads[:, layer], relations[:, layer], tails[:, layer], config)
            for layer in range(self.num_layers)
        ]

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
        user_heads = op_index(self.user_heads[user_index])  # (B, L, S_u)
        user_relations = op_index(self.user_relations[user_index])
        user_tails = op_index(self.user_tails[user_index])
        item_heads = op_index(self.item_heads[item_index])  # (B, L, S_i)
        item_relations = op_index(self.item_relations[item_index])
        item_tails = op_index(self.item_tails[item_index])

        # layer 0: mean of the heads of the first layer (B, d)
        user_vectors = [gather_aggregate(self.entity_embedding, user_heads[:, 0], reduce="mean", config=config)]
        user_vectors += self._layers(user_heads, user_relations, user_tails, config)
        item_vectors = [compressed_embedding(op_index(item_index), self.entity_embedding, config)]  # (B, d)
        item_vectors += self._layers(item_heads, item_relations, item_tails, config)
        if self.aggregator != "concat":
            item_vectors.append(gather_aggregate(self.entity_embedding, item_heads[:, 0], reduce="mean", config=config))
        user = self._combine(user_vectors, config)
        item = self._combine(item_vectors, config)
        return compressed_dot(user, item, self.active_head_config)  # (B,)
