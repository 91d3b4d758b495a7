import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors import get_selector
from taskgrouping.selectors.gat import knn_graph


def planted(sizes=(4, 4, 3), noise=0.05, seed=0):
    """A distance matrix with planted blocks: within 0.2, between 1.0, plus symmetric noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(labels))
    labels = labels[perm]
    d = np.where(labels[:, None] == labels[None, :], 0.2, 1.0) + noise * rng.random((len(labels),) * 2)
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0)
    return AffinityMatrix([f"t{i}" for i in range(len(labels))], d, "distance"), labels


@pytest.mark.parametrize("name", ["graph", "spectral", "gat"])
@pytest.mark.parametrize("k", [None, 3])
def test_planted_groups_recovered(name, k):
    aff, labels = planted()
    g = get_selector(name)(aff, k, 0)
    assert adjusted_rand_score(labels, g.labels(aff.tasks)) == 1.0
    assert sorted(t for grp in g.groups for t in grp) == sorted(aff.tasks)  # a partition


@pytest.mark.parametrize("name", ["graph", "spectral", "gat"])
def test_deterministic_and_trivial_budgets(name):
    aff, _ = planted(sizes=(3, 3, 3, 3), noise=0.3)
    sel = get_selector(name)
    assert sel(aff, 4, 5).groups == sel(aff, 4, 5).groups
    assert sel(aff, 1, 0).groups == [aff.tasks]
    assert sel(aff, len(aff.tasks), 0).groups == [[t] for t in aff.tasks]


def test_gain_matrices_are_accepted():
    aff, labels = planted()
    gain = AffinityMatrix(aff.tasks, -aff.values, "gain")
    g = get_selector("spectral")(gain, 3, 0)
    assert adjusted_rand_score(labels, g.labels(aff.tasks)) == 1.0


def test_unknown_selector_lists_known():
    with pytest.raises(InputError, match="unknown --selector 'kmeans'; known selectors: graph, spectral, gat"):
        get_selector("kmeans")


def test_knn_graph_degree():
    aff, _ = planted()
    g = knn_graph(aff.similarity(), 3)
    assert all(deg >= 3 for _, deg in g.degree())


def test_affinity_table_roundtrip_and_cohesion():
    aff, labels = planted()
    back = AffinityMatrix.from_table(aff.to_table())
    assert back.tasks == aff.tasks and back.kind == "distance"
    np.testing.assert_array_equal(back.values, aff.values)
    members = [t for t, lab in zip(aff.tasks, labels, strict=True) if lab == 0]
    assert aff.cohesion(members) < 0.5


def test_affinity_table_roundtrip_keeps_order_and_rejects_a_missing_pair():
    import pyarrow as pa

    names = ["z", "a", "m"]
    aff = AffinityMatrix(names, np.arange(9.0).reshape(3, 3), "gain")
    back = AffinityMatrix.from_table(aff.to_table())
    assert back.tasks == names and back.kind == "gain"
    np.testing.assert_array_equal(back.values, aff.values)
    partial = aff.to_table().slice(0, 8)  # the pair (m, m) is missing
    with pytest.raises(ValueError, match=r"no value for pair \('m', 'm'\)"):
        AffinityMatrix.from_table(partial)
    mixed = pa.table({"task_a": ["a", "b"], "task_b": ["b", "a"], "value": [1.0, 2.0], "kind": ["gain", "distance"]})
    with pytest.raises(ValueError, match="mixes kinds"):
        AffinityMatrix.from_table(mixed)


def test_auto_k_past_twelve_groups_on_many_tasks():
    """120 tasks in 24 planted groups: more groups than the eigengap range (12); the k grid finds them."""
    from taskgrouping.selectors.spectral import MAX_AUTO_GROUPS, k_grid

    assert k_grid(30) == [2, 3, 4, 5, 8, 11, 15, 21, 30]
    assert k_grid(30, 21, 1.1) == [21, 23, 25, 28]
    aff, labels = planted(sizes=(5,) * 24, noise=0.3, seed=3)
    g = get_selector("spectral")(aff, None, 0)
    assert len(g.groups) > MAX_AUTO_GROUPS
    assert adjusted_rand_score(labels, g.labels(aff.tasks)) > 0.95


def test_silhouette_matches_scikit_learn_on_random_distances_and_labellings():
    from sklearn.metrics import silhouette_score

    from taskgrouping.selectors.base import silhouette_precomputed

    rng = np.random.default_rng(11)
    for trial in range(40):
        n = int(rng.integers(3, 40))
        x = rng.normal(size=(n, 3))
        d = np.abs(x[:, None, :] - x[None, :, :]).sum(-1)
        if trial % 5 == 0:
            d[:2, :2] = 0.0  # a duplicate pair: a = b = 0 for them
        k = int(rng.integers(2, n)) if n > 2 else 2
        labels = rng.integers(0, k, size=n) * 7  # codes need not be 0..k-1
        if len(set(labels.tolist())) < 2:
            labels[0] = labels[0] + 1
        got = silhouette_precomputed(d, labels)
        want = silhouette_score(d, labels, metric="precomputed")
        assert abs(got - want) < 1e-12, (trial, got, want)


def test_adjusted_rand_matches_scikit_learn_including_degenerate_labelings():
    from taskgrouping.selectors.base import adjusted_rand

    rng = np.random.default_rng(5)
    cases: list[tuple[list[object], list[object]]] = [
        ([0, 0, 0], [1, 1, 1]),              # one cluster each
        ([0, 1, 2], [5, 6, 7]),              # every item alone in both
        ([0, 1, 2], [0, 0, 0]),              # singletons against one cluster
        ([0, 0, 1, 1], [0, 1, 2, 3]),
        (["a"], ["b"]), ([], []),
        (["g1", "g1", "g2"], [3, 3, 4]),     # names against integer codes
    ]
    for _ in range(60):
        n = int(rng.integers(2, 60))
        a = rng.integers(0, int(rng.integers(1, n + 1)), size=n)
        b = a.copy() if rng.random() < 0.2 else rng.integers(0, int(rng.integers(1, n + 1)), size=n)
        cases.append((a.tolist(), b.tolist()))
    for truth, found in cases:
        want = adjusted_rand_score([str(v) for v in truth], [str(v) for v in found])
        assert abs(adjusted_rand(truth, found) - want) < 1e-12, (truth, found)
    with pytest.raises(ValueError, match="labelings of different lengths: 2 and 1"):
        adjusted_rand([0, 1], [0])
