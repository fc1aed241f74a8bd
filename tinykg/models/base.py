"""The contract every CTR model of tinykg follows, and the helpers the models share.

A CTR model scores (user, item) pairs:

* ``forward(user_index (B,), item_index (B,)) -> logits (B,)`` (pre-sigmoid scores);
* ``loss(user_index, item_index, label (B,)) -> scalar``: mean BCE-with-logits plus the model's own
  regularisers (L2 where the original adds it to the loss, label smoothness, KG embedding term);
* ``weight_decay``: the L2 the training loop must hand to Adam (CKAN's original regularises that way;
  0 for the others).

Compression (`CompressionConfig`) acts only in training mode: `CTRModel.active_config` returns ``None``
in eval mode, so evaluation is the plain fp32 model. Graph structure lives in buffers with the narrowest
integer dtype that holds it; per-batch index tensors are handed to the tinykg.nn ops as int32, the
smallest dtype PyTorch's gather kernels accept (the ops narrow what they save further).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..compress import CompressionConfig
from ..compress.config import ALLOWED_BITS
from ..compress.packed import narrowest_int_dtype
from ..nn._saved import as_dtype, mark_gathered


def index_buffer(values, num_rows: int) -> torch.Tensor:
    """``values`` (numpy array or tensor of indices in ``[0, num_rows)``) as a tensor in the narrowest
    integer dtype holding ``num_rows - 1``; the dtype follows from the table size, not the data."""
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise TypeError(f"index buffer must hold integers, got {tensor.dtype}")
    if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= num_rows):
        raise ValueError(f"index buffer has values outside [0, {num_rows})")
    return tensor.to(narrowest_int_dtype(max(num_rows - 1, 0))).contiguous()


def user_mask_buffer(mask, num_users: int) -> torch.Tensor:
    """(num_users,) bool: which users have a triple set (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones(num_users, dtype=torch.bool)
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(torch.bool)
    if tuple(mask.shape) != (num_users,):
        raise ValueError(f"user_mask must have shape ({num_users},), got {tuple(mask.shape)}")
    return mask


def op_index(index: torch.Tensor) -> torch.Tensor:
    """A per-batch index as int32 for the gather ops (PyTorch rejects int16/uint8 indices)."""
    return index if index.dtype == torch.int32 else index.to(torch.int32)


def sparse_rows_grad(rows: int, table: torch.Tensor, read_again: bool) -> bool:
    """Whether a lookup of ``rows`` rows of ``table`` (N, d), a representation that another op also reads
    (``read_again``: its dense gradient comes anyway), should give its gradient as a sparse tensor
    (`compressed_embedding`'s ``sparse_grad``): where that is the smaller, ``rows`` rows of values and an int64
    row index each against N rows of values, and in fp32 / fp64, the dtypes whose sparse gradients
    PyTorch's CPU adds into dense ones (fp16 and bf16 do not: "cadd_sparse" not implemented)."""
    n, d = table.shape
    row_bytes = d * table.element_size()
    return read_again and table.dtype in (torch.float32, torch.float64) and rows * (row_bytes + 8) < n * row_bytes


def position_rows(buffers, index: torch.Tensor, position: int, marked: bool) -> list[torch.Tensor]:
    """``[buffer[index, position] for buffer in buffers]``, (B, S) each, for (n, P, S) index buffers of one
    shape (RippleNet's memories per hop, CKAN's triple sets per layer) and an int32 (B,) ``index``.

    ``marked`` (compressed training): looked up as rows ``index * P + position`` (one (B,) tensor shared
    by all buffers) of each buffer seen as an (n * P, S) table, kept in the buffer's narrow dtype and
    marked as that lookup (`mark_gathered`), so that the ops saving them keep the buffer and that row
    index instead. A buffer that cannot be seen as such a table without a copy (not contiguous, e.g.
    after ``load_state_dict(..., assign=True)``, or empty) is looked up directly, unmarked. Otherwise
    int32, as the plain ops index with it.
    """
    rows = index * buffers[0].shape[1] + position if marked else None  # (B,)
    out = []
    for buffer in buffers:
        if marked and buffer.is_contiguous() and buffer.numel():
            table = buffer.view(-1, buffer.shape[-1])
            out.append(mark_gathered(table[rows], table, rows, held=True))
        else:
            out.append(op_index(buffer[index, position]))
    return out


def check_batch(names: tuple[str, ...], *columns: torch.Tensor, sizes: tuple[int, ...] | None = None) -> int:
    """Batch size of a loss's index / label columns: 1-D, equal lengths, at least one row.

    An empty batch would give a NaN mean loss whose gradients reach Adam's state; mismatched lengths would
    broadcast or fail deep inside a gather. ``sizes``: each index column's table size; CPU columns are
    checked against them (a top-K model reads a user's or item's row out of a larger node table, where an
    id past the end silently reads another node's row). Columns on a GPU are not: reading their range back
    would cost a device sync every step, and the training loops check their data once when they load it.
    """
    lengths = []
    for name, column in zip(names, columns):
        if column.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one value per pair), got shape {tuple(column.shape)}")
        lengths.append(column.shape[0])
    if len(set(lengths)) > 1:
        shown = ", ".join(f"{name} {length}" for name, length in zip(names, lengths))
        raise ValueError(f"a batch's columns must have one length, got {shown}")
    if lengths[0] == 0:
        raise ValueError(f"empty batch: the loss needs at least one row ({', '.join(names)} are empty)")
    if sizes is not None:
        for name, column, size in zip(names, columns, sizes):
            if column.device.type == "cpu":
                low, high = (int(v) for v in torch.aminmax(column))  # one pass over the column
                if low < 0 or high >= size:
                    raise ValueError(f"{name} holds ids outside [0, {size}): min {low}, max {high}")
    return lengths[0]


