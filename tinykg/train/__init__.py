"""Training loops, evaluation and the one-call runs behind ``tinykg train``.

- `train_ctr` / `train_topk`: split a dataset, build a model with its published hyper-parameters, train,
  evaluate and return the results-file payload (what ``tinykg train --out`` writes).
- `fit_ctr` (with `TrainConfig`) / `fit_topk` (with `TopKConfig`): the loops themselves, for a model and
  splits built by the caller.
- `evaluate_ctr`, `evaluate_topk`, `roc_auc`, `f1_score`: the metrics.
- `distributed`: data-parallel training (``--nproc``, torchrun).
"""

from .builders import build_ctr_model, hyperparameters
from .loop import TrainConfig, TrainingError, TrainResult, evaluate_ctr, fit_ctr
from .metrics import f1_score, roc_auc
from .run import load_or_generate, train_ctr
from .topk import TopKConfig, evaluate_topk, fit_topk, train_topk

__all__ = [
    "TopKConfig", "TrainConfig", "TrainResult", "TrainingError", "build_ctr_model", "evaluate_ctr", "evaluate_topk",
    "f1_score", "fit_ctr", "fit_topk", "hyperparameters", "load_or_generate", "roc_auc", "train_ctr", "train_topk",
]
