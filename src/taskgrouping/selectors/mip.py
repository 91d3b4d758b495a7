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

``objective="wang"`` is the programme of Wang et al.'s public CelebA notebook instead
(methods.md section 5): exactly B distinct non-empty groups covering every task (at
least once, as in the programme: overlap is on unless ``--no-overlap``), maximising
``sum_g (1 / |g|) sum_{i, k in g} S[i, k]`` (diagonal included). Their bilinear form
``x[i, g] x[k, g] / |g|`` is linear in a group-choice variable per candidate group
(Dantzig-Wolfe: one column per subset, its value the group's term), so with every
subset a candidate (T <= ``exact_max_tasks``) HiGHS solves the programme exactly;
beyond that the candidates come from clustering and the answer is marked inexact.
"""

from __future__ import annotations

import numpy as np

from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors.base import Grouping, SelectSettings
from taskgrouping.selectors.network import (
    InfeasibleSelection,
    all_subsets,
    allowed_groups,
    auto_budget,
    candidate_groups,
    gain_matrix,
    select_subsets,
)


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
    wang = settings.objective == "wang"  # the programme lets a task sit in several groups unless told not to
    overlap = wang if settings.overlap is None else settings.overlap
    budget = n_groups if n_groups is not None else auto_budget(affinity, seed)
    check_feasible(affinity.tasks, budget, overlap, settings)
    if wang:
        return select_wang(affinity, budget, seed, settings, overlap)
    return select_subsets(affinity, budget, seed, settings, overlap, "mip",
                          costs=settings.costs_for(affinity.tasks))


def wang_values(gain: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(C,) each candidate group's term ``(1 / |g|) sum_{i, k in g} S[i, k]`` (diagonal included)."""
    m = members.astype(np.float64)
    return np.einsum("ci,ik,ck->c", m, gain, m) / m.sum(axis=1)


def select_wang(affinity: AffinityMatrix, budget: int, seed: int, settings: SelectSettings,
                overlap: bool) -> Grouping:
    """Wang et al.'s programme: exactly ``budget`` distinct groups covering every task, maximum summed terms.

    A task in several groups (overlap) is served by the group where its own share of
    the term, ``(1 / |g|) sum_{k in g} S[task, k]``, is largest.

    Raises:
        InfeasibleSelection: no ``budget`` distinct allowed groups cover every task (as the constraints ask).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, csr_matrix, vstack

    t = len(affinity.tasks)
    gain = gain_matrix(affinity)
    costs = settings.costs_for(affinity.tasks)
    exact = t <= settings.exact_max_tasks
    members = all_subsets(t) if exact else candidate_groups(affinity, budget, seed)
    members = members[allowed_groups(members, settings, costs)]
    if not overlap and budget > t:
        raise InfeasibleSelection(f"infeasible constraints: {budget} non-empty groups without overlap need at least "
                                  f"{budget} tasks, there are {t}")
    if budget > members.shape[0]:
        raise InfeasibleSelection(f"infeasible constraints: {budget} distinct groups asked, "
                                  f"{members.shape[0]} allowed groups exist")
    value = wang_values(gain, members)
    n_c = members.shape[0]
    cand, task = np.nonzero(members)
    cover = coo_matrix((np.ones(cand.size), (task, cand)), shape=(t, n_c))
    count = coo_matrix((np.ones(n_c), (np.zeros(n_c, int), np.arange(n_c))), shape=(1, n_c))
    upper = np.full(t, np.inf) if overlap else np.ones(t)
    cons = LinearConstraint(csr_matrix(vstack([cover, count])), np.concatenate([np.ones(t), [budget]]),
                            np.concatenate([upper, [budget]]))
    res = milp(-value, constraints=cons, integrality=np.ones(n_c), bounds=Bounds(0, 1),
               options={"time_limit": 120.0})
    if res.status == 2 or res.x is None:
        raise InfeasibleSelection(f"infeasible constraints: no {budget} distinct allowed groups cover every task"
                                  + ("" if overlap else " without overlap"))
    chosen = members[np.flatnonzero(res.x > 0.5)]
    share = np.where(chosen, (chosen.astype(np.float64) @ gain.T) / chosen.sum(axis=1, keepdims=True), -np.inf)
    served = np.argmax(share, axis=0)
    order = sorted(range(chosen.shape[0]), key=lambda g: int(np.flatnonzero(chosen[g])[0]))
    rank = {g: r for r, g in enumerate(order)}
    groups = [[affinity.tasks[i] for i in np.flatnonzero(chosen[g])] for g in order]
    return Grouping(groups=groups, served={affinity.tasks[i]: rank[int(served[i])] for i in range(t)},
                    objective=float(wang_values(gain, chosen).sum()),
                    info={"selector": "mip", "objective": "wang", "exact": exact and res.status == 0,
                          "budget": budget, "overlap": overlap, "candidates": int(n_c), "k": len(groups)})
