"""BPR-MF (Rendle et al., UAI 2009), the KG-blind top-K baseline, and the contract of tinykg's top-K models.

    score       y(u, i) = e_u . e_i
    loss        mean_b softplus(y(u, j) - y(u, i))                       (BPR; i positive, j sampled negative)
                + l2_weight * (||e_u||^2 + ||e_i||^2 + ||e_j||^2) / (2 B)  (batch embeddings, as KGAT's BPRMF)

A top-K model (`TopKModel`) ranks all items for a user:

* ``loss(user_index (B,), pos_index (B,), neg_index (B,)) -> scalar``: BPR plus the model's regularisers,
  computed in training mode (compressed saved activations when a `CompressionConfig` is set);
* ``representations() -> (users (U, D'), items (I, D'))``: the final embeddings of every user and item
  (the full-graph propagation for KGAT/KGIN); evaluation calls it in eval mode under ``no_grad`` and
  scores ``users @ items.T``.

Memory: the BPR loss saves e_u, e_i and e_j, rows of the parameter tables, which are gathered again in
backward (`tinykg.compress.gathered`): a compressed BPR-MF keeps its three narrowed index tensors and the
(B,) sigmoid of the score gap, nothing quantized, and trains as fp32 does up to rounding.

Legend: B batch, U users, I items, D embedding dim.
"""

from __future__ import annotations

import torch
from torch import nn

from ..compress import CompressionConfig
from ..nn import compressed_bpr_loss, compressed_embedding
from .base import BPR_COLUMNS, CompressedModel, check_batch, check_count, op_index


class TopKModel(CompressedModel):
    """Base class of the top-K models: the compression settings and the shared BPR terms."""

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, user_index: torch.Tensor, pos_index: torch.Tensor, neg_index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BPRMF(TopKModel):
    """Matrix factorisation trained with BPR; ignores the knowledge graph.

    Args:
        num_users, num_items: table sizes. embedding_dim: D.
        l2_weight: weight of the batch-embedding L2 term (KGAT's ``regs[0]``).
        compression: how saved activations are stored in training; None = plain fp32.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 64,
        l2_weight: float = 1e-5,
        compression: CompressionConfig | None = None,
    ) -> None:
        super().__init__(compression)
        self.num_users = check_count("num_users", num_users)
        self.num_items = check_count("num_items", num_items)
        self.embedding_dim = check_count("embedding_dim", embedding_dim)
        self.l2_weight = float(l2_weight)
        self.user_embedding = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_embedding = nn.Parameter(torch.empty(num_items, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding)
        nn.init.xavier_uniform_(self.item_embedding)

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding, self.item_embedding

    def loss(self, user_index: torch.Tensor, pos_index: torch.Tensor, neg_index: torch.Tensor) -> torch.Tensor:
        check_batch(BPR_COLUMNS, user_index, pos_index, neg_index)
        config = self.active_config
        user = compressed_embedding(op_index(user_index), self.user_embedding, config)  # (B, D)
        pos = compressed_embedding(op_index(pos_index), self.item_embedding, config)  # (B, D)
        neg = compressed_embedding(op_index(neg_index), self.item_embedding, config)  # (B, D)
        return compressed_bpr_loss(user, pos, neg, self.l2_weight, config)
