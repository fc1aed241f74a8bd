"""``compress_``: swap standard modules for their compressed twins, in place."""

from __future__ import annotations

from torch import nn

from ..compress import CompressionConfig
from .activation import (
    CompressedDropout,
    CompressedLeakyReLU,
    CompressedReLU,
    CompressedSigmoid,
    CompressedSoftmax,
    CompressedTanh,
)
from .linear import CompressedLinear


def _linear(m: nn.Linear, config):
    new = CompressedLinear(m.in_features, m.out_features, bias=m.bias is not None, config=config, device="meta")
    new.weight, new.bias = m.weight, m.bias  # the same Parameter objects: optimizer state stays valid
    return new


_SWAPS = {
    nn.Linear: _linear,
    nn.ReLU: lambda m, c: CompressedReLU(m.inplace, config=c),
    nn.LeakyReLU: lambda m, c: CompressedLeakyReLU(m.negative_slope, m.inplace, config=c),
    nn.Dropout: lambda m, c: CompressedDropout(m.p, m.inplace, config=c),
    nn.Sigmoid: lambda m, c: CompressedSigmoid(config=c),
    nn.Tanh: lambda m, c: CompressedTanh(config=c),
    nn.Softmax: lambda m, c: CompressedSoftmax(m.dim, config=c),
}
_COMPRESSED = (CompressedLinear, CompressedReLU, CompressedLeakyReLU, CompressedDropout, CompressedSigmoid, CompressedTanh, CompressedSoftmax)


def compress_(model: nn.Module, config: CompressionConfig | None) -> nn.Module:
    """Replace nn.Linear, nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Sigmoid, nn.Tanh and nn.Softmax in
    ``model`` by compressed twins that keep the same parameters, training flag and ``state_dict`` keys.

    Modules already compressed get the new ``config`` (``None`` switches compression off). Subclasses of
    the listed modules are left alone: their forward may differ. Returns ``model``.
    """
    if config is not None and not isinstance(config, CompressionConfig):
        raise TypeError(f"compress_ expects a CompressionConfig or None, got {type(config).__name__}")
    for name, child in list(model.named_children()):
        if isinstance(child, _COMPRESSED):
            child.config = config
            continue
        swap = _SWAPS.get(type(child))
        if swap is None:
            compress_(child, config)
            continue
        new = swap(child, config)
        new.train(child.training)
        setattr(model, name, new)
    return model