CTR_COLUMNS = ("user_index", "item_index", "label")
BPR_COLUMNS = ("user_index", "pos_index", "neg_index")


def tf_l2(*tensors: torch.Tensor) -> torch.Tensor:
    """TensorFlow's ``l2_loss`` summed over tensors: sum of 0.5 * ||t||^2."""
    return sum(0.5 * t.pow(2).sum() for t in tensors)


def check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def head_config(config: CompressionConfig | None, head_bits: int | None) -> CompressionConfig | None:
    """The config of a model's per-batch scoring head: ``config`` with at least ``head_bits`` bits
    (``head_bits=None``: ``config`` itself).

    The head (the (B, d) user and item vectors whose product is the score, and for the top-K models the
    gathered (B, D') vectors of the BPR and L2 terms) is O(B d) bytes, independent of the graph, yet its
    noise enters the gradient of every parameter. Measured: KGIN on Last.FM, cosine to the fp32 gradient
    0.78 with a 2-bit head, 0.95 with an exact one; KGCN on Last.FM at 1 bit, validation AUC drifted below
    0.5 in 2 of 3 seeds with a 1-bit head and all 3 seeds learned with a 2-bit one (benchmarks/RESULTS.md).
    """
    if config is None or head_bits is None or config.bits >= head_bits:
        return config
    return _with_bits(config, head_bits)


@functools.lru_cache(maxsize=64)
def _with_bits(config: CompressionConfig, bits: int) -> CompressionConfig:
    """One object per (config, bits): the heads ask for it at every step, and ``dataclasses.replace``
    with the config's validation took ~25 us a call (3 a step for KGCN); the saved-copy cache also compares
    configs by identity first."""
    return dataclasses.replace(config, bits=bits)


class CompressedModel(nn.Module):
    """The compression settings every tinykg model holds.

    Args:
        compression: how saved activations are stored in training; None = plain fp32.
        head_bits: minimum code width of the scoring head (`head_config`); None = ``compression.bits``.
    """

    def __init__(self, compression: CompressionConfig | None = None, head_bits: int | None = None) -> None:
        super().__init__()
        if compression is not None and not isinstance(compression, CompressionConfig):
            raise TypeError(f"compression must be a CompressionConfig or None, got {type(compression).__name__}")
        if head_bits is not None and (isinstance(head_bits, bool) or head_bits not in ALLOWED_BITS):
            raise ValueError(f"head_bits must be None or one of {ALLOWED_BITS}, got {head_bits!r}")
        self.compression = compression
        self.head_bits = head_bits

    @property
    def active_config(self) -> CompressionConfig | None:
        """The config the ops get now: the model's in training mode, None (plain fp32) in eval."""
        return self.compression if self.training else None

    @property
    def active_head_config(self) -> CompressionConfig | None:
        """`active_config` with at least ``head_bits`` bits: what the scoring head's ops get."""
        return head_config(self.active_config, self.head_bits)

    def extra_repr(self) -> str:
        return f"compression={self.compression}, head_bits={self.head_bits}"


class CTRModel(CompressedModel):
    """Base class: holds the compression config and the BCE part of the loss.

    Subclasses implement ``forward`` and may override ``regularization`` (terms that need only the
    parameters) or ``loss`` (terms that need the forward's intermediates).
    """

    weight_decay: float = 0.0

    def regularization(self) -> torch.Tensor | float:
        return 0.0

    def loss(self, user_index: torch.Tensor, item_index: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        check_batch(CTR_COLUMNS, user_index, item_index, label)
        logits = self(user_index, item_index)
        return bce(logits, label) + self.regularization()


def bce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits (B,) against 0/1 labels (B,)."""
    return F.binary_cross_entropy_with_logits(logits, as_dtype(label, logits.dtype))
