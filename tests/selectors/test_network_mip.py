"""The subset selectors against brute-force enumeration, and their constraints."""

import itertools

import numpy as np
import pytest

from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors import SelectSettings, get_selector
from taskgrouping.selectors.network import InfeasibleSelection, grouping_objective, select_subsets


def set_partitions(n, max_blocks):
    """Every partition of range(n) into at most max_blocks blocks (restricted growth strings)."""
    def rec(i, labels, k):
        if i == n:
            yield [[j for j in range(n) if labels[j] == b] for b in range(k)]
            return
        for b in range(min(k + 1, max_blocks)):
            labels.append(b)
            yield from rec(i + 1, labels, max(k, b + 1))
            labels.pop()
    yield from rec(0, [], 0)


def score(gain, t, group):
    if len(group) == 1:
        return gain[t, t]
    return np.mean([gain[t, u] for u in group if u != t])


def brute_force(gain, budget, overlap, max_size=None, costs=None, max_cost=None):
    """Best sum of served scores: partition tasks by serving group; each block picks its best allowed group."""
    t = gain.shape[0]
    costs = np.ones(t) if costs is None else costs

    def ok(group):
        return ((max_size is None or len(group) <= max_size)
                and (max_cost is None or costs[list(group)].sum() <= max_cost + 1e-9))

    supersets = {}
    best = -np.inf
    for blocks in set_partitions(t, budget):
        total = 0.0
        for block in blocks:
            key = tuple(block)
            if key not in supersets:
                rest = [u for u in range(t) if u not in block]
                options = [tuple(sorted(block + list(extra)))
                           for r in range(len(rest) + 1 if overlap else 1)
                           for extra in itertools.combinations(rest, r)]
                vals = [sum(score(gain, s, g) for s in block) for g in options if ok(g)]
                supersets[key] = max(vals) if vals else -np.inf
            total += supersets[key]
        best = max(best, total)
    return best


def random_gain(t, seed):
    rng = np.random.default_rng(seed)
    return AffinityMatrix([f"t{i}" for i in range(t)], rng.normal(size=(t, t)), "gain")


def check_grouping(aff, g, budget, overlap, max_size=None):
    tasks = set(aff.tasks)
    assert set(g.served) == tasks
    assert len(g.groups) <= budget
    for t, gi in g.served.items():
        assert t in g.groups[gi]
    assert set().union(*map(set, g.groups)) == tasks
    if not overlap:
        assert sum(len(x) for x in g.groups) == len(tasks)
    if max_size is not None:
        assert max(len(x) for x in g.groups) <= max_size
    members = np.array([[t in grp for t in aff.tasks] for grp in g.groups])
    value, _ = grouping_objective(aff.values, members)
    assert value == pytest.approx(g.objective)


CASES = [(t, b, seed) for t in range(2, 9) for b in range(1, 5) for seed in range(2)
         if b <= t and not (t == 8 and seed == 1)]  # one seed at T = 8 keeps the enumeration cheap


@pytest.mark.parametrize(("t", "budget", "seed"), CASES)
@pytest.mark.parametrize("name", ["network", "mip"])
def test_exact_selection_equals_enumeration(t, budget, seed, name):
    """network (overlap) and mip (no overlap): the MILP's optimum equals brute force, T <= 8, B <= 4."""
    aff = random_gain(t, 100 * t + 10 * budget + seed)
    g = get_selector(name)(aff, budget, 0)
    overlap = name == "network"
    check_grouping(aff, g, budget, overlap)
    assert g.info["exact"] is True
    assert g.objective == pytest.approx(brute_force(aff.values, budget, overlap), abs=1e-9)


@pytest.mark.parametrize(("overlap", "size", "budget"), [(True, 2, 4), (False, 3, 3), (True, 3, 3)])
def test_size_limit_equals_enumeration(overlap, size, budget):
    aff = random_gain(7, 7)
    settings = SelectSettings(overlap=overlap, max_group_size=size)
    g = get_selector("mip", settings)(aff, budget, 0)
    check_grouping(aff, g, budget, overlap, size)
    assert g.objective == pytest.approx(brute_force(aff.values, budget, overlap, max_size=size))


