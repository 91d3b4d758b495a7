"""Principled Task Grouping's transfer gains: real optimiser lookahead steps during one joint training.

Source: Wang, Pan, Yu, "Towards Principled Task Grouping for Multi-Task Learning",
arXiv 2402.15328, and their public code (LOGO-CUHKSZ/Principled-Task-Grouping);
methods.md section 5.

One model is trained on all tasks. Every ``every`` optimiser steps, on the current
batch, for every task set ``A`` among the singles ``{i}``, the pairs ``{i, j}`` and the
doubled tasks ``{i, i}`` (``m + m(m+1)/2`` sets), the *real* optimiser step (Adam, with
its moment estimates) is taken on the summed losses of ``A`` (``{i, i}`` weighs task
i twice: a step of the same size as a pair's). Only the shared trunk and the heads of
``A``'s tasks move. Every task's loss is measured again on the same batch, and the
model and optimiser state are restored, so the training trajectory is the joint
model's own.

**The gain (our choice; the public code stores the post-step losses but not how it
turns them into a matrix):**

    S[j, i] = 1 - L_j(after the step on {i, j}) / L_j(after the step on {j, j})   (row j = receiver)

That is, what a step shared with i does for j, compared with a step of the same size
spent on j alone. A plain lookahead on ``{i}`` (TAG's question) mixes two effects:
the transfer, and the fact that any step on a correlated loss helps. The doubled
control removes the second, which is why the doubled sets exist. The diagonal is 0:
a task grouped with itself gains nothing over itself. S is averaged over the measured
steps. The single-task lookaheads ``1 - L_j({i}) / L_j(before)`` are returned in the info
for comparison with TAG.
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
    """

    every: int = 10

    def __post_init__(self) -> None:
        """Validate."""
        if self.every < 1:
            raise ValueError(f"--principled-every must be at least 1, got {self.every}")


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
                      labelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, T) gains ``S[j, i] = 1 - L_j({i, j}) / L_j({j, j})`` and single lookaheads ``1 - L_j({i}) / L_j``.

    NaN where the receiver or the source has no labelled row in the batch (or a loss is 0).
    """
    t = before.size
    s = np.full((t, t), np.nan)
    single = np.full((t, t), np.nan)
    for j in range(t):
        for i in range(t):
            if not (labelled[i] and labelled[j]):
                continue
            control = after[(j, j)][j]
            pair = after[(min(i, j), max(i, j))][j] if i != j else control
            if control > 0:
                s[j, i] = 1.0 - pair / control
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
        s, single = gains_from_losses(before, after, (mask.sum(dim=0) > 0).cpu().numpy())
        for total, count, m in ((self.total, self.count, s), (self.single_total, self.single_count, single)):
            ok = np.isfinite(m)
            total[ok] += m[ok]
            count[ok] += 1


def principled_affinity(data: PreparedData, settings: PrincipledSettings, train: TrainSettings, seed: int,
                        device: str = "cpu") -> tuple[AffinityMatrix, dict[str, Any]]:
    """Train one model on every task of ``data`` and return the mean transfer gains (``gain``, row = receiver)."""
    hook = _Gains(data.tasks, settings)
    _, results, info = train_group(data, list(range(len(data.tasks))), train, seed, device, hooks=hook)
    s = np.where(hook.count > 0, hook.total / np.maximum(hook.count, 1), 0.0)
    single = np.where(hook.single_count > 0, hook.single_total / np.maximum(hook.single_count, 1), 0.0)
    t = len(data.tasks)
    return AffinityMatrix(data.task_names, s, "gain"), {
        "measured_steps": int(hook.count.max(initial=0)), "epochs": info["epochs"],
        "lookahead_steps_per_measurement": t + t * (t + 1) // 2,
        "single_lookahead": single.tolist(),
        "joint_val_loss": float(sum(r["val_loss"] for r in results))}
