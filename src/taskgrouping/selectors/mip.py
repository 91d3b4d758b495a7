"""Constrained task grouping by mathematical programming (methods.md section 5).

Source: Wang, Pan, Yu, "Towards Principled Task Grouping for Multi-Task Learning",
arXiv 2402.15328. Groups are chosen by a mixed-integer programme that maximises the
within-group gain under resource constraints, solved with an open solver
(``scipy.optimize.milp``, HiGHS).

The objective is the one :mod:`~taskgrouping.selectors.network` maximises (each task
scores the mean gain from its group's other members, or its own diagonal alone),
so the two selectors are comparable; ``mip`` adds the constraints: at most B groups,
at most S tasks per group, a per-group cost budget, and overlap off by default
(**our choice**: the article partitions tasks). Constraints that admit no grouping
are an input error naming the limit at fault, not a solver crash.
"""

from __future__ import annotations

from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors.base import Grouping, SelectSettings
from taskgrouping.selectors.network import InfeasibleSelection, auto_budget, select_subsets


def check_feasible(tasks: list[str], budget: int, overlap: bool, settings: SelectSettings) -> None:
    """Reject constraints that obviously admit no grouping, with the limit at fault named."""
    costs = settings.costs_for(tasks)
    if settings.max_group_cost is not None:
        for task, cost in zip(tasks, costs, strict=True):
            if settings.group_base_cost + cost > settings.max_group_cost + 1e-9:
                raise InfeasibleSelection(
                    f"infeasible constraints: task {task!r} alone costs {settings.group_base_cost + cost:g}, "
                    f"above --max-group-cost {settings.max_group_cost:g}")
    if not overlap and settings.max_group_size is not None and budget * settings.max_group_size < len(tasks):
        raise InfeasibleSelection(
            f"infeasible constraints: {budget} groups of at most {settings.max_group_size} tasks "
            f"cannot hold {len(tasks)} tasks without overlap")


def select_mip(affinity: AffinityMatrix, n_groups: int | None, seed: int,
               settings: SelectSettings | None = None) -> Grouping:
    """Maximise the served within-group gain subject to ``settings``' constraints.

    ``n_groups`` is the limit B on the number of groups (``None``: see
    :func:`~taskgrouping.selectors.network.auto_budget`).

    Raises:
        InfeasibleSelection: the constraints admit no grouping (exit status 2).
    """
    settings = settings or SelectSettings()
    overlap = False if settings.overlap is None else settings.overlap
    budget = n_groups if n_groups is not None else auto_budget(affinity, seed)
    check_feasible(affinity.tasks, budget, overlap, settings)
    return select_subsets(affinity, budget, seed, settings, overlap, "mip",
                          costs=settings.costs_for(affinity.tasks))
