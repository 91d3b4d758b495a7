"""The sparse task graph: exact distances on every stored pair, the dense groups on small problems.

References: :func:`~taskgrouping.methods.swola.masked_l1_cross` (the dense pairwise step),
the dense graph selector, and brute-force sums over the T x T matrix.
"""

import numpy as np
import pytest
import torch

from taskgrouping.data.builtins import synthetic
from taskgrouping.data.dataset import prepare
from taskgrouping.errors import InputError
from taskgrouping.methods.pairs import PairCache
from taskgrouping.methods.sparse import (
    NeighbourAffinity,
    community_sums,
    exact_pairs,
    neighbour_affinity,
    sample_norms,
    silhouette_sparse,
    sketch_rows,
    stored_count,
)
from taskgrouping.methods.swola import (
    SwolaSettings,
    affinity_from_distances,
    distances_from_probes,
    masked_l1_cross,
    probe_tasks,
    weighted_rows,
)
from taskgrouping.selectors.graph import select_graph


def _probed(tasks, groups, seed, missing=0.0, samples=128):
    ds = synthetic(tasks=tasks, groups=groups, samples=500, seed=seed, missing=missing)
    data = prepare(ds, seed, samples)
    x, y = data.x[data.probe_idx], data.y[data.probe_idx]
    s = SwolaSettings(hidden=16)
    probes = probe_tasks(x, y, data.tasks, s, seed)
    return ds, x, s, probes


def _sparse(names, x, s, probes, seed, **kw):
    e, m = weighted_rows(probes, x, s, seed)
    t = len(names)
    return neighbour_affinity(names, e.view(t, -1), sample_norms(e), m, s.lr / s.trunks, seed, **kw)


def test_exact_pairs_equal_the_dense_masked_l1():
    rng = np.random.default_rng(0)
    t, n, m = 12, 30, 5
    e = torch.as_tensor(rng.standard_normal((t, n, m)), dtype=torch.float32)
    mask = torch.as_tensor(rng.random((t, n)) > 0.3)
    e[~mask] = 0.0
    dense = masked_l1_cross(e, mask, e, mask).numpy()
    i, j = np.triu_indices(t, 1)
    got = exact_pairs(e.view(t, -1), sample_norms(e), mask, i, j)
    # the dense step sums float32 cdist blocks (about 1e-6 relative error, swola._l1_block);
    # the pairs here sum float32 differences pairwise: both against float64 brute force
    e64, m64 = e.double().numpy(), mask.numpy()
    brute = np.array([np.abs(e64[a][m64[a] & m64[b]] - e64[b][m64[a] & m64[b]]).sum() / (m64[a] & m64[b]).sum()
                      for a, b in zip(i, j, strict=True)])
    np.testing.assert_allclose(got, brute, rtol=1e-6)
    np.testing.assert_allclose(dense[i, j], brute, rtol=5e-6)
    # brute force for one pair: the shared labelled samples only
    a, b = 2, 7
    both = (mask[a] & mask[b]).numpy()
    ref = np.abs(e[a].numpy()[both] - e[b].numpy()[both]).sum() / both.sum()
    np.testing.assert_allclose(got[np.flatnonzero((i == a) & (j == b))[0]], ref, rtol=1e-5)


@pytest.mark.parametrize("missing", [0.0, 0.2])
def test_every_stored_pair_has_the_dense_distance(missing):
    ds, x, s, probes = _probed(30, 5, 1, missing)
    names = ds.task_names
    dense = distances_from_probes(probes, x, s, 1)
    aff, new = _sparse(names, x, s, probes, 1)
    k = stored_count(30)
    assert aff.k == k and new["pairs_computed"] == new["pairs_exact"] > 0
    for i in range(len(names)):
        np.testing.assert_allclose(aff.values[i], dense[i, aff.neighbours[i]], rtol=5e-6)  # the dense step: float32 cdist blocks, ~1e-6
        assert list(aff.values[i]) == sorted(aff.values[i])  # nearest first
        assert i not in aff.neighbours[i]


