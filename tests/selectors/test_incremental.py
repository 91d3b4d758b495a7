"""Incremental regrouping: new tasks join their nearest group; drift (share, fit, groups, affinity) asks for a full selection."""

import numpy as np

from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors.incremental import incremental_grouping


def _planted(n_per=6, extra=None, seed=0):
    """Distances of two planted clusters (a0.., b0..) plus optional extra tasks given by their distance rows."""
    rng = np.random.default_rng(seed)
    names = [f"a{i}" for i in range(n_per)] + [f"b{i}" for i in range(n_per)]
    lab = np.array([0] * n_per + [1] * n_per)
    d = np.where(lab[:, None] == lab[None, :], 1.0, 3.0) + rng.uniform(0, 0.2, (2 * n_per, 2 * n_per))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    extra = extra or {}
    k = len(extra)
    d = np.pad(d, ((0, k), (0, k)), constant_values=1.0)  # extras are at distance 1 from each other
    for e, (name, row) in enumerate(extra.items()):
        names.append(name)
        d[2 * n_per + e, : 2 * n_per] = d[: 2 * n_per, 2 * n_per + e] = row(lab)
    np.fill_diagonal(d, 0.0)
    return AffinityMatrix(names, d, "distance")


PREVIOUS = {"groups": [[f"a{i}" for i in range(6)], [f"b{i}" for i in range(6)]],
            "served": {**{f"a{i}": 0 for i in range(6)}, **{f"b{i}": 1 for i in range(6)}}}


def test_a_new_task_joins_its_nearest_group_and_the_old_groups_stay():
    old = _planted()
    new = _planted(extra={"n": lambda lab: np.where(lab == 1, 1.05, 3.0)})
    g, info = incremental_grouping(new, PREVIOUS, None, old)
    assert info["mode"] == "incremental" and info["placed"] == {"n": 1} and "no drift" in info["reason"]
    assert g.groups == [PREVIOUS["groups"][0], PREVIOUS["groups"][1] + ["n"]]
    assert g.served["n"] == 1 and all(g.served[t] == PREVIOUS["served"][t] for t in PREVIOUS["served"])
    same, info = incremental_grouping(old, PREVIOUS, None, old)  # nothing new: the groups are kept
    assert same.groups == PREVIOUS["groups"] and info["reason"] == "no new task; the groups are kept"


def test_drift_asks_for_a_full_selection():
    old = _planted()
    far = _planted(extra={"n": lambda lab: np.full(lab.size, 2.5)})  # farther from either group than any member
    g, info = incremental_grouping(far, PREVIOUS, None, old)
    assert g is None and info["reason"].startswith("drift (fit): new task 'n'")
    two = _planted(extra={"n": lambda lab: np.where(lab == 0, 1.0, 3.0), "m": lambda lab: np.where(lab == 0, 1.0, 3.0)})
    g, info = incremental_grouping(two, PREVIOUS, None, old)  # 2 of 14 new: more than 10%
    assert g is None and info["reason"] == "drift (share): 2 of 14 tasks are new (more than 10%)"
    changed = _planted(seed=1)  # same tasks, other distances: other data or settings
    g, info = incremental_grouping(changed, PREVIOUS, None, old)
    assert g is None and info["reason"].startswith("drift (affinity)")
    g, info = incremental_grouping(old, PREVIOUS, 3, old)
    assert g is None and info["reason"] == "--groups 3 differs from the previous 2 groups"
    g, info = incremental_grouping(old, PREVIOUS, None, None)
    assert g is None and "not in the store" in info["reason"]


def test_removed_tasks_are_dropped_and_an_emptied_group_regroups():
    full = _planted()
    keep = [t for t in full.tasks if t != "a0"]
    idx = [full.tasks.index(t) for t in keep]
    fewer = AffinityMatrix(keep, full.values[np.ix_(idx, idx)], "distance")
    g, info = incremental_grouping(fewer, PREVIOUS, None, full)
    assert info["removed"] == ["a0"] and g.groups[0] == [f"a{i}" for i in range(1, 6)]
    gone = [t for t in full.tasks if not t.startswith("a")]
    idx = [full.tasks.index(t) for t in gone]
    g, info = incremental_grouping(AffinityMatrix(gone, full.values[np.ix_(idx, idx)], "distance"), PREVIOUS, None,
                                   full)
    assert g is None and info["reason"] == "drift (groups): a group lost every task it served"


def test_gain_matrices_place_by_the_highest_mean_gain_both_ways():
    lab = np.array([0] * 5 + [1] * 5)
    names = [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    s = np.where(lab[:, None] == lab[None, :], 0.2, -0.1)
    old = AffinityMatrix(names, s, "gain")
    prev = {"groups": [names[:5], names[5:]], "served": {t: int(t[0] == "b") for t in names}}
    grow = np.pad(s, ((0, 1), (0, 1)))
    grow[-1, :-1] = np.where(lab == 0, -0.05, 0.1)
    grow[:-1, -1] = np.where(lab == 0, -0.05, 0.05)
    g, info = incremental_grouping(AffinityMatrix(names + ["n"], grow, "gain"), prev, None, old)
    assert info["placed"] == {"n": 1}
    grow[-1, :-1] = grow[:-1, -1] = -0.1  # hurt by every group
    g, info = incremental_grouping(AffinityMatrix(names + ["n"], grow, "gain"), prev, None, old)
    assert g is None and "negative mean gain with every group" in info["reason"]
