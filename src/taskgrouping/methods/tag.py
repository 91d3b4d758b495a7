"""TAG: lookahead inter-task affinity during one joint training run (a peer method).

Source: Fifty, Amid, Zhao, Yu, Anil, Finn, "Efficiently Identifying Task Groupings
for Multi-Task Learning", NeurIPS 2021 (arXiv 2109.04617); methods.md section 2.

One model is trained on all tasks. Every ``every`` steps, for each source task i a
lookahead SGD step is taken on the shared (trunk) parameters with task i's gradient
on the current batch, and every task's loss is measured on the same batch::

    Z[j <- i] = 1 - L_j(theta_s - lr * grad_s L_i) / L_j(theta_s)      (row j = receiver)

Z is averaged over the measured steps. The lookahead works on a functional copy, so
the training trajectory is exactly the joint model's (the hooks change nothing).
Cost: one joint training run plus T backward passes and T forward passes per
measured step. Not incremental: a new task means a new run.

Choices (**our choice**, settings below): the lookahead rate ``lookahead_lr`` is
0.1 (Z's ordering is that of the first-order term ``lr <grad L_j, grad L_i> / L_j``
for any small rate); the returned ``gain`` matrix has a zero diagonal (a task alone
gains nothing from a partner; its self-lookahead is returned separately).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from taskgrouping.data.dataset import PreparedData, TaskSpec
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.models.train import (
    MultiTaskModel,
    TrainHooks,
    TrainSettings,
    masked_losses,
    train_group,
)


@dataclass(frozen=True)
class TagSettings:
    """Settings of TAG.

    Attributes:
        every: measure the lookahead affinity every this many optimiser steps.
        lookahead_lr: the SGD rate of the lookahead step.
    """

    every: int = 10
    lookahead_lr: float = 0.1

    def __post_init__(self) -> None:
        """Validate."""
        if self.every < 1 or not self.lookahead_lr > 0:
            raise ValueError(f"TAG needs every >= 1 and lookahead_lr > 0, got {self.every}, {self.lookahead_lr}")


def lookahead_affinity(model: MultiTaskModel, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                       tasks: list[TaskSpec], lr: float) -> np.ndarray:
    """(T, T) lookahead affinity on one batch; row j = receiver, column i = source.

    ``Z[j, i] = 1 - L_j(shared - lr * grad L_i) / L_j(shared)``. Entries whose
    receiver or source has no labelled sample in the batch are NaN.
    """
    shared = dict(model.trunk.named_parameters())
    heads = model.heads

    def losses(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h = functional_call(model.trunk, dict(params), (x,))
        return masked_losses([head(h) for head in heads], y, mask, tasks)

    base = losses(shared)
    labelled = (mask.sum(dim=0) > 0).cpu().numpy()
    t = len(tasks)
    z = np.full((t, t), np.nan)
    names = list(shared)
    for i in range(t):
        if not labelled[i]:
            continue
        grads = torch.autograd.grad(base[i], [shared[k] for k in names], retain_graph=True, allow_unused=True)
        stepped = {k: shared[k].detach() - (lr * g if g is not None else 0.0) for k, g in zip(names, grads, strict=True)}
        with torch.no_grad():
            after = losses(stepped)
        ratio = (after / base.detach()).cpu().numpy()
        z[:, i] = np.where(labelled & (base.detach().cpu().numpy() > 0), 1.0 - ratio, np.nan)
    return z


class _Lookahead(TrainHooks):
    """Accumulates Z every ``every`` steps of the joint training."""

    def __init__(self, tasks: list[TaskSpec], settings: TagSettings) -> None:
        self.tasks, self.settings = tasks, settings
        t = len(tasks)
        self.total = np.zeros((t, t))
        self.count = np.zeros((t, t))

    def before_step(self, model: MultiTaskModel, step: int, x: torch.Tensor, y: torch.Tensor,
                    mask: torch.Tensor) -> None:
        if step % self.settings.every:
            return
        z = lookahead_affinity(model, x, y, mask, self.tasks, self.settings.lookahead_lr)
        ok = np.isfinite(z)
        self.total[ok] += z[ok]
        self.count[ok] += 1


def tag_affinity(data: PreparedData, settings: TagSettings, train: TrainSettings, seed: int,
                 device: str = "cpu") -> tuple[AffinityMatrix, dict[str, Any]]:
    """Train one model on every task of ``data`` and return TAG's mean lookahead affinity.

    Returns:
        (``gain`` matrix, zero diagonal; info with the self-lookahead diagonal, the
        number of measured steps and the joint model's epochs).
    """
    hook = _Lookahead(data.tasks, settings)
    _, results, info = train_group(data, list(range(len(data.tasks))), train, seed, device, hooks=hook)
    with np.errstate(invalid="ignore"):
        z = np.where(hook.count > 0, hook.total / np.maximum(hook.count, 1), 0.0)
    self_lookahead = np.diag(z).copy()
    np.fill_diagonal(z, 0.0)
    return AffinityMatrix(data.task_names, z, "gain"), {
        "measured_steps": int(hook.count.max(initial=0)), "epochs": info["epochs"],
        "self_lookahead": dict(zip(data.task_names, self_lookahead.tolist(), strict=True)),
        "joint_val_loss": float(sum(r["val_loss"] for r in results))}