def test_all_candidates_give_the_true_nearest_and_the_dense_groups():
    """With every pair a candidate, the lists are the exact k nearest and the groups the dense selector's."""
    for seed in (0, 1, 2):
        ds, x, s, probes = _probed(24, 4, seed)
        names = ds.task_names
        t = len(names)
        dense = affinity_from_distances(names, distances_from_probes(probes, x, s, seed))
        aff, _ = _sparse(names, x, s, probes, seed, k=t - 1, c=t - 1)
        key = np.where(np.eye(t, dtype=bool), np.inf, dense.values)
        for i in range(t):
            assert set(aff.neighbours[i, :5]) == set(np.argsort(key[i])[:5])
        want = select_graph(dense, None, seed)
        got = select_graph(aff, None, seed)
        assert got.groups == want.groups, (seed, got.info["chosen"], want.info["chosen"])
        assert got.info["silhouette"] == pytest.approx(want.info["silhouette"], rel=1e-6)


def test_community_sums_equal_the_dense_product_when_every_pair_is_stored():
    rng = np.random.default_rng(3)
    t = 15
    pts = rng.standard_normal((t, 4))
    d = np.abs(pts[:, None] - pts[None]).sum(axis=2)
    order = np.argsort(np.where(np.eye(t, dtype=bool), np.inf, d), axis=1)[:, : t - 1]
    aff = NeighbourAffinity([f"t{i}" for i in range(t)], order, np.take_along_axis(d, order, axis=1))
    labels = rng.integers(0, 4, t)
    sums, sizes, codes = community_sums(aff, labels)
    members = np.eye(codes.max() + 1)[codes]
    np.testing.assert_allclose(sums, d @ members, rtol=1e-12, atol=1e-12)
    from sklearn.metrics import silhouette_score

    assert silhouette_sparse(aff, labels) == pytest.approx(silhouette_score(d, labels, metric="precomputed"))


def test_unstored_pairs_count_as_the_farther_radius():
    """Two tasks stored only with their nearest: the unstored pair is max(r_i, r_j), not 0."""
    aff = NeighbourAffinity(["a", "b", "c"], np.array([[1], [0], [1]]), np.array([[1.0], [1.0], [3.0]]))
    sums, _, _ = community_sums(aff, np.array([0, 0, 0]))
    # a-b stored 1, b-c stored 3, a-c unstored: max(r_a, r_c) = max(1, 3) = 3
    np.testing.assert_allclose(sums[:, 0], [1 + 3, 1 + 3, 3 + 3])


def test_groups_do_not_depend_on_task_order():
    ds, x, s, probes = _probed(40, 8, 4)
    names = ds.task_names
    aff, _ = _sparse(names, x, s, probes, 4)
    perm = np.random.default_rng(0).permutation(len(names))
    aff2, _ = _sparse([names[i] for i in perm], x, s, [probes[i] for i in perm], 4)
    g1 = select_graph(aff, None, 4)
    g2 = select_graph(aff2, None, 4)
    assert sorted(map(sorted, g1.groups)) == sorted(map(sorted, g2.groups))


def test_candidate_recall_of_the_true_nearest():
    """Sketch candidates, then neighbour-of-neighbour rounds, against the dense top-10 on planted tasks.

    Hundreds of tasks here (the bench measures 10,000): the rounds must find what the
    sketch misses, with exact distances only, and still leave most pairs uncomputed.
    """
    ds, x, s, probes = _probed(300, 30, 5, samples=256)
    names = ds.task_names
    dense = distances_from_probes(probes, x, s, 5)
    np.fill_diagonal(dense, np.inf)
    top = np.argsort(dense, axis=1)[:, :10]

    def recall(aff):
        return np.mean([len(set(top[i]) & set(aff.neighbours[i, :10])) / 10 for i in range(len(names))])

    sketch_only, bare = _sparse(names, x, s, probes, 5, c=10, rounds=0)
    aff, new = _sparse(names, x, s, probes, 5, c=10)
    assert new["refine_rounds"] >= 1 and new["pairs_exact"] > bare["pairs_exact"] == new["pairs_candidates"]
    assert recall(aff) >= 0.95 > 0.9 > recall(sketch_only), (recall(aff), recall(sketch_only))
    assert new["pairs_exact"] < 0.25 * 300 * 299 / 2  # far fewer than every pair
    for i in range(len(names)):  # every stored distance is the dense one
        np.testing.assert_allclose(aff.values[i], dense[i, aff.neighbours[i]] * s.lr / s.trunks, rtol=1e-5)
    truth = [ds.ground_truth[t] for t in names]
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, select_graph(aff, None, 5).labels(names)) >= 0.8


