"""Compressed autograd ops for KG recommenders: exact forward, quantized saved state.

Each op is a private autograd Function, a public functional (``compressed_*``; plain PyTorch when
``config`` is None or no input needs a gradient) and a Module (compression only in training mode).
"""

from .activation import (
    CompressedDropout,
    CompressedLeakyReLU,
    CompressedReLU,
    CompressedSigmoid,
    CompressedSoftmax,
    CompressedTanh,
    compressed_dropout,
    compressed_leaky_relu,
    compressed_relu,
    compressed_sigmoid,
    compressed_softmax,
    compressed_tanh,
)
from .attention import IndexedAttention, indexed_attention
from .aggregate import (
    BatchedLookup, CompressedEmbedding, GatherAggregate, batched_lookup, block_gather_aggregate, compressed_embedding,
    gather_aggregate, weighted_sum,
)
from .convert import compress_
from .elementwise import CompressedDot, CompressedMul, CompressedNormalize, compressed_dot, compressed_mul, compressed_normalize
from .linear import CompressedLinear, compressed_linear
from .loss import CompressedBPRLoss, compressed_bpr_loss
from .sparse import EdgeAggregate, SparseMatmul, edge_aggregate, sparse_matmul

__all__ = [
    "CompressedDropout", "CompressedLeakyReLU", "CompressedReLU", "CompressedSigmoid", "CompressedSoftmax",
    "CompressedTanh", "compressed_dropout", "compressed_leaky_relu", "compressed_relu", "compressed_sigmoid",
    "compressed_softmax", "compressed_tanh", "CompressedEmbedding", "GatherAggregate", "compressed_embedding",
    "gather_aggregate", "block_gather_aggregate", "BatchedLookup", "batched_lookup", "weighted_sum", "compress_", "CompressedDot", "CompressedMul", "compressed_dot", "CompressedNormalize", "compressed_mul",
    "compressed_normalize", "CompressedLinear", "compressed_linear", "CompressedBPRLoss", "compressed_bpr_loss", "EdgeAggregate", "SparseMatmul",
    "edge_aggregate", "sparse_matmul", "IndexedAttention", "indexed_attention",
]
