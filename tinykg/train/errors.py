"""Errors of the training loops (its own module: `loop` and `graphed` both raise them)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""
