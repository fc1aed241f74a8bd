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


def _has_hooks(m: nn.Module) -> bool:
    """Hooks (pruning and weight norm are forward pre-hooks) belong to the module object: a twin would
    run without them."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None))


def compress_(model: nn.Module, config: CompressionConfig | None) -> nn.Module:
    """Replace nn.Linear, nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Sigmoid, nn.Tanh and nn.Softmax in
    ``model`` by compressed twins that keep the same parameters, training flag and ``state_dict`` keys.

    Modules already compressed get the new ``config`` (``None`` switches compression off). A module used
    at several places is replaced by one twin everywhere. Left alone: subclasses of the listed modules
    (their forward may differ) and modules with hooks (pruned or weight-normed ones among them: the hooks
    would not move to the twin). Returns ``model``, or its twin when ``model`` is itself a listed module.
    """
    if config is not None and not isinstance(config, CompressionConfig):
        raise TypeError(f"compress_ expects a CompressionConfig or None, got {type(config).__name__}")
    return _convert(model, config, {})


def _convert(module: nn.Module, config: CompressionConfig | None, done: dict[int, nn.Module]) -> nn.Module:
    """``module``'s replacement (itself where it is kept, with its children converted); ``done`` maps
    ``id`` of every module seen to its replacement, so shared modules get one twin."""
    if id(module) in done:
        return done[id(module)]
    if isinstance(module, _COMPRESSED):
        module.config = config
        done[id(module)] = module
        return module
    swap = _SWAPS.get(type(module))
    if swap is not None and not _has_hooks(module):
        new = swap(module, config)
        new.train(module.training)
        done[id(module)] = new
        return new
    done[id(module)] = module
    for name, child in list(module._modules.items()):  # every slot: named_children() lists a shared module once
        if child is None:
            continue
        new = _convert(child, config, done)
        if new is not child:
            setattr(module, name, new)
    return module
