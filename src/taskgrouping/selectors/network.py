"""Network selection (TAG / HOA): at most B groups, helpers allowed, each task served by its best group.

Source: Standley et al., "Which Tasks Should Be Learned Together in Multi-task
Learning?", ICML 2020, and Fifty et al., NeurIPS 2021 (methods.md section 6).

Given a gain matrix M (row = receiver, column = source, diagonal = the task's score
alone) the score of task t in group G is ``M[t, t]`` if ``G = {t}``, else the mean of
``M[t, u]`` over the other members u of G. Choose at most B groups covering every
task; each task is served by its best chosen group (it may also sit in other groups
as a helper); maximise the sum of served scores. A ``distance`` matrix is used as
the gain ``-D``.

Solved exactly as a MILP over candidate subsets with ``scipy.optimize.milp``
(HiGHS)::

    max  sum_{G, t in G} s(t, G) y[t, G]
    s.t. sum_{G containing t} y[t, G] = 1          every task served once
         y[t, G] <= x[G]                           only by a chosen group
         sum_G x[G] <= B                           at most B groups

Without overlap every member of a chosen group is served by it, so the problem is
set partitioning with one variable per candidate: ``max sum_G value(G) x[G]``,
each task covered exactly once, at most B groups.

Candidates are all subsets for T <= ``exact_max_tasks`` (exact: equal to
enumeration); for larger T they come from hierarchical and spectral clustering at
several levels, and the MILP's answer is improved by local search. Such a result is
marked ``info["exact"] = False``. Size and cost limits are per-group properties, so
they filter the candidates and stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors.base import Grouping, SelectSettings


class InfeasibleSelection(InputError):
    """The constraints admit no grouping (exit status 2 at the CLI)."""


def gain_matrix(affinity: AffinityMatrix) -> np.ndarray:
    """(T, T) gains: the matrix itself for ``gain``, ``-D`` for ``distance``."""
    return affinity.values.copy() if affinity.kind == "gain" else -affinity.values


def served_scores(gain: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(C, T) score of each task in each candidate group; ``-inf`` where the task is not a member.

    Args:
        gain: (T, T), row = receiver.
        members: (C, T) bool, one candidate group per row.
    """
    m = members.astype(np.float64)
    size = m.sum(axis=1, keepdims=True)
    diag = np.diag(gain)[None, :]
    sums = m @ gain.T  # sums[c, t] = sum over u in G_c of gain[t, u]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_others = (sums - diag * m) / (size - 1.0)
    scores = np.where(size == 1.0, diag, mean_others)
    return np.where(members, scores, -np.inf)


