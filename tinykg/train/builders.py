"""From a dataset and its training split to a ready CTR model, with its published hyper-parameters.

The sampled structures (KGCN neighbour tables, RippleNet ripple sets, CKAN triple sets, the KGNN-LS
label table) are computed from the TRAINING interactions and the KG only, never from validation or test
rows. Override order: ``DEFAULTS[name][dataset_key]``, then ``overrides``; unknown keys are an error.
"""

from __future__ import annotations

import math

from torch import nn

from ..compress import CompressionConfig
from ..data import Dataset, Interactions, ckan_triple_sets, kgcn_neighbors, ripple_sets
from ..models import DEFAULTS, MODELS

# Keys the training loop reads (group_size: the default quantization group of `train_ctr` where a model
# sets one for the dataset); every other key is a model or sampling setting.
TRAINING_KEYS = ("lr", "batch_size", "epochs", "drop_last", "group_size")
DEFAULT_GROUP_SIZE = 256
# At 1 bit every value is rounded to its group's minimum or maximum, so the group's range sets the noise.
# Groups of 64 (0.375 more bits per value) cut what 1 bit lost against fp32 on Last.FM (3 seeds, Recall@20)
# from -12.1% to -4.6% for KGAT and from -17.2% to -6.3% for KGIN (benchmarks/RESULTS.md).
ONE_BIT_GROUP_SIZE = 64


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")


def group_size_for_bits(bits: int) -> int:
    """The library's quantization group at ``bits``: `ONE_BIT_GROUP_SIZE` at 1 bit, else `DEFAULT_GROUP_SIZE`."""
    return ONE_BIT_GROUP_SIZE if bits == 1 else DEFAULT_GROUP_SIZE


def default_group_size(name: str, dataset_key: str, bits: int) -> int | str:
    """The quantization group model ``name`` uses on a dataset at ``bits``: its ``group_size`` setting in
    ``DEFAULTS`` (RippleNet on Book-Crossing: 64), else `group_size_for_bits` (top-K models, unknown keys)."""
    return DEFAULTS.get(name, {}).get(dataset_key, {}).get("group_size", group_size_for_bits(bits))


def hyperparameters(name: str, dataset_key: str = "synthetic", overrides: dict | None = None) -> dict:
    """``DEFAULTS[name][dataset_key]`` updated by ``overrides``: lr, batch_size, epochs, drop_last and the
    model/sampling settings. Unknown model, dataset key or override key -> ValueError."""
    _check_name(name)
    return settings_for(name, DEFAULTS[name], dataset_key, overrides)


def settings_for(name: str, table: dict[str, dict], dataset_key: str, overrides: dict | None) -> dict:
    """``table[dataset_key]`` (a model's published settings per dataset) updated by ``overrides``; an
    unknown dataset key or override key -> ValueError naming the allowed ones."""
    if dataset_key not in table:
        raise ValueError(f"unknown dataset key {dataset_key!r} for {name}; allowed: {', '.join(table)}")
    params = dict(table[dataset_key])
    unknown = sorted(set(overrides or {}) - set(params))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) for {name}: {', '.join(unknown)}; allowed: {', '.join(params)}")
    for key, value in (overrides or {}).items():
        _check_override(name, key, value, params[key])
    params.update(overrides or {})
    return params


# Settings that may be switched off with None (the scoring head then uses the compression config's bits).
_NULLABLE = frozenset({"head_bits"})


def _check_override(name: str, key: str, value, default) -> None:
    """An override has its default's type: bool for bool, int for int, a number >= 0 for float (every float
    setting is a rate, a weight or a probability), text for text, a list of ints for a tuple. The model
    checks ranges and choices beyond that."""
    if value is None and key in _NULLABLE:
        return
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (key == "group_size" and value == "row")
        expected = "an integer" + (" or 'row'" if key == "group_size" else "")
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        expected = "a number >= 0"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "text"
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        expected = "a list of integers, e.g. [64,32,16]"
    else:
        return
    if not ok:
        also = " or null" if key in _NULLABLE else ""
        raise ValueError(f"{name} hyper-parameter {key} must be {expected}{also}, got {value!r}")


def build_ctr_model(
    name: str,
    dataset: Dataset,
    train: Interactions,
    *,
    compression: CompressionConfig | None,
    seed: int,
    overrides: dict | None = None,
    dataset_key: str = "synthetic",
) -> nn.Module:
    """Construct model ``name`` for ``dataset`` with structures sampled (seeded) from ``train`` and the KG."""
    params = hyperparameters(name, dataset_key, overrides)
    kg = dataset.kg
    num_users, num_items = train.num_users, train.num_items
    num_entities = max(kg.num_entities, num_items)
    num_relations = max(kg.num_relations, 1)  # a KG without relations still needs one (self-loop) row
    settings = {k: v for k, v in params.items() if k not in TRAINING_KEYS}

    if name in ("kgcn", "kgnn-ls"):
        adj_entity, adj_relation = kgcn_neighbors(kg, settings["num_neighbors"], seed)
        if name == "kgcn":
            return MODELS[name](
                num_users, num_entities, num_relations, adj_entity, adj_relation, compression=compression, **settings
            )
        return MODELS[name](
            num_users, num_entities, num_relations, adj_entity, adj_relation,
            train.user_index, train.item_index, train.label, compression=compression, **settings,
        )
    if name == "ripplenet":
        sets = ripple_sets(kg, train, settings.pop("num_hops"), settings.pop("num_memory"), seed)
        return MODELS[name](
            num_users, num_entities, num_relations, sets.head_index, sets.rel_type, sets.tail_index,
            user_mask=sets.mask, compression=compression, **settings,
        )
    user_sets, item_sets = ckan_triple_sets(
        kg, train, settings.pop("num_layers"), settings.pop("user_set_size"), settings.pop("item_set_size"), seed
    )
    return MODELS[name](
        num_users, num_items, num_entities, num_relations,
        user_sets.head_index, user_sets.rel_type, user_sets.tail_index,
        item_sets.head_index, item_sets.rel_type, item_sets.tail_index,
        user_mask=user_sets.mask, compression=compression, **settings,
    )
