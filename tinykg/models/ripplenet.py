"""RippleNet: Propagating User Preferences on the Knowledge Graph for Recommender Systems
(Wang et al., CIKM 2018).

Behaviour follows the authors' TF code (hwwang55/RippleNet), in fp32 (the TF code uses float64). A user
is represented by ripple sets: hop-h memories (h_i, r_i, t_i), i = 1..M, sampled once before training
from the user's training positives along directed KG edges (`tinykg.data.ripple_sets`). Relations are
d x d matrices R_r; the item embedding v is refined hop by hop ("plus_transform"):

    hop h       p_i = softmax_i(v^T R_{r_i} h_i),   o_h = sum_i p_i t_i,   v <- W (v + o_h)
    score       y = sigmoid(v^T sum_h o_h)                     (using_all_hops)
    KGE term    kge = sum_h mean_{b,i} sigmoid(h_i^T R_{r_i} t_i)
    L2 term     l2 = sum_h sum_{b,i} (||h_i||^2 + ||t_i||^2 + ||R_{r_i}||_F^2)
                (the TF code writes reduce_mean(reduce_sum(x * x)): the inner sum has no axis, so this is
                the sum over the batch, not a mean, and there is no 1/2)
    loss        mean BCE - kge_weight * kge + l2_weight * l2

Memory layout. The TF code gathers a (B, M, d, d) relation tensor per hop and keeps it for backward.
Here the relation matrices are stored transposed, ``relation_matrix[r] = R_r^T``, so that
* the attention logit uses R_r^T v for every relation at once, ``(B, N_r * d) = linear(v, relation_matrix)``
  (saves v: quantized, except at the first hop, where v is a row of the entity table), then picks row
  (b, r_i) with `batched_lookup` (saves the (B, M) relation index, not the rows b * N_r + r_i of the
  flattened products, which need int32 from 32,768 rows on);
* the KGE term uses R_r t = sum_k t_k relation_matrix[r, k, :], a `block_gather_aggregate` from the
  parameter (saves the narrowed (B, M) relation index and t, the parameter by reference; until
  session 15 it kept the (B, M, d) row index, about half of what a 2-bit step kept);
* rows of the entity table that ops save (the first v, every h and t) are gathered again in backward from
  the table and the lookup's index (`tinykg.compress.gathered`): no bytes, no noise. So are the memory
  indices themselves, rows ``user * H + hop`` of the memory buffers (`position_rows`): what a step keeps of
  them is one (B,) row index per hop. What a 2-bit step keeps is mostly the quantized (B, M, d) rows of
  R_r^T v and of R_r t;
* ||h_i||^2 and ||R_{r_i}||^2 are looked up from per-row squared norms of the tables (exact, saving the
  narrowed index only).
The plain fp32 path runs the same formulation, so the fp32 baseline already avoids the d x d gather for
the attention (it keeps it, as the TF code does, for the KGE term).

Legend: B batch, H hops, M memories per hop (n_memory), d embedding dim, E entities, N_r relations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..compress import CompressionConfig
from ..nn import (
    compressed_dot,
    compressed_embedding,
    compressed_linear,
    compressed_sigmoid,
    compressed_softmax,
    batched_lookup,
    block_gather_aggregate,
    gather_aggregate,
)
from .base import CTR_COLUMNS, CTRModel, bce, check_batch, check_count, index_buffer, op_index, position_rows, user_mask_buffer


class RippleNet(CTRModel):
    """RippleNet with plus_transform item updates and all hops in the prediction.

    Args:
        num_users, num_entities, num_relations: table sizes (items are entities ``0..num_items-1``).
        memories_h, memories_r, memories_t: (num_users, H, M) ripple sets (heads, relations, tails).
        embedding_dim: d. kge_weight, l2_weight: weights of the KGE and L2 terms.
        user_mask: (num_users,) bool, False for users without a ripple set (their memories are
            placeholders; the original drops their rows). Kept as the ``user_mask`` buffer for the
            training loop; default all True.
        compression: how saved activations are stored in training; None = plain fp32.
        head_bits: minimum code width of the (B, d) operands of the score (`tinykg.models.base.head_config`):
            at 1 bit they stay at 2 bits; None = the compression config's bits everywhere.
    """

    def __init__(
        self,
        num_users: int,
        num_entities: int,
        num_relations: int,
        memories_h,
        memories_r,
        memories_t,
        embedding_dim: int = 16,
        kge_weight: float = 0.01,
        l2_weight: float = 1e-7,
        user_mask=None,
        compression: CompressionConfig | None = None,
        head_bits: int | None = 2,
    ) -> None:
        super().__init__(compression, head_bits)
        self.num_users = check_count("num_users", num_users)
        self.num_entities = check_count("num_entities", num_entities)
        self.num_relations = check_count("num_relations", num_relations)
        self.embedding_dim = check_count("embedding_dim", embedding_dim)
        self.kge_weight = float(kge_weight)
        self.l2_weight = float(l2_weight)

        memories_h = index_buffer(memories_h, num_entities)
        memories_r = index_buffer(memories_r, num_relations)
        memories_t = index_buffer(memories_t, num_entities)
        if memories_h.dim() != 3 or memories_h.shape[0] != num_users:
            raise ValueError(f"memories must have shape (num_users={num_users}, H, M), got {tuple(memories_h.shape)}")
        if memories_r.shape != memories_h.shape or memories_t.shape != memories_h.shape:
            raise ValueError("memories_h, memories_r and memories_t must have the same shape")
        self.num_hops, self.num_memory = int(memories_h.shape[1]), int(memories_h.shape[2])
        check_count("num_hops (memories.shape[1])", self.num_hops)
        check_count("num_memory (memories.shape[2])", self.num_memory)
        self.register_buffer("memories_h", memories_h)  # (U, H, M)
        self.register_buffer("memories_r", memories_r)  # (U, H, M)
        self.register_buffer("memories_t", memories_t)  # (U, H, M)
        self.register_buffer("user_mask", user_mask_buffer(user_mask, num_users))  # (U,)

        d = embedding_dim
        self.entity_embedding = nn.Parameter(torch.empty(num_entities, d))
        self.relation_matrix = nn.Parameter(torch.empty(num_relations, d, d))  # [r] = R_r^T
        self.transform_weight = nn.Parameter(torch.empty(d, d))  # v <- transform_weight @ (v + o)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform as TF computes it (for the (N_r, d, d) tensor: fan_in = fan_out = N_r * d)."""
        nn.init.xavier_uniform_(self.entity_embedding)
        bound = math.sqrt(3.0 / (self.num_relations * self.embedding_dim))
        nn.init.uniform_(self.relation_matrix, -bound, bound)
        nn.init.xavier_uniform_(self.transform_weight)

    def _relation_rows(self) -> torch.Tensor:
        """relation_matrix as (N_r * d, d); row r * d + k is column k of R_r (a view of the parameter)."""
        return self.relation_matrix.view(self.num_relations * self.embedding_dim, self.embedding_dim)

    def propagate(self, user_index: torch.Tensor, item_index: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """Logits (B,) and, per hop, the memory indices and head vectors the loss terms reuse."""
        config = self.active_config
        batch, d, num_rel = item_index.shape[0], self.embedding_dim, self.num_relations
        users = op_index(user_index)  # int32: a uint8 index would be read as a bool mask
        marked = config is not None

        item_vectors = compressed_embedding(op_index(item_index), self.entity_embedding, config)  # (B, d)
        responses, hops = [], []
        for hop in range(self.num_hops):
            # (B, M) each; with compression marked lookups of the buffers (`position_rows`), which the ops
            # saving them keep as the buffer and a (B,) row index
            h_idx, r_idx, t_idx = position_rows((self.memories_h, self.memories_r, self.memories_t), users, hop, marked)
            head_vectors = compressed_embedding(h_idx, self.entity_embedding, config)  # (B, M, d)
            # R_r^T v for every relation, then the row of each memory's relation: (B, M, d)
            rtv = compressed_linear(item_vectors, self._relation_rows(), None, config)  # (B, N_r * d)
            rtv = batched_lookup(r_idx, rtv.view(batch, num_rel, d), config)  # (B, M, d)
            logits = compressed_dot(rtv, head_vectors, config)  # (B, M) = v^T R h
            probs = compressed_softmax(logits, -1, config)  # (B, M)
            response = gather_aggregate(self.entity_embedding, t_idx, probs, config=config)  # (B, d)
            item_vectors = compressed_linear(item_vectors + response, self.transform_weight, None, config)  # (B, d)
            responses.append(response)
            hops.append({"head": h_idx, "relation": r_idx, "tail": t_idx, "head_vectors": head_vectors})
        user_vector = responses[0]
        for response in responses[1:]:
            user_vector = user_vector + response  # (B, d)
        return compressed_dot(item_vectors, user_vector, self.active_head_config), hops

    def forward(self, user_index: torch.Tensor, item_index: torch.Tensor) -> torch.Tensor:
        return self.propagate(user_index, item_index)[0]

    def kge_term(self, hops: list[dict]) -> torch.Tensor:
        """sum_h mean_{b,i} sigmoid(h_i^T R_{r_i} t_i)."""
        config = self.active_config
        d = self.embedding_dim
        total = 0.0
        for hop in hops:
            tail_vectors = compressed_embedding(hop["tail"], self.entity_embedding, config)  # (B, M, d)
            # sum_k t_k relation_matrix[r, k, :] over the d rows r * d + k of R_r^T: (B, M, d) = R_r t
            rt = block_gather_aggregate(self._relation_rows(), hop["relation"], d, tail_vectors, config)
            hrt = compressed_dot(hop["head_vectors"], rt, config)  # (B, M)
            total = total + compressed_sigmoid(hrt, config).mean()
        return total

    def l2_term(self, hops: list[dict]) -> torch.Tensor:
        """sum over hops and batch of ||h||^2 + ||t||^2 + ||R||_F^2, from per-row squared norms."""
        config = self.active_config
        entity_sq = self.entity_embedding.pow(2).sum(-1, keepdim=True)  # (E, 1)
        relation_sq = self.relation_matrix.pow(2).sum((1, 2)).unsqueeze(-1)  # (N_r, 1)
        total = 0.0
        for hop in hops:
            total = total + compressed_embedding(hop["head"], entity_sq, config).sum()
            total = total + compressed_embedding(hop["tail"], entity_sq, config).sum()
            total = total + compressed_embedding(hop["relation"], relation_sq, config).sum()
        return total

    def loss(self, user_index: torch.Tensor, item_index: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        check_batch(CTR_COLUMNS, user_index, item_index, label)
        logits, hops = self.propagate(user_index, item_index)
        loss = bce(logits, label)
        if self.kge_weight:
            loss = loss - self.kge_weight * self.kge_term(hops)
        if self.l2_weight:
            loss = loss + self.l2_weight * self.l2_term(hops)
        return loss