def grouping_objective(gain: np.ndarray, members: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum of served scores of a collection of groups, and the serving group of each task.

    A task in no group makes the objective ``-inf``.
    """
    scores = served_scores(gain, members)
    served = np.argmax(scores, axis=0)
    best = scores[served, np.arange(gain.shape[0])]
    return float(best.sum()), served


def all_subsets(t: int) -> np.ndarray:
    """(2^t - 1, t) bool: every non-empty subset of t tasks."""
    masks = np.arange(1, 1 << t, dtype=np.int64)
    return ((masks[:, None] >> np.arange(t)[None, :]) & 1).astype(bool)


@dataclass
class SubsetSolution:
    """The MILP's answer: chosen candidate rows, the serving candidate of each task, the objective."""

    chosen: list[int]
    served: np.ndarray
    objective: float
    optimal: bool = True


def solve_subsets(scores: np.ndarray, budget: int, overlap: bool, time_limit: float = 120.0) -> SubsetSolution:
    """Exact choice among candidate groups (the MILP in this module's docstring).

    Args:
        scores: (C, T) from :func:`served_scores`; ``-inf`` marks non-members.
        budget: at most this many groups.
        overlap: allow a task in several chosen groups (it is served by one).

    Raises:
        InfeasibleSelection: no choice of at most ``budget`` candidates covers every task.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, csr_matrix, vstack

    n_c, t = scores.shape
    cand, task = np.nonzero(np.isfinite(scores))  # one y variable per (candidate, member)
    n_y = cand.size
    if np.any(np.bincount(task, minlength=t) == 0):
        missing = int(np.flatnonzero(np.bincount(task, minlength=t) == 0)[0])
        raise InfeasibleSelection(f"no allowed group contains task #{missing} (check the size and cost limits)")
    if not overlap:
        return _solve_partition(scores, budget, time_limit)
    n = n_c + n_y  # variables: x (candidates) then y (memberships)
    c = np.concatenate([np.zeros(n_c), -scores[cand, task]])
    rows = []
    # every task served exactly once
    served_once = coo_matrix((np.ones(n_y), (task, n_c + np.arange(n_y))), shape=(t, n))
    rows.append((served_once, np.ones(t), np.ones(t)))
    # y[t, G] - x[G] <= 0
    link = coo_matrix((np.concatenate([np.ones(n_y), -np.ones(n_y)]),
                       (np.concatenate([np.arange(n_y)] * 2), np.concatenate([n_c + np.arange(n_y), cand]))),
                      shape=(n_y, n))
    rows.append((link, np.full(n_y, -np.inf), np.zeros(n_y)))
    # at most B groups
    count = coo_matrix((np.ones(n_c), (np.zeros(n_c, int), np.arange(n_c))), shape=(1, n))
    rows.append((count, np.array([-np.inf]), np.array([float(budget)])))
    a = csr_matrix(vstack([r[0] for r in rows]))
    cons = LinearConstraint(a, np.concatenate([r[1] for r in rows]), np.concatenate([r[2] for r in rows]))
    res = milp(c, constraints=cons, integrality=np.ones(n), bounds=Bounds(0, 1),
               options={"time_limit": time_limit})
    if res.status == 2 or res.x is None:
        raise InfeasibleSelection("the selection constraints are infeasible: no grouping of at most "
                                  f"{budget} groups serves every task")
    x = res.x[:n_c] > 0.5
    y = res.x[n_c:] > 0.5
    served = np.full(t, -1)
    served[task[y]] = cand[y]
    used = sorted(set(served.tolist()))  # a chosen group that serves nobody is dropped
    assert set(used) <= set(np.flatnonzero(x).tolist())
    objective = float(scores[served, np.arange(t)].sum())
    return SubsetSolution(chosen=used, served=served, objective=objective, optimal=res.status == 0)


def _solve_partition(scores: np.ndarray, budget: int, time_limit: float) -> SubsetSolution:
    """Without overlap every member of a chosen group is served by it: a set-partitioning MILP.

    ``max sum_G value(G) x[G]`` s.t. each task in exactly one chosen group, at most B
    groups; ``value(G)`` is the sum of its members' scores. One variable per candidate.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, csr_matrix, vstack

    n_c, t = scores.shape
    member = np.isfinite(scores)
    value = np.where(member, scores, 0.0).sum(axis=1)
    cand, task = np.nonzero(member)
    cover = coo_matrix((np.ones(cand.size), (task, cand)), shape=(t, n_c))
    count = coo_matrix((np.ones(n_c), (np.zeros(n_c, int), np.arange(n_c))), shape=(1, n_c))
    a = csr_matrix(vstack([cover, count]))
    cons = LinearConstraint(a, np.concatenate([np.ones(t), [-np.inf]]), np.concatenate([np.ones(t), [budget]]))
    res = milp(-value, constraints=cons, integrality=np.ones(n_c), bounds=Bounds(0, 1),
               options={"time_limit": time_limit})
    if res.status == 2 or res.x is None:
        raise InfeasibleSelection("the selection constraints are infeasible: no partition into at most "
                                  f"{budget} allowed groups covers every task")
    chosen = np.flatnonzero(res.x > 0.5)
    served = np.full(t, -1)
    for c in chosen:
        served[member[c]] = c
    return SubsetSolution(chosen=chosen.tolist(), served=served, objective=float(value[chosen].sum()),
                          optimal=res.status == 0)


def candidate_groups(affinity: AffinityMatrix, budget: int, seed: int) -> np.ndarray:
    """Candidates for large T: singletons, two linkage hierarchies and spectral clusters."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    from taskgrouping.selectors.spectral import cluster_labels

    t = len(affinity.tasks)
    sim = affinity.similarity()
    dist = np.clip(1.0 - sim, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    sets: list[frozenset[int]] = [frozenset([i]) for i in range(t)]
    for method in ("average", "complete"):
        z = linkage(squareform(dist, checks=False), method=method)
        clusters: list[frozenset[int]] = [frozenset([i]) for i in range(t)]
        for a, b, *_ in z:
            clusters.append(clusters[int(a)] | clusters[int(b)])
        sets += clusters[t:]
    for k in sorted({max(2, budget // 2), budget, min(t - 1, 2 * budget)}):
        if 2 <= k < t:
            labels = cluster_labels(sim, k, seed)
            sets += [frozenset(np.flatnonzero(labels == lab).tolist()) for lab in np.unique(labels)]
    unique = sorted(set(sets), key=lambda s: (len(s), sorted(s)))
    members = np.zeros((len(unique), t), dtype=bool)
    for r, s in enumerate(unique):
        members[r, list(s)] = True
    return members


def allowed_groups(members: np.ndarray, settings: SelectSettings, costs: np.ndarray) -> np.ndarray:
    """Which candidate rows respect the size and cost limits."""
    ok = np.ones(members.shape[0], dtype=bool)
    if settings.max_group_size is not None:
        ok &= members.sum(axis=1) <= settings.max_group_size
    if settings.max_group_cost is not None:
        ok &= settings.group_base_cost + members.astype(np.float64) @ costs <= settings.max_group_cost + 1e-9
    return ok


def _group_totals(gain: np.ndarray, w: np.ndarray, n: np.ndarray, dsum: np.ndarray) -> np.ndarray:
    """Served total of disjoint groups: ``W / (n - 1)``, the member's own score for n = 1, 0 when empty."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 1, w / (n - 1.0), np.where(n == 1, dsum, 0.0))


def local_search(gain: np.ndarray, members: np.ndarray, overlap: bool, settings: SelectSettings,
                 costs: np.ndarray, max_passes: int = 50) -> np.ndarray:
    """Improve a collection of groups by single-task moves until no move helps (best move first).

    With overlap a move adds or removes one member of one group, and every task stays
    covered; without, a move takes one task from its group into another. Every move
    is scored in closed form for all tasks at once, O(B T^2) per pass.
    """
    members = members.copy()
    t = gain.shape[0]
    d = np.diag(gain)
    off = gain - np.diag(d)
    max_size = settings.max_group_size or t
    max_cost = np.inf if settings.max_group_cost is None else settings.max_group_cost + 1e-9
    for _ in range(max_passes):
        current, _ = grouping_objective(gain, members)
        best_value, best_move = current + 1e-12, None
        if overlap:
            scores = served_scores(gain, members)
            for g in range(members.shape[0]):
                others = np.delete(scores, g, axis=0)
                best_other = others.max(axis=0) if others.shape[0] else np.full(t, -np.inf)
                m = members[g]
                sign = np.where(m, -1.0, 1.0)
                n_new = m.sum() + sign
                sums = (gain @ m.astype(np.float64))[None, :] + sign[:, None] * gain.T
                member_new = m[None, :] ^ np.eye(t, dtype=bool)
                with np.errstate(divide="ignore", invalid="ignore"):
                    mean = (sums - d[None, :] * member_new) / (n_new[:, None] - 1.0)
                score = np.where(n_new[:, None] == 1, d[None, :], mean)
                score = np.where(member_new, score, -np.inf)
                totals = np.maximum(best_other[None, :], score).sum(axis=1)
                cost_new = settings.group_base_cost + member_new.astype(np.float64) @ costs
                totals[(n_new > max_size) | (cost_new > max_cost) | ~np.isfinite(totals)] = -np.inf
                u = int(np.argmax(totals))
                if totals[u] > best_value:
                    best_value, best_move = float(totals[u]), (g, u)
            if best_move is None:
                break
            g, u = best_move
            members[g, u] = not members[g, u]
        else:
            mf = members.T.astype(np.float64)  # (T, B)
            n = members.sum(axis=1).astype(np.float64)
            dsum = d @ mf
            w = np.einsum("tb,tu,ub->b", mf, off, mf)
            pair = (off + off.T) @ mf  # pair[u, g]: u's within-group gain terms with g's members
            cost = settings.group_base_cost + costs @ mf
            home = np.argmax(members, axis=0)  # (T,) the group of each task
            tot = _group_totals(gain, w, n, dsum)
            rows = np.arange(t)
            # leaving home
            tot_leave = _group_totals(gain, w[home] - pair[rows, home], n[home] - 1, dsum[home] - d)
            # joining g (every g, including home, which is masked out)
            tot_join = _group_totals(gain, w[None, :] + pair, n[None, :] + 1, dsum[None, :] + d[:, None])
            delta = tot_leave[:, None] - tot[home][:, None] + tot_join - tot[None, :]
            bad = ((n[None, :] + 1 > max_size) | (cost[None, :] + costs[:, None] > max_cost)
                   | (home[:, None] == np.arange(members.shape[0])[None, :]))
            delta[bad] = -np.inf
            u_best, g_best = (int(i) for i in np.unravel_index(int(np.argmax(delta)), delta.shape))
            if not delta[u_best, g_best] > 1e-12:
                break
            members[home[u_best], u_best] = False
            members[g_best, u_best] = True
        members = members[members.any(axis=1)]
    return members


def auto_budget(affinity: AffinityMatrix, seed: int) -> int:
    """The group budget for ``--groups auto``: every task for gains; spectral's eigengap choice for distances.

    With ``-D`` as the gain every task scores best alone, so an unlimited budget on a
    distance matrix would always answer "train each task alone".
    """
    t = len(affinity.tasks)
    if affinity.kind == "gain":
        return t
    from taskgrouping.selectors.spectral import select_spectral

    return len(select_spectral(affinity, None, seed).groups)


def select_subsets(affinity: AffinityMatrix, n_groups: int | None, seed: int, settings: SelectSettings,
                   overlap: bool, name: str, costs: np.ndarray | None = None) -> Grouping:
    """Shared body of ``network`` and ``mip``: candidates, the MILP, and (large T) local search."""
    t = len(affinity.tasks)
    budget = n_groups if n_groups is not None else auto_budget(affinity, seed)
    gain = gain_matrix(affinity)
    costs = np.ones(t) if costs is None else costs
    exact = t <= settings.exact_max_tasks
    members = all_subsets(t) if exact else candidate_groups(affinity, budget, seed)
    members = members[allowed_groups(members, settings, costs)]
    solution = solve_subsets(served_scores(gain, members), budget, overlap)
    exact = exact and solution.optimal  # a solver time limit leaves a feasible, unproven answer
    chosen = members[solution.chosen]
    if not exact:
        searched = local_search(gain, chosen, overlap, settings, costs)
        if searched.shape[0] <= budget:
            chosen = searched
    return grouping_from_members(affinity.tasks, gain, chosen,
                                 {"selector": name, "exact": exact, "budget": budget, "overlap": overlap,
                                  "candidates": int(members.shape[0])})


def grouping_from_members(tasks: list[str], gain: np.ndarray | None, chosen: np.ndarray,
                          info: dict[str, object], scores: np.ndarray | None = None) -> Grouping:
    """A :class:`Grouping` from chosen member rows, each task served by its best group.

    Scores come from ``gain`` (the pairwise approximation) or, when given, from
    measured per-group ``scores`` (C, T) of the chosen rows.
    """
    if scores is None:
        assert gain is not None
        scores = served_scores(gain, chosen)
    served = np.argmax(scores, axis=0)
    objective = float(scores[served, np.arange(len(tasks))].sum())
    used = sorted(set(served.tolist()))  # a group that serves nobody (a tie) is dropped
    chosen, served = chosen[used], np.searchsorted(used, served)
    groups = [[tasks[i] for i in np.flatnonzero(row)] for row in chosen]
    order = sorted(range(len(groups)), key=lambda g: int(np.flatnonzero(chosen[g])[0]))
    rank = {g: r for r, g in enumerate(order)}
    return Grouping(groups=[groups[g] for g in order],
                    served={tasks[i]: rank[int(served[i])] for i in range(len(tasks))},
                    objective=objective, info=dict(info) | {"k": len(groups)})


def select_measured(tasks: list[str], members: np.ndarray, scores: np.ndarray, budget: int,
                    overlap: bool = True) -> Grouping:
    """Exact network selection on measured subset scores (HOA's exhaustive oracle)."""
    solution = solve_subsets(scores, budget, overlap)
    return grouping_from_members(tasks, None, members[solution.chosen],
                                 {"selector": "network", "exact": True, "budget": budget, "overlap": overlap,
                                  "candidates": int(members.shape[0]), "oracle": "exhaustive"},
                                 scores=scores[solution.chosen])


def select_network(affinity: AffinityMatrix, n_groups: int | None, seed: int,
                   settings: SelectSettings | None = None) -> Grouping:
    """Network selection (overlap allowed unless ``settings.overlap`` is False)."""
    settings = settings or SelectSettings()
    overlap = True if settings.overlap is None else settings.overlap
    return select_subsets(affinity, n_groups, seed, settings, overlap, "network",
                          costs=settings.costs_for(affinity.tasks))