def test_refine_pairs_are_the_neighbours_of_neighbours_not_yet_known():
    """Against a brute-force walk over each task's r nearest and theirs."""
    rng = np.random.default_rng(7)
    t, r = 40, 4
    pts = rng.standard_normal((t, 3))
    full = np.abs(pts[:, None] - pts[None]).sum(axis=2)
    a, b = np.triu_indices(t, 1)
    keep = rng.random(len(a)) < 0.3
    a, b = a[keep], b[keep]
    d = full[a, b]
    rank = np.arange(t)
    from taskgrouping.methods.sparse import nearest_lists, refine_pairs

    if (np.bincount(np.concatenate([a, b]), minlength=t) < r).any():
        pytest.skip("a task has fewer than r pairs at this seed")
    nb, _ = nearest_lists(t, a, b, d, r, rank)
    known = {(int(x), int(y)) for x, y in zip(a, b, strict=True)}
    want = set()
    for i in range(t):
        for j in nb[i]:
            for q in nb[j]:
                if q != i:
                    pair = (min(i, int(q)), max(i, int(q)))
                    if pair not in known:
                        want.add(pair)
    ra, rb = refine_pairs(t, a, b, d, rank, r)
    assert list(zip(ra.tolist(), rb.tolist(), strict=True)) == sorted(want)
    assert len(want) > 0


def test_cached_pairs_are_read_not_computed():
    ds, x, s, probes = _probed(30, 5, 6)
    names = ds.task_names
    keys = [f"k{i}" for i in range(30)]
    aff, new = _sparse(names, x, s, probes, 6)
    cache = PairCache().with_pairs(keys, new["a"], new["b"], new["d"])
    again, new2 = _sparse(names, x, s, probes, 6, cached=lambda a, b: cache.lookup_pairs(keys, a, b))
    assert new2["pairs_computed"] == 0
    np.testing.assert_array_equal(again.neighbours, aff.neighbours)
    np.testing.assert_array_equal(again.values, aff.values)


def test_lookup_pairs_agrees_with_the_dense_lookup():
    rng = np.random.default_rng(1)
    keys = [f"p{i}" for i in range(9)]
    i, j = np.triu_indices(9, 1)
    pick = rng.random(len(i)) < 0.5
    cache = PairCache().with_pairs(keys, i[pick], j[pick], rng.random(pick.sum()))
    d, known = cache.lookup(keys)
    qi, qj = rng.integers(0, 9, 40), rng.integers(0, 9, 40)
    ok = qi != qj
    v, hit = cache.lookup_pairs(keys, qi[ok], qj[ok])
    np.testing.assert_array_equal(hit, known[qi[ok], qj[ok]])
    np.testing.assert_allclose(v[hit], d[qi[ok], qj[ok]][hit])


def test_store_round_trip_and_the_select_file(tmp_path):
    from taskgrouping.data.affinity_file import load_affinity_file
    from taskgrouping.storage import Store

    ds, x, s, probes = _probed(20, 4, 7)
    aff, _ = _sparse(ds.task_names, x, s, probes, 7)
    st = Store(tmp_path / "store")
    path = st.write_affinity(tmp_path / "store" / "a.parquet", aff)
    back = Store(tmp_path / "store").read_affinity(path)
    assert back.sparse and back.tasks == aff.tasks
    np.testing.assert_array_equal(back.neighbours, aff.neighbours)
    np.testing.assert_array_equal(back.values, aff.values)
    np.testing.assert_array_equal(back.sketch, aff.sketch)  # kept: it estimates the pairs no list holds
    assert aff.scale is not None and back.scale == aff.scale  # and the scale it was measured with
    loaded = load_affinity_file(str(path))
    np.testing.assert_array_equal(loaded.neighbours, aff.neighbours)


def test_the_estimate_scale_is_measured_on_the_sketch_candidates_lists():
    """The scale is the median exact / sketch ratio over the lists the sketch candidates alone give."""
    from taskgrouping.methods.sparse import sketch_scale

    ds, x, s, probes = _probed(120, 12, 8, missing=0.2, samples=128)
    names = ds.task_names
    refined, _ = _sparse(names, x, s, probes, 8)
    bare, _ = _sparse(names, x, s, probes, 8, rounds=0)
    assert bare.scale == refined.scale  # the refinement changes the lists, not the scale
    a, b, d = bare.pairs()
    assert bare.scale == sketch_scale(bare.sketch, bare.row_norms, bare.labelled, a, b, d)
    # without a stored scale (a file written elsewhere) it is measured on the stored pairs
    plain = NeighbourAffinity(names, bare.neighbours, bare.values, sketch=bare.sketch, row_norms=bare.row_norms,
                              labelled=bare.labelled)
    assert plain._scale == pytest.approx(bare.scale)


