"""KGNN-LS: Knowledge-aware Graph Neural Networks with Label Smoothness Regularization for Recommender
Systems (Wang et al., KDD 2019).

Behaviour follows the authors' TF code (hwwang55/KGNN-LS). The feature side is KGCN with the sum
aggregator (see `tinykg.models.kgcn`: user-relation attention w = softmax_K mean_d(u * r), neighbour
vector mean_K(w * e), ReLU then tanh on the last iteration). Label smoothness adds, per training pair
(u, v) with label y:

    initial labels  l_u(e) = y(u, e) if (u, e) is a training pair, else 0.5          (hash table)
                    the target item v itself is held out: l_u(v) = 0.5 and never reset
    propagation     H iterations over the same receptive field with the same weights w:
                    l(e) <- mean_k w_k l(e_k)   for unlabelled (or held-out) entities,
                    l(e) <- l_u(e)              for labelled ones (reset every iteration)
    LS loss         BCE-with-logits(l(v), y)    (the propagated label is used directly as a logit)
    loss            mean BCE + l2_weight * L2 (as KGCN) + ls_weight * LS loss

The label table is a sorted key array ``user * num_entities + item`` with the labels, looked up with
``torch.searchsorted`` (vectorised); on duplicate training pairs the last row wins.

Legend: B batch, K neighbours, H iterations, d embedding dim, n = K^h nodes of hop h per batch row,
P training pairs in the label table.
"""

from __future__ import annotations

import numpy as np
import torch

from ..compress import CompressionConfig
from ..nn import weighted_sum
from .base import CTR_COLUMNS, bce, check_batch, op_index
from .kgcn import KGCN


class KGNNLS(KGCN):
    """KGNN-LS: KGCN (sum aggregator) + label-smoothness regularisation.

    Args:
        num_users, num_entities, num_relations, adj_entity, adj_relation, embedding_dim, num_layers,
            num_neighbors, l2_weight, compression, head_bits: as `KGCN`.
        train_user_index, train_item_index, train_label: the training rows (P,) for the label table.
        ls_weight: weight of the label-smoothness BCE.
    """

    def __init__(
        self,
        num_users: int,
        num_entities: int,
        num_relations: int,
        adj_entity,
        adj_relation,
        train_user_index,
        train_item_index,
        train_label,
        embedding_dim: int = 16,
        num_layers: int = 1,
        num_neighbors: int = 8,
        l2_weight: float = 1e-4,
        ls_weight: float = 0.1,
        compression: CompressionConfig | None = None,
        head_bits: int | None = 2,
    ) -> None:
        super().__init__(
            num_users, num_entities, num_relations, adj_entity, adj_relation, embedding_dim, num_layers,
            num_neighbors, "sum", l2_weight, compression, head_bits,
        )
        self.ls_weight = float(ls_weight)
        keys, labels = self._label_table(train_user_index, train_item_index, train_label)
        self.register_buffer("label_keys", keys)  # (P,) sorted
        self.register_buffer("label_values", labels)  # (P,) uint8 0/1

    def _label_table(self, users, items, labels) -> tuple[torch.Tensor, torch.Tensor]:
        users = torch.as_tensor(np.asarray(users), dtype=torch.int64)
        items = torch.as_tensor(np.asarray(items), dtype=torch.int64)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if not users.shape == items.shape == labels.shape or users.dim() != 1:
            raise ValueError("train_user_index, train_item_index and train_label must be 1-D of equal length")
        if users.numel():
            if int(users.min()) < 0 or int(users.max()) >= self.num_users:
                raise ValueError(f"train_user_index has values outside [0, {self.num_users})")
            if int(items.min()) < 0 or int(items.max()) >= self.num_entities:
                raise ValueError(f"train_item_index has values outside [0, {self.num_entities})")
            if not bool(((labels == 0) | (labels == 1)).all()):
                raise ValueError("train_label must hold only 0 and 1")
        keys = users * self.num_entities + items
        keys, order = torch.sort(keys, stable=True)
        labels = labels[order]
        last = torch.ones_like(keys, dtype=torch.bool)
        last[:-1] = keys[1:] != keys[:-1]  # keep the last row of each run of equal keys
        keys, labels = keys[last], labels[last]
        key_dtype = torch.int32 if self.num_users * self.num_entities <= torch.iinfo(torch.int32).max else torch.int64
        return keys.to(key_dtype), labels.to(torch.uint8)

    def lookup_labels(self, user_index: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        """Training labels of (user, entity) pairs, 0.5 where unknown. user (B,), entities (B, n) -> (B, n)."""
        keys = user_index.to(torch.int64).view(-1, 1) * self.num_entities + entities.to(torch.int64)  # (B, n)
        if self.label_keys.numel() == 0:
            return torch.full(keys.shape, 0.5, device=keys.device)
        keys = keys.to(self.label_keys.dtype)
        position = torch.searchsorted(self.label_keys, keys).clamp_max(self.label_keys.numel() - 1)
        found = self.label_keys[position] == keys
        return torch.where(found, self.label_values[position].float(), 0.5)

    def propagate_labels(self, user_index: torch.Tensor, encoded: dict) -> torch.Tensor:
        """Propagated label of each held-out item (B,), used as a logit."""
        config = self.active_config
        entities, weights = encoded["entities"], encoded["weights"]
        batch, k = user_index.shape[0], self.num_neighbors
        item = entities[0]  # (B, 1)
        initial, reset = [], []
        for hop_entities in entities:  # (B, n)
            known = self.lookup_labels(user_index, hop_entities)
            kept = hop_entities != item  # False where the entity is the held-out item
            initial.append(torch.where(kept, known, 0.5))
            reset.append(kept & (known != 0.5))
        labels = initial
        for iteration in range(self.num_layers):
            next_labels = []
            for hop in range(self.num_layers - iteration):
                neighbors = labels[hop + 1].view(batch, -1, k, 1)  # (B, n, K, 1)
                mixed = weighted_sum(neighbors, weights[hop], reduce="mean", config=config).squeeze(-1)  # (B, n)
                if hop > 0:  # hop 0 is the held-out item: never reset
                    mixed = torch.where(reset[hop], initial[hop], mixed)
                next_labels.append(mixed)
            labels = next_labels
        return labels[0].view(batch)

    def loss(self, user_index: torch.Tensor, item_index: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        check_batch(CTR_COLUMNS, user_index, item_index, label)
        encoded = self.encode(user_index, item_index, fuse_score=True)  # label propagation needs no item vectors
        logits = self.logits(encoded)
        predicted_labels = self.propagate_labels(op_index(user_index), encoded)
        return bce(logits, label) + self.regularization() + self.ls_weight * bce(predicted_labels, label)
