"""Principled Task Grouping's transfer gains: real optimiser lookahead steps during one joint training.

Source: Wang, Pan, Yu, "Towards Principled Task Grouping for Multi-Task Learning",
arXiv 2402.15328, and their public code (LOGO-CUHKSZ/Principled-Task-Grouping);
methods.md section 5.

One model is trained on all tasks. Every ``every`` optimiser steps, on the current
batch, for every task set ``A`` among the singles ``{i}``, the pairs ``{i, j}`` and the
doubled tasks ``{i, i}`` (``m + m(m+1)/2`` sets, ``combinations_with_replacement`` of
order 2 as in their collection code), the *real* optimiser step is taken on the summed
losses of ``A``. Only the shared trunk and the heads of ``A``'s tasks move. Every
task's loss is measured again on the same batch, and the model and optimiser state are
restored, so the training trajectory is the joint model's own.

**The optimiser (as their CelebA collection, ``celeba-ours-collect.py``):** the
collection training and every lookahead use SGD with momentum 0.9 (``optimizer="sgd"``,
the default). With Adam (``optimizer="adam"``, kept for comparison) the step is mostly
the moment estimate: the new gradient enters it with weight 0.1 and is then divided by
its running scale, so every set's step is nearly the same and the gains were about
1e-4 everywhere.

**The gain (our choice; the public code stores the post-step losses but not how it
turns them into a matrix):**

    S[j, i] = 1 - L_j(after the step on {i, j}) / L_j(after the step on {j})   (row j = receiver)

what adding i to j's step does for j. To first order (plain SGD, learning rate lr) it
is ``lr g_i . g_j / L_j``: the gradients' alignment, positive for tasks that help each
other and negative for those that conflict. The diagonal is 0. ``control="doubled"``
compares with the step on ``{j, j}`` instead (a step of the same total weight); to first
order that subtracts ``lr |g_j|^2 / L_j`` from every gain of receiver j, which kept
nearly every gain negative, so every selector served every task alone. S is averaged
over the measured steps. The single-task lookaheads ``1 - L_j({i}) / L_j(before)``
(TAG's quantity) are returned in the info for comparison.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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
class PrincipledSettings:
    """Settings of the principled gains.

    Attributes:
        every: measure the gains every this many optimiser steps (as TAG's ``every``).
        optimizer: ``sgd`` (SGD with ``momentum``, learning rate ``lr``: the paper's collection
            training) or ``adam`` (the training settings' Adam and learning rate).
        lr, momentum: SGD's learning rate and momentum.
        control: what the pair step is compared with: the receiver's own step ``{j}``
            (``single``) or the doubled step ``{j, j}`` (``doubled``).
    """

    every: int = 10
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    control: str = "single"

    def __post_init__(self) -> None:
        """Validate."""
        if self.every < 1:
            raise ValueError(f"--principled-every must be at least 1, got {self.every}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"principled optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.control not in ("single", "doubled"):
            raise ValueError(f"principled control must be 'single' or 'doubled', got {self.control!r}")
        if not self.lr > 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"principled SGD needs lr > 0 and 0 <= momentum < 1, got {self.lr}, {self.momentum}")

    def train_settings(self, train: TrainSettings) -> TrainSettings:
        """The collection training's settings: ``train`` with this optimiser."""
        from dataclasses import replace

        if self.optimizer == "adam":
            return replace(train, optimizer="adam")
        return replace(train, optimizer="sgd", lr=self.lr, momentum=self.momentum)


def task_sets(t: int) -> list[tuple[int, ...]]:
    """The lookahead sets of one measurement: singles, pairs i < j, then doubles (i, i)."""
    singles: list[tuple[int, ...]] = [(i,) for i in range(t)]
    return singles + [(i, j) for i in range(t) for j in range(i + 1, t)] + [(i, i) for i in range(t)]


def set_loss(model: MultiTaskModel, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, tasks: list[TaskSpec],
             members: tuple[int, ...]) -> torch.Tensor:
    """The summed loss of a task set (a doubled task counts twice); only its members' heads enter the graph."""
    h = model.trunk(x)
    total = h.new_zeros(())
    for i in members:
        total = total + masked_losses([model.heads[i](h)], y[:, i : i + 1], mask[:, i : i + 1], [tasks[i]])[0]
    return total


def lookahead_losses(model: MultiTaskModel, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                     mask: torch.Tensor, tasks: list[TaskSpec]) -> tuple[np.ndarray, dict[tuple[int, ...], np.ndarray]]:
    """Every task's loss on the batch before, and after the real optimiser step on each set of :func:`task_sets`.

    The model's parameters and buffers and the optimiser's state are restored after each step.
    """
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    with torch.no_grad():
        before = masked_losses(model(x), y, mask, tasks).cpu().numpy()
    after: dict[tuple[int, ...], np.ndarray] = {}
    for members in task_sets(len(tasks)):
        optimizer.zero_grad(set_to_none=True)
        set_loss(model, x, y, mask, tasks, members).backward()
        optimizer.step()  # heads outside the set have no gradient: Adam leaves them (and their moments) alone
        with torch.no_grad():
            after[members] = masked_losses(model(x), y, mask, tasks).cpu().numpy()
        model.load_state_dict(model_state)
        # a fresh copy each time: load_state_dict may keep the given tensors, which the next step updates in place
        optimizer.load_state_dict(copy.deepcopy(opt_state))
    optimizer.zero_grad(set_to_none=True)
    return before, after


def gains_from_losses(before: np.ndarray, after: dict[tuple[int, ...], np.ndarray],
                      labelled: np.ndarray, control: str = "single") -> tuple[np.ndarray, np.ndarray]:
    """(T, T) gains ``S[j, i] = 1 - L_j({i, j}) / L_j(control)`` and single lookaheads ``1 - L_j({i}) / L_j``.

    The control is the step on ``{j}`` (``single``) or on ``{j, j}`` (``doubled``). NaN where
    the receiver or the source has no labelled row in the batch (or a loss is 0).
    """
    t = before.size
    s = np.full((t, t), np.nan)
    single = np.full((t, t), np.nan)
    for j in range(t):
        for i in range(t):
            if not (labelled[i] and labelled[j]):
                continue
            ref = after[(j, j)][j] if control == "doubled" else after[(j,)][j]
            pair = after[(min(i, j), max(i, j))][j] if i != j else ref
            if ref > 0:
                s[j, i] = 1.0 - pair / ref
            if before[j] > 0:
                single[j, i] = 1.0 - after[(i,)][j] / before[j]
    np.fill_diagonal(s, 0.0)
    return s, single


class _Gains(TrainHooks):
    """Accumulates the gains every ``every`` steps of the joint training."""

    def __init__(self, tasks: list[TaskSpec], settings: PrincipledSettings) -> None:
        self.tasks, self.settings = tasks, settings
        t = len(tasks)
        self.total, self.count = np.zeros((t, t)), np.zeros((t, t))
        self.single_total, self.single_count = np.zeros((t, t)), np.zeros((t, t))
        self.optimizer: torch.optim.Optimizer | None = None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def before_step(self, model: MultiTaskModel, step: int, x: torch.Tensor, y: torch.Tensor,
                    mask: torch.Tensor) -> None:
        if step % self.settings.every:
            return
        assert self.optimizer is not None, "train_group attaches its optimiser first"
        before, after = lookahead_losses(model, self.optimizer, x, y, mask, self.tasks)
        s, single = gains_from_losses(before, after, (mask.sum(dim=0) > 0).cpu().numpy(), self.settings.control)
        for total, count, m in ((self.total, self.count, s), (self.single_total, self.single_count, single)):
            ok = np.isfinite(m)
            total[ok] += m[ok]
            count[ok] += 1


def principled_affinity(data: PreparedData, settings: PrincipledSettings, train: TrainSettings, seed: int,
                        device: str = "cpu") -> tuple[AffinityMatrix, dict[str, Any]]:
    """Train one model on every task of ``data`` and return the mean transfer gains (``gain``, row = receiver)."""
    hook = _Gains(data.tasks, settings)
    _, results, info = train_group(data, list(range(len(data.tasks))), settings.train_settings(train), seed, device,
                                   hooks=hook)
    s = np.where(hook.count > 0, hook.total / np.maximum(hook.count, 1), 0.0)
    single = np.where(hook.single_count > 0, hook.single_total / np.maximum(hook.single_count, 1), 0.0)
    t = len(data.tasks)
    return AffinityMatrix(data.task_names, s, "gain"), {
        "measured_steps": int(hook.count.max(initial=0)), "epochs": info["epochs"],
        "lookahead_steps_per_measurement": t + t * (t + 1) // 2,
        "single_lookahead": single.tolist(), "optimizer": settings.optimizer, "control": settings.control,
        "positive_share": float(np.mean(s[~np.eye(t, dtype=bool)] > 0)) if t > 1 else None,
        "joint_val_loss": float(sum(r["val_loss"] for r in results))}
