"""HOA: the pairwise-training oracle (baseline and ground truth for the fast methods).

Source: Standley, Zamir, Chen, Guibas, Malik, Savarese, "Which Tasks Should Be
Learned Together in Multi-task Learning?", ICML 2020; methods.md section 4.

Every task is trained alone and every pair together (each training is one cached
step of the flow, so an interrupted run resumes and added tasks only train their new
pairs). The gain of receiver t from source u is::

    M[t, u] = L_t(t alone) - L_t(t trained with u)        (validation loss)

with a zero diagonal. A group's value for t is the mean of t's pairwise gains with
its partners (the higher-order approximation, which the ``network`` selector
computes). For at most :data:`EXHAUSTIVE_MAX_TASKS` tasks the exhaustive oracle
trains every subset and selects on the measured losses instead.

**Our choice**: gains use the *validation* loss, so the test split stays unseen by
every grouping decision.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from taskgrouping.methods.base import AffinityMatrix

if TYPE_CHECKING:
    from taskgrouping.data.dataset import PreparedData
    from taskgrouping.models.train import TrainSettings

EXHAUSTIVE_MAX_TASKS = 6
"""The all-subsets oracle trains 2^T - 1 models; beyond 6 tasks (63 models) it is refused."""


def check_exhaustive(n_tasks: int) -> None:
    """Refuse the all-subsets oracle above :data:`EXHAUSTIVE_MAX_TASKS` tasks."""
    from taskgrouping.errors import InputError

    if n_tasks > EXHAUSTIVE_MAX_TASKS:
        raise InputError(f"--exhaustive trains every subset: at most {EXHAUSTIVE_MAX_TASKS} tasks, got {n_tasks}")


@dataclass(frozen=True)
class HoaSettings:
    """Settings of HOA.

    Attributes:
        exhaustive: train every subset (T <= 6) and choose groups on measured losses.
    """

    exhaustive: bool = False


def pair_subsets(tasks: list[str]) -> list[list[str]]:
    """Every pair of tasks, in task order."""
    return [[a, b] for a, b in itertools.combinations(tasks, 2)]


def all_task_subsets(tasks: list[str]) -> list[list[str]]:
    """Every non-empty subset, by size then task order."""
    return [list(c) for r in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, r)]


def hoa_gains(tasks: list[str], losses: dict[frozenset[str], dict[str, float]]) -> AffinityMatrix:
    """(T, T) pairwise gains from validation losses of the single and pair models.

    Args:
        losses: member set -> {task: validation loss}; needs every singleton and pair.
    """
    t = len(tasks)
    m = np.zeros((t, t))
    for i, a in enumerate(tasks):
        alone = losses[frozenset([a])][a]
        for j, b in enumerate(tasks):
            if i != j:
                m[i, j] = alone - losses[frozenset([a, b])][a]
    return AffinityMatrix(list(tasks), m, "gain")


def subset_scores(tasks: list[str], losses: dict[frozenset[str], dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Measured scores of every trained subset: (C, T) members and (C, T) gains over training alone.

    ``scores[c, t] = L_t(alone) - L_t(in subset c)`` for members, ``-inf`` otherwise.
    """
    subsets = sorted(losses, key=lambda s: (len(s), sorted(tasks.index(x) for x in s)))
    members = np.array([[x in s for x in tasks] for s in subsets])
    scores = np.full(members.shape, -np.inf)
    for c, s in enumerate(subsets):
        for x in s:
            j = tasks.index(x)
            scores[c, j] = losses[frozenset([x])][x] - losses[s][x]
    return members, scores


def hoa_affinity(data: PreparedData, train: TrainSettings, seed: int, device: str = "cpu") -> AffinityMatrix:
    """In-process HOA: train every task alone and every pair, return the gain matrix.

    The flow runs the same trainings as separate cached steps on Dask; this is the
    library form for notebooks and tests.
    """
    from taskgrouping.models.train import train_group

    tasks = data.task_names
    losses: dict[frozenset[str], dict[str, float]] = {}
    for subset in [[t] for t in tasks] + pair_subsets(tasks):
        _, results, _ = train_group(data, [tasks.index(t) for t in subset], train, seed, device)
        losses[frozenset(subset)] = {r["task"]: r["val_loss"] for r in results}
    return hoa_gains(tasks, losses)