def test_bad_neighbour_files_are_refused_with_their_reason(tmp_path):
    import polars as pl

    from taskgrouping.data.affinity_file import load_affinity_file

    good = {"task_a": ["a", "a", "b", "b", "c", "c"], "task_b": ["b", "c", "a", "c", "a", "b"],
            "value": [1.0, 2.0, 1.0, 3.0, 2.0, 3.0], "rank": [1, 2, 1, 2, 1, 2]}
    path = tmp_path / "n.parquet"
    pl.DataFrame(good).write_parquet(path)
    assert load_affinity_file(str(path)).k == 2
    with pytest.raises(InputError, match="holds distances, not gains"):
        load_affinity_file(str(path), kind="gain")
    pl.DataFrame(good | {"value": [1.0, -2.0, 1.0, 3.0, 2.0, 3.0]}).write_parquet(path)
    with pytest.raises(InputError, match=r"value in row 2 is -2, not a finite non-negative distance"):
        load_affinity_file(str(path))
    pl.DataFrame({k: v[:5] for k, v in good.items()}).write_parquet(path)
    with pytest.raises(InputError, match=r"n.parquet: a neighbour affinity has 5 rows, expected 3 tasks x 2 partners"):
        load_affinity_file(str(path))


def test_fixed_group_count_past_the_chain_limit_is_refused_with_the_way_out():
    from taskgrouping.selectors import graph as g

    cliques = g.CHAIN_MAX + 50  # disjoint triples: every Leiden partition has more communities than CHAIN_MAX
    t = 3 * cliques
    nb = np.array([[3 * (i // 3) + (i + 1) % 3, 3 * (i // 3) + (i + 2) % 3] for i in range(t)])
    aff = NeighbourAffinity([f"t{i:04d}" for i in range(t)], nb, np.ones((t, 2)))
    with pytest.raises(InputError, match=r"--groups 2: no Leiden partition .* use --groups auto or --pairs dense"):
        select_graph(aff, 2, 0)


def test_the_sparse_memory_estimate_refuses_a_run_that_cannot_fit():
    from taskgrouping.resources import check_swola_fits, sparse_memory

    parts = sparse_memory(10_000, 512, 128)
    assert 2.4 * 2**30 < sum(parts.values()) < 8 * 2**30  # the probes alone are 2.4 GiB
    check_swola_fits(10_000, 512, SwolaSettings(), available=16 * 2**30, sparse=True)
    with pytest.raises(InputError, match=r"over 100000 tasks with 512 probe samples needs about 2\d\.\d GiB "
                                         r"\(probes 24\.4, .*\), more than 80% of the 16\.0 GiB available"):
        check_swola_fits(100_000, 512, SwolaSettings(), available=16 * 2**30, sparse=True)
    with pytest.raises(InputError, match="--pairs sparse"):  # the dense refusal names the way out
        check_swola_fits(20_000, 512, SwolaSettings(), available=16 * 2**30)


def test_pairs_option_is_checked():
    from taskgrouping.config import RunConfig

    with pytest.raises(InputError, match="--pairs must be auto, dense or sparse, got 'some'"):
        RunConfig(pairs="some")
    with pytest.raises(InputError, match=r"--pairs sparse .* needs --method swola and --selector graph "
                                         r"\(got --method swola --selector spectral\)"):
        RunConfig(pairs="sparse", selector="spectral")


def test_probe_overlap_in_blocks_equals_the_dense_count(monkeypatch):
    from taskgrouping.data import dataset

    rng = np.random.default_rng(4)
    labels = rng.random((40, 23))
    labels[rng.random(labels.shape) < 0.6] = np.nan
    shared = dataset.shared_labels(labels)[~np.eye(23, dtype=bool)]
    monkeypatch.setattr(dataset, "OVERLAP_BLOCK", 5)
    assert dataset.probe_overlap(labels) == {"min": int(shared.min()), "below": int((shared < dataset.MIN_SHARED).sum()) // 2,
                                             "threshold": dataset.MIN_SHARED}
    full = np.zeros((12, 4))
    assert dataset.probe_overlap(full) == {"min": 12, "below": 6 if 12 < dataset.MIN_SHARED else 0,
                                           "threshold": dataset.MIN_SHARED}


def test_auto_is_sparse_from_the_threshold_with_the_graph_selector():
    from taskgrouping.methods.sparse import SPARSE_MIN_TASKS, use_sparse

    assert not use_sparse("auto", SPARSE_MIN_TASKS - 1, "graph") and use_sparse("auto", SPARSE_MIN_TASKS, "graph")
    assert not use_sparse("auto", 10 * SPARSE_MIN_TASKS, "spectral")  # the other selectors need every pair
    assert use_sparse("sparse", 3, "graph") and not use_sparse("dense", 10 * SPARSE_MIN_TASKS, "graph")


def test_select_reads_a_neighbour_affinity_and_refuses_a_selector_that_needs_every_pair(tmp_path, capsys):
    import json

    from taskgrouping.cli import main
    from taskgrouping.storage import Store

    ds, x, s, probes = _probed(24, 4, 8)
    aff, _ = _sparse(ds.task_names, x, s, probes, 8)
    path = Store(tmp_path / "st").write_affinity(tmp_path / "n.parquet", aff)
    assert main(["select", "--affinity", str(path), "--selector", "graph", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["groups"] == select_graph(aff, None, 0).groups and got["kind"] == "distance"
    assert main(["select", "--affinity", str(path), "--selector", "spectral"]) == 2
    err = capsys.readouterr().err
    assert "n.parquet: a neighbour affinity (each task's 10 nearest partners) needs --selector graph; " \
           "--selector spectral needs every pair" in err


def test_the_fast_silhouette_is_the_full_one_when_every_pair_is_stored(monkeypatch):
    """Past FULL_FILL_MAX communities only stored communities are summed; with every pair stored that is exact."""
    from sklearn.metrics import silhouette_score

    from taskgrouping.methods import sparse

    rng = np.random.default_rng(5)
    t = 30
    pts = rng.standard_normal((t, 3))
    d = np.abs(pts[:, None] - pts[None]).sum(axis=2)
    order = np.argsort(np.where(np.eye(t, dtype=bool), np.inf, d), axis=1)[:, : t - 1]
    aff = NeighbourAffinity([f"t{i}" for i in range(t)], order, np.take_along_axis(d, order, axis=1))
    labels = rng.integers(0, 6, t)
    monkeypatch.setattr(sparse, "FULL_FILL_MAX", 2)
    assert silhouette_sparse(aff, labels) == pytest.approx(silhouette_score(d, labels, metric="precomputed"))


def test_groups_larger_than_the_stored_lists_stay_whole():
    """50 tasks a group, 10 stored partners each: most within-group pairs are unstored, and their sketch
    estimate (not the lists' radius, which made every unstored pair look close: ARI 0.0) keeps groups whole."""
    from sklearn.metrics import adjusted_rand_score

    for seed in (0, 1):
        ds, x, s, probes = _probed(200, 4, seed, samples=256)
        names = ds.task_names
        truth = [ds.ground_truth[t] for t in names]
        dense = affinity_from_distances(names, distances_from_probes(probes, x, s, seed))
        aff, _ = _sparse(names, x, s, probes, seed, k=10)
        want = adjusted_rand_score(truth, select_graph(dense, None, seed).labels(names))
        got = adjusted_rand_score(truth, select_graph(aff, None, seed).labels(names))
        assert got >= 0.9 and got >= want - 0.05, (seed, got, want)
        radius_only = NeighbourAffinity(aff.tasks, aff.neighbours, aff.values)  # no sketch: the lower bound
        assert adjusted_rand_score(truth, select_graph(radius_only, None, seed).labels(names)) < got


def test_the_sketch_estimate_follows_the_exact_distances():
    """Mean estimated distance to a community against the exact mean over its members (every pair known)."""
    ds, x, s, probes = _probed(60, 6, 2)
    names = ds.task_names
    dense = distances_from_probes(probes, x, s, 2)
    aff, _ = _sparse(names, x, s, probes, 2)
    codes = np.array([int(ds.ground_truth[t]) for t in names])
    codes = np.unique(codes, return_inverse=True)[1]
    est = aff.estimate_to(codes)
    exact = np.stack([dense[:, codes == c].mean(axis=1) for c in range(codes.max() + 1)], axis=1)
    rel = np.abs(est - exact) / exact
    assert np.median(rel) < 0.15, np.median(rel)
    assert np.corrcoef(est.ravel(), exact.ravel())[0, 1] > 0.8


def test_the_sketch_estimate_takes_out_labels_only_one_task_has():
    """Tasks missing very different shares of their labels (0 to 60%): the estimate with each task's row norm
    and labelled share follows the exact masked distances; the raw sketch distance, which counts the samples
    only one task labels, does not (``builtin:subsets`` merged every task into 2 groups with it)."""
    from dataclasses import replace

    ds = synthetic(tasks=60, groups=6, samples=500, seed=3)
    rng = np.random.default_rng(3)
    share = rng.uniform(0.0, 0.6, ds.labels.shape[1])
    ds.labels[rng.random(ds.labels.shape) < share[None, :]] = np.nan
    data = prepare(ds, 3, 256)
    x, y = data.x[data.probe_idx], data.y[data.probe_idx]
    s = SwolaSettings(hidden=16)
    probes = probe_tasks(x, y, data.tasks, s, 3)
    names = ds.task_names
    dense = distances_from_probes(probes, x, s, 3)
    aff, _ = _sparse(names, x, s, probes, 3)
    assert aff.row_norms is not None and aff.labelled is not None
    np.testing.assert_allclose(aff.labelled, [p.labelled.mean() for p in probes])
    codes = np.unique([int(ds.ground_truth[t]) for t in names], return_inverse=True)[1]
    exact = np.stack([dense[:, codes == c].mean(axis=1) for c in range(codes.max() + 1)], axis=1)

    def error(a):
        """Median relative error, and how each task's mean error to the other communities follows its labels."""
        rel = (a.estimate_to(codes) - exact) / exact
        other = np.array([np.delete(rel[i], codes[i]).mean() for i in range(len(codes))])
        return float(np.median(np.abs(rel))), float(np.corrcoef(other, aff.labelled)[0, 1])

    raw = replace(aff, row_norms=None, labelled=None)
    (masked_err, masked_corr), (raw_err, raw_corr) = error(aff), error(raw)
    assert raw_corr > 0.7 and abs(masked_corr) < 0.5, (raw_corr, masked_corr)  # measured 0.88 and -0.24
    assert masked_err < 0.6 * raw_err, (masked_err, raw_err)  # 0.045 against 0.093
    # the per-task parts travel with the affinity file
    back = NeighbourAffinity.from_table(aff.to_table())
    np.testing.assert_array_equal(back.row_norms, aff.row_norms)
    np.testing.assert_array_equal(back.labelled, aff.labelled)


def _brute_scores(sk, sq, masks):
    """The candidate score of every pair in float64 numpy, one pair at a time (no shared product)."""
    t = len(sk)
    out = np.full((t, t), np.inf)
    for i in range(t):
        for j in range(t):
            if i == j:
                continue
            if sq is None:
                out[i, j] = float(((sk[i] - sk[j]) ** 2).sum())
                continue
            both = masks[i] & masks[j]
            if both.any():
                only = float(sq[i][masks[i] & ~masks[j]].sum() + sq[j][masks[j] & ~masks[i]].sum())
                out[i, j] = max(0.0, float(((sk[i] - sk[j]) ** 2).sum()) - only) / both.sum()
    return out


@pytest.mark.parametrize("masked", [False, True])
def test_candidate_lists_brought_up_to_date_are_those_computed_afresh(masked):
    """Tasks added and removed against a kept base: the lists are each task's c nearest by brute force.

    Only the new tasks' rows and the rows whose list named a removed task are searched.
    """
    from taskgrouping.methods.sparse import (
        CandidateLists,
        candidates,
        canonical_rank,
        update_candidates,
    )

    rng = np.random.default_rng(11 + masked)
    t, n, c = 120, 30, 6
    lab = rng.random((t + 4, n)) > (0.3 if masked else -1.0)
    rows = torch.as_tensor(rng.standard_normal((t + 4, n, 4)) * lab[:, :, None])  # unlabelled samples are zero
    sk = sketch_rows(rows.reshape(t + 4, -1).float(), 64, 0).numpy()
    sq = sample_norms(rows, 2).numpy()
    names = [f"task{i:03d}" for i in rng.permutation(t + 4)]
    keys = [f"key-{x}" for x in names]
    now = np.arange(t)  # the run: tasks 0..t-1; the base: all but 0..2, plus task t (removed since)
    was = np.arange(3, t + 1)

    def parts(rows):
        m = torch.as_tensor(lab[rows])
        return torch.as_tensor(sk[rows]), (torch.as_tensor(sq[rows]) if masked else None), m

    b_sk, b_sq, b_m = parts(was)
    b_idx, b_val = candidates(b_sk, b_sq, b_m, c, canonical_rank([names[i] for i in was]))
    base = CandidateLists([keys[i] for i in was], b_idx, b_val, masked)
    n_sk, n_sq, n_m = parts(now)
    got, rows = update_candidates([keys[i] for i in now], n_sk, n_sq, n_m, c,
                                  canonical_rank([names[i] for i in now]), base)
    brute = _brute_scores(sk[now].astype(np.float64), sq[now] if masked else None, lab[now])
    named_removed = sum(t in set(was[b_idx[r]]) for r in range(len(was)) if was[r] < t)
    assert rows == 3 + named_removed < t  # the new tasks and the lists that named a removed one
    rank = canonical_rank([names[i] for i in now])
    for i in range(t):
        want = set(np.lexsort((rank, brute[i]))[:c].tolist())
        assert set(got.idx[i].tolist()) == want, i
        np.testing.assert_allclose(got.score[i], brute[i, got.idx[i]], rtol=1e-4, atol=1e-4)
    fresh, _ = update_candidates([keys[i] for i in now], n_sk, n_sq, n_m, c,
                                 canonical_rank([names[i] for i in now]), None)
    assert all(set(fresh.idx[i]) == set(got.idx[i]) for i in range(t))
    # a base of the other score kind, or of another c, is not used
    assert update_candidates([keys[i] for i in now], n_sk, n_sq, n_m, c, canonical_rank([names[i] for i in now]),
                             CandidateLists(base.keys, b_idx, b_val, not masked))[1] == t


def test_kept_candidate_lists_round_trip_and_the_best_base_is_chosen(tmp_path, caplog):
    from taskgrouping.methods.sparse import CandidateLists
    from taskgrouping.storage import Store
    from taskgrouping.storage.integrity import checksum_path

    st = Store(tmp_path)
    rng = np.random.default_rng(3)

    def lists(keys):
        t = len(keys)
        return CandidateLists(keys, rng.integers(0, t, (t, 4)), rng.random((t, 4)), False)

    a = lists([f"k{i}" for i in range(10)])
    b = lists([f"k{i}" for i in range(5, 30)])
    st.add_candidate_lists("sk", a)
    pb = st.add_candidate_lists("sk", b)
    got = st.read_candidate_base("sk", [f"k{i}" for i in range(12)])  # shares 10 with a, 7 with b
    assert got is not None and got.keys == a.keys and (got.idx == a.idx).all() and (got.score == a.score).all()
    assert st.read_candidate_base("sk", ["other"]) is None
    assert st.read_candidate_base("sk", [f"k{i}" for i in range(5, 12)]).keys == b.keys  # 7 shared against 5
    pb.write_bytes(pb.read_bytes()[:-20])  # damaged: passed over (with its reason), the other one read
    assert st.read_candidate_base("sk", [f"k{i}" for i in range(5, 12)]).keys == a.keys
    assert "checksum mismatch" in caplog.text
    for i in range(Store.CANDIDATE_LISTS_KEPT + 2):  # only the newest few are kept
        st.add_candidate_lists("sk", lists([f"x{i}"]))
    kept = sorted((tmp_path / "sketches" / "sk" / "lists").glob("*.arrow"))
    assert len(kept) == Store.CANDIDATE_LISTS_KEPT and all(checksum_path(p).exists() for p in kept)
    assert len(list((tmp_path / "sketches" / "sk" / "lists").glob("*.sha256"))) == Store.CANDIDATE_LISTS_KEPT


def test_row_order_is_lexsort_with_ties():
    """The packed-key sort against ``np.lexsort`` on values with many exact ties."""
    from taskgrouping.methods.sparse import row_order

    rng = np.random.default_rng(4)
    for t, n in [(2, 1), (7, 40), (300, 5000), (5000, 200_000)]:
        src = rng.integers(0, t, n)
        tie = rng.permutation(max(t, n))[:n] % t
        val = np.round(rng.random(n), 2)  # about a hundred distinct values: ties everywhere
        np.testing.assert_array_equal(row_order(src, val, tie, t), np.lexsort((tie, val, src)))
