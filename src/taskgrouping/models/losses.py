"""Per-sample losses and metrics shared by probes and grouped training."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from taskgrouping.data.dataset import TaskSpec


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """(n,) loss of each sample: BCE-with-logits (binary), cross-entropy (multi-class) or squared error.

    Args:
        logits: (n, out_dim).
        y: (n,) labels with no NaN (mask missing labels before or after calling).
    """
    if task.kind == "binary":
        return F.binary_cross_entropy_with_logits(logits[:, 0], y, reduction="none")
    if task.kind == "multiclass":
        return F.cross_entropy(logits, y.long(), reduction="none")
    return (logits[:, 0] - y) ** 2


def task_metric(logits: np.ndarray, y: np.ndarray, task: TaskSpec, y_scale: float = 1.0) -> tuple[str, float | None]:
    """The task's headline metric on labelled samples: AUROC (binary), accuracy (multi-class), RMSE (regression).

    AUROC falls back to accuracy when only one class is present. RMSE is in the
    label's original units (``y_scale`` undoes standardisation).
    """
    if y.size == 0:
        return ("none", None)
    if task.kind == "binary":
        if np.unique(y).size == 2:
            from sklearn.metrics import roc_auc_score

            return ("auroc", float(roc_auc_score(y, logits[:, 0])))
        return ("accuracy", float(((logits[:, 0] > 0) == (y > 0.5)).mean()))
    if task.kind == "multiclass":
        return ("accuracy", float((logits.argmax(axis=1) == y.astype(np.int64)).mean()))
    return ("rmse", float(np.sqrt(np.mean((logits[:, 0] - y) ** 2)) * y_scale))
