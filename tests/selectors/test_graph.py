"""The graph selector: planted communities of very different scales, invariances, --groups N, bad input."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from taskgrouping.api import select
from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors import SelectSettings, get_selector
from taskgrouping.selectors.graph import (
    build_graph,
    merge_chain,
    neighbour_count,
    neighbour_rows,
    select_graph,
)
from taskgrouping.selectors.incremental import incremental_grouping


def mixed_scales(seed, sizes=(4, 12, 5, 4), spreads=(0.02, 1.0, 0.3, 1.2), unrelated=1, dim=8):
    """Distances (L1) of points in planted groups whose spreads differ 60-fold, plus unrelated tasks.

    Group g's centre is 30 along axis g (plus a little jitter); an unrelated task sits on an
    axis of its own, as far from every group as the groups are from each other. Returns
    (affinity, truth).
    """
    rng = np.random.default_rng(seed)
    pts, truth = [], []
    axes = rng.permutation(dim)
    for g, (n, s) in enumerate(zip(sizes, spreads, strict=True)):
        centre = 30.0 * np.eye(dim)[axes[g]] + rng.normal(0, 1.0, dim)
        pts += list(centre + rng.normal(0, s, (n, dim)))
        truth += [g] * n
    for u in range(unrelated):
        pts.append(30.0 * np.eye(dim)[axes[len(sizes) + u]] + rng.normal(0, 1.0, dim))
        truth.append(-1 - u)
    x = np.array(pts)
    d = np.abs(x[:, None, :] - x[None, :, :]).sum(-1)
    order = rng.permutation(len(x))  # names reveal nothing
    names = [f"t{i:02d}" for i in range(len(x))]
    return AffinityMatrix(names, d[np.ix_(order, order)], "distance"), [truth[i] for i in order]


def partition(grouping):
    return {frozenset(g) for g in grouping.groups}


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("sizes, unrelated", [((4, 12, 5, 4), 1), ((2, 12, 5, 4), 0), ((4, 12, 5, 4), 2)])
def test_planted_groups_of_very_different_scales_are_recovered_exactly(seed, sizes, unrelated):
    aff, truth = mixed_scales(seed, sizes=sizes, unrelated=unrelated)
    g = select_graph(aff, None, seed)
    planted = {frozenset(t for t, lab in zip(aff.tasks, truth, strict=True) if lab == x) for x in set(truth) if x >= 0}
    assert planted <= partition(g)  # every planted group exactly
    unrelated = {t for t, lab in zip(aff.tasks, truth, strict=True) if lab < 0}
    # unrelated tasks are never glued to a planted group (two of them may find each other: both are far)
    assert all(set(grp) <= unrelated for grp in g.groups if set(grp) & unrelated)
    if len(unrelated) == 1:
        assert adjusted_rand_score(truth, g.labels(aff.tasks)) == 1.0 and g.info["isolated"] == sorted(unrelated)


def test_same_matrix_and_seed_give_the_same_groups_and_task_order_does_not_matter():
    aff, _ = mixed_scales(3, sizes=(5, 5, 5), spreads=(4.0, 6.0, 8.0), unrelated=0)
    aff = AffinityMatrix(aff.tasks, aff.values + np.random.default_rng(0).uniform(0, 3, aff.values.shape)
                         * (1 - np.eye(15)), "distance")  # noisy enough that the partition is not obvious
    first = select_graph(aff, None, 7)
    assert select_graph(aff, None, 7).groups == first.groups
    rng = np.random.default_rng(1)
    for _ in range(5):
        p = rng.permutation(len(aff.tasks))
        shuffled = AffinityMatrix([aff.tasks[i] for i in p], aff.values[np.ix_(p, p)], "distance")
        assert partition(select_graph(shuffled, None, 7)) == partition(first)
        assert partition(select_graph(shuffled, 4, 7)) == partition(select_graph(aff, 4, 7))


@pytest.mark.parametrize("seed", range(3))
def test_groups_n_gives_exactly_n_groups(seed):
    aff, truth = mixed_scales(seed)
    t = len(aff.tasks)
    for n in range(1, t + 1):
        g = select_graph(aff, n, seed)
        assert len(g.groups) == n and sorted(x for grp in g.groups for x in grp) == sorted(aff.tasks)
    assert adjusted_rand_score(truth, select_graph(aff, len(set(truth)), seed).labels(aff.tasks)) == 1.0


def test_a_gain_and_a_distance_of_the_same_structure_give_the_same_groups():
    for seed in range(4):
        aff, _ = mixed_scales(seed)
        d = aff.values
        base = partition(select_graph(aff, None, seed))
        gain = AffinityMatrix(aff.tasks, 1.0 + d.max() - d, "gain")  # every gain positive
        assert partition(select_graph(gain, None, seed)) == base
        scaled = AffinityMatrix(aff.tasks, 3.0 * d + 5.0 * (1 - np.eye(len(d))), "distance")
        assert partition(select_graph(scaled, None, seed)) == base
        assert partition(select_graph(gain, 3, seed)) == partition(select_graph(aff, 3, seed))


def test_a_gain_matrix_uses_mutual_gains_and_never_joins_a_pair_that_hurts():
    lab = np.repeat([0, 1, 2], 4)
    g = np.where(lab[:, None] == lab[None, :], 0.4, -0.2)
    g[0, 1:4] = -0.5  # task 0 is hurt by its group, which gains from it: mutual 0.4 - 0.5 < 0 ...
    g[1:4, 0] = 0.3   # ... (0.3 - 0.5) / 2 = -0.1, so task 0 goes alone
    np.fill_diagonal(g, 0.0)
    names = [f"g{i:02d}" for i in range(12)]
    out = select_graph(AffinityMatrix(names, g, "gain"), None, 0)
    assert ["g00"] in out.groups and {frozenset(x) for x in out.groups if len(x) > 1} == {
        frozenset(names[1:4]), frozenset(names[4:8]), frozenset(names[8:])}


def test_neighbours_match_a_brute_force_sort_and_k_follows_the_rule():
    aff, _ = mixed_scales(5)
    graph = build_graph(aff)
    t = len(aff.tasks)
    assert graph.k == neighbour_count(t)[0] == max(2, round(np.log(t)))
    assert neighbour_count(16)[0] == 3 and neighbour_count(1000)[0] == 7 and neighbour_count(2)[0] == 1
    rows = neighbour_rows(aff, graph)
    for i, task in enumerate(aff.tasks):
        mine = sorted((r for r in rows if r["task"] == task), key=lambda r: r["rank"])
        brute = sorted((aff.values[i, j], aff.tasks[j]) for j in range(t) if j != i)[: graph.k]
        assert [r["partner"] for r in mine] == [name for _, name in brute]
        assert [r["value"] for r in mine] == pytest.approx([v for v, _ in brute])
        assert all((r["weight"] > 0) == r["edge"] for r in mine)
    # the kernel: exp(-d^2 / (sigma_i sigma_j)) with sigma the (shifted) distance to the k-th neighbour
    (i, j), w = graph.edges[0], graph.weights[0]
    assert w == pytest.approx(np.exp(-graph.d[i, j] ** 2 / (graph.sigma[i] * graph.sigma[j])))


def test_merge_chain_is_average_linkage():
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3))
    d = np.abs(x[:, None] - x[None]).sum(-1)
    ours = merge_chain(np.arange(12), d)
    ref = linkage(squareform(d, checks=False), method="average")
    for n in (2, 3, 5, 8):
        assert adjusted_rand_score(fcluster(ref, n, criterion="maxclust"), ours[12 - n - 1]) == 1.0


def test_a_new_task_joins_its_neighbours_community_and_a_far_one_is_drift():
    aff, truth = mixed_scales(2, unrelated=0)
    old_groups = select_graph(aff, None, 0).groups
    previous = {"groups": old_groups, "served": {t: gi for gi, g in enumerate(old_groups) for t in g}}
    # the new task is a near copy of a member of the loose 12-task group
    host = next(t for t, lab in zip(aff.tasks, truth, strict=True) if lab == 1)
    i = aff.tasks.index(host)
    row = aff.values[i] + 0.05
    d = np.block([[aff.values, row[:, None]], [row[None, :], np.zeros((1, 1))]])
    d[i, -1] = d[-1, i] = 0.05
    new = AffinityMatrix([*aff.tasks, "new"], d, "distance")
    g, info = incremental_grouping(new, previous, None, aff, selector="graph")
    assert info["mode"] == "incremental" and info["placed"] == {"new": previous["served"][host]}
    assert all(g.served[t] == previous["served"][t] for t in aff.tasks)
    # a task far from everything (as far as the groups are from each other): the graph leaves it alone
    far = np.full(len(aff.tasks), float(np.median(aff.values)) * 1.2)
    d2 = np.block([[aff.values, far[:, None]], [far[None, :], np.zeros((1, 1))]])
    g2, info2 = incremental_grouping(AffinityMatrix([*aff.tasks, "far"], d2, "distance"), previous, None, aff,
                                     selector="graph")
    assert g2 is None and info2["reason"].startswith("drift (fit): new task 'far' has no edge in the task graph")
    assert [["far"]] == [x for x in select_graph(AffinityMatrix([*aff.tasks, "far"], d2, "distance"),
                                                 None, 0).groups if "far" in x]


def test_bad_input_is_refused_with_its_reason():
    aff, _ = mixed_scales(0)
    with pytest.raises(InputError, match="--selector graph takes no overlap, size or cost constraints; "
                                         "use one of network, mip"):
        get_selector("graph", SelectSettings(max_group_size=3))
    with pytest.raises(InputError, match=r"--groups 40 is outside 1\.\.26 \(the number of tasks\)"):
        select_graph(aff, 40, 0)
    v = aff.values.copy()
    v[3, :] = v[:, 3] = np.nan
    v[3, 3] = 0.0
    with pytest.raises(InputError, match="--selector graph: the affinity has no finite value for task\\(s\\) 't03'"):
        select_graph(AffinityMatrix(aff.tasks, v, "distance"), None, 0)
    v = aff.values.copy()
    v[1, 2] = v[2, 1] = np.nan
    with pytest.raises(InputError, match="the affinity of tasks 't01' and 't02' is nan"):
        select_graph(AffinityMatrix(aff.tasks, v, "distance"), None, 0)
    with pytest.raises(InputError, match="select: the matrix has NaN or inf values"):  # the Python API checks first
        select(np.where(np.eye(3) > 0, 0.0, np.nan), tasks=["a", "b", "c"], selector="graph", kind="distance")


def test_tiny_inputs():
    one = AffinityMatrix(["a"], np.zeros((1, 1)), "distance")
    assert select_graph(one, None, 0).groups == [["a"]]
    two = AffinityMatrix(["a", "b"], np.array([[0, 1.0], [1.0, 0]]), "distance")
    assert select_graph(two, None, 0).groups in ([["a", "b"]], [["a"], ["b"]])
    assert select_graph(two, 2, 0).groups == [["a"], ["b"]] and select_graph(two, 1, 0).groups == [["a", "b"]]


def test_placing_a_task_by_the_graph_does_not_import_igraph():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from taskgrouping.methods.base import AffinityMatrix\n"
        "from taskgrouping.selectors.incremental import incremental_grouping\n"
        "lab = np.repeat([0, 1], 6); d = np.where(lab[:, None] == lab[None, :], 1.0, 3.0)\n"
        "d = np.pad(d, ((0, 1), (0, 1)), constant_values=3.0); d[-1, :6] = d[:6, -1] = 1.0\n"
        "np.fill_diagonal(d, 0.0); names = [f't{i}' for i in range(13)]\n"
        "prev = {'groups': [names[:6], names[6:12]], 'served': {t: int(i >= 6) for i, t in enumerate(names[:12])}}\n"
        "old = AffinityMatrix(names[:12], d[:12, :12].copy(), 'distance')\n"
        "g, info = incremental_grouping(AffinityMatrix(names, d, 'distance'), prev, None, old, selector='graph')\n"
        "assert info['placed'] == {'t12': 0}, info\n"
        "print('igraph' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_modularity_matches_igraph_and_is_reported():
    import igraph as ig

    from taskgrouping.selectors.graph import graph_modularity

    aff, _ = mixed_scales(4)
    graph = build_graph(aff)
    g = select_graph(aff, None, 0)
    labels = g.labels(aff.tasks)
    ref = ig.Graph(n=len(aff.tasks), edges=graph.edges.tolist()).modularity(labels.tolist(),
                                                                           weights=graph.weights.tolist())
    assert graph_modularity(graph, labels) == pytest.approx(ref, abs=1e-12)
    assert g.info["modularity"] == pytest.approx(ref, abs=1e-12) and g.info["modularity"] > 0.5
    assert select_graph(aff, 1, 0).info["modularity"] == pytest.approx(0.0, abs=1e-12)  # one group: Q = 0


def test_tasks_without_structure_stay_together():
    flat = AffinityMatrix([f"t{i}" for i in range(8)], 1.0 - np.eye(8), "distance")  # every pair equally far
    assert select_graph(flat, None, 0).groups == [flat.tasks]


def test_the_report_states_the_graph_after_an_incremental_regroup():
    from taskgrouping.report import graph_section
    from taskgrouping.tasks.report import graph_summary

    aff, _ = mixed_scales(1, unrelated=0)
    graph = build_graph(aff)
    labels = select_graph(aff, None, 0).labels(aff.tasks)
    rows = neighbour_rows(aff, graph)
    regroup = {"mode": "incremental", "reason": "1 new task joined its nearest group; no drift"}
    summary = graph_summary({"k": 4, "silhouette": 0.5, "regroup": "incremental"}, graph, labels, rows, regroup)
    assert summary["neighbours"] == graph.k and summary["edges"] == len(graph.edges)
    assert summary["chosen"] == "incremental: 1 new task joined its nearest group; no drift"
    assert summary["modularity"] > 0.5 and set(summary["nearest"]) == set(aff.tasks)
    text = "\n".join(graph_section(summary, rows, "distance"))
    assert "None" not in text and f"its {graph.k} nearest partners" in text and "Modularity of the groups" in text