def test_cost_budget_equals_enumeration():
    aff = random_gain(6, 3)
    costs = (("t0", 3.0), ("t1", 2.0), ("t2", 1.0), ("t3", 1.0), ("t4", 2.5), ("t5", 0.5))
    settings = SelectSettings(max_group_cost=4.0, task_costs=costs)
    g = get_selector("mip", settings)(aff, 4, 0)
    check_grouping(aff, g, 4, False)
    cost = dict(costs)
    assert all(sum(cost[t] for t in grp) <= 4.0 for grp in g.groups)
    assert g.objective == pytest.approx(brute_force(aff.values, 4, False, costs=np.array([c for _, c in costs]),
                                                    max_cost=4.0))


def test_distance_is_used_as_negative_gain():
    rng = np.random.default_rng(0)
    d = rng.random((6, 6))
    d = d + d.T
    np.fill_diagonal(d, 0)
    dist = AffinityMatrix([f"t{i}" for i in range(6)], d, "distance")
    g = get_selector("network")(dist, 2, 0)
    assert g.objective == pytest.approx(brute_force(-d, 2, True))


def test_planted_gains_give_planted_groups():
    labels = np.repeat([0, 1, 2], 3)
    gain = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    np.fill_diagonal(gain, 0.0)
    aff = AffinityMatrix([f"t{i}" for i in range(9)], gain, "gain")
    for name in ("network", "mip"):
        g = get_selector(name)(aff, None, 0)  # auto: unlimited budget on gains
        assert sorted(map(sorted, g.groups)) == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6", "t7", "t8"]]


@pytest.mark.parametrize("overlap", [True, False])
def test_approximate_path_is_flagged_and_close(overlap):
    """Above exact_max_tasks candidates come from clustering plus local search: feasible, near the optimum."""
    aff = random_gain(7, 11)
    exact = select_subsets(aff, 3, 0, SelectSettings(), overlap, "x")
    approx = select_subsets(aff, 3, 0, SelectSettings(exact_max_tasks=4), overlap, "x")
    assert approx.info["exact"] is False and exact.info["exact"] is True
    check_grouping(aff, approx, 3, overlap)
    assert approx.objective <= exact.objective + 1e-9
    assert approx.objective >= exact.objective - 0.25 * abs(exact.objective)


def test_approximate_path_recovers_planted_groups_at_40_tasks():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(5), 8))
    gain = np.where(labels[:, None] == labels[None, :], 1.0, -1.0) + 0.2 * rng.normal(size=(40, 40))
    aff = AffinityMatrix([f"t{i}" for i in range(40)], gain, "gain")
    for name in ("network", "mip"):
        g = get_selector(name)(aff, 5, 0)
        assert g.info["exact"] is False
        assert sorted(map(sorted, (map(int, (t[1:] for t in grp)) for grp in g.groups))) == sorted(
            sorted(np.flatnonzero(labels == k).tolist()) for k in range(5))


def test_infeasible_constraints_are_input_errors():
    aff = random_gain(6, 0)
    with pytest.raises(InputError, match="3 groups of at most 1 tasks cannot hold 6 tasks"):
        get_selector("mip", SelectSettings(max_group_size=1))(aff, 3, 0)
    with pytest.raises(InputError, match="task 't0' alone costs 5, above --max-group-cost 2"):
        get_selector("mip", SelectSettings(max_group_cost=2.0, task_costs=(("t0", 5.0),)))(aff, 3, 0)
    with pytest.raises(InfeasibleSelection, match="infeasible"):  # only the solver can tell
        get_selector("network", SelectSettings(max_group_size=1))(aff, 3, 0)


def test_constraints_rejected_for_clustering_selectors():
    with pytest.raises(InputError, match="--selector spectral takes no overlap, size or cost constraints"):
        get_selector("spectral", SelectSettings(max_group_size=2))
    with pytest.raises(InputError, match="--max-group-size must be at least 1, got 0"):
        SelectSettings(max_group_size=0)
    with pytest.raises(InputError, match="--max-group-cost must be positive, got -1"):
        SelectSettings(max_group_cost=-1)
