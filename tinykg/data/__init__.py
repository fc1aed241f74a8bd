"""Data layer of tinykg: graph/interaction types, readers, synthetic data, splits and samplers."""

from .errors import DataError
from .graph import Dataset, Interactions, KnowledgeGraph
from .readers import FORMATS, detect_format, load_dataset, read_kgat, read_kgcn, read_lastfm_raw, read_recbole
from .sampling import TripleSets, add_negatives, ckan_triple_sets, kgcn_neighbors, ripple_sets
from .split import ctr_split, topk_split
from .synthetic import SyntheticConfig, make_synthetic

__all__ = [
    "DataError",
    "Dataset",
    "Interactions",
    "KnowledgeGraph",
    "FORMATS",
    "detect_format",
    "load_dataset",
    "read_kgat",
    "read_kgcn",
    "read_lastfm_raw",
    "read_recbole",
    "TripleSets",
    "add_negatives",
    "ckan_triple_sets",
    "kgcn_neighbors",
    "ripple_sets",
    "ctr_split",
    "topk_split",
    "SyntheticConfig",
    "make_synthetic",
]
