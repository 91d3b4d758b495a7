"""Measured pairwise transfer (the fidelity reference) against hand computations and invariants."""

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from taskgrouping.data.dataset import prepare
from taskgrouping.data.load import dataset_from_frame
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.methods.transfer import Transfer, fidelity, measured_transfer, model_keys
from taskgrouping.models.train import TrainSettings
from taskgrouping.storage import Store
from taskgrouping.tasks.steps import store_prepared

TRAIN = TrainSettings(hidden=8, max_epochs=4, batch=256)


def _store(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    x = rng.standard_normal((n, 4))
    a = (x[:, 0] > 0).astype(int)
    frame = pl.DataFrame({f"f_{i}": x[:, i] for i in range(4)} | {
        "y_a": a, "y_twin": a,                                                  # two identical tasks
        "y_near": (x[:, 0] + 0.3 * rng.standard_normal(n) > 0).astype(int),
        "y_coin": rng.integers(0, 2, n)})                                        # a random task
    st = Store(tmp_path / "store")
    return st, store_prepared(st, prepare(dataset_from_frame(frame, "t.csv"), 0, 64), 64)


def test_transfer_is_the_paired_selection_loss_difference_by_hand(tmp_path):
    from scipy import stats

    st, key = _store(tmp_path)
    tr = measured_transfer(st, key, TRAIN, seed=0)
    assert tr.tasks == ["y_a", "y_twin", "y_near", "y_coin"] and tr.trained == 4 + 6
    assert np.all(np.diag(tr.mean) == 0)
    keys = model_keys(st, key, TRAIN, 0, 1)

    def sel(members, task):  # the stored per-sample losses, read straight from the parquet file
        t = pq.read_table(st.model_dir(keys[(0, members)]) / "heldout.parquet").to_pylist()
        rows = sorted((r["row"], r["loss"]) for r in t if r["task"] == task and r["part"] == 2)
        return np.array([r for r, _ in rows]), np.array([v for _, v in rows], dtype=np.float64)

    names = tr.tasks
    for j, tj in enumerate(names):
        rows, alone = sel((tj,), tj)
        for i, ti in enumerate(names):
            if i == j:
                continue
            pair = tuple(sorted((ti, tj), key=names.index))
            rows_p, together = sel(pair, tj)
            assert np.array_equal(rows, rows_p)
            d = alone - together
            half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)  # one repeat: rows only
            assert tr.mean[j, i] == pytest.approx(d.mean(), rel=1e-6, abs=1e-9)
            assert (tr.lo[j, i], tr.hi[j, i]) == (pytest.approx(d.mean() - half, rel=1e-5, abs=1e-9),
                                                  pytest.approx(d.mean() + half, rel=1e-5, abs=1e-9))
    # (two identical label columns are not identical tasks here: each task's held-out rows are drawn by its own
    # fingerprint, name included, so y_a and y_twin are judged on different rows)
    # nothing is trained twice: a second call reads every model from the store
    again = measured_transfer(st, key, TRAIN, seed=0)
    assert again.trained == 0 and np.array_equal(again.mean, tr.mean)
    assert measured_transfer(st, key, TRAIN, seed=0, repeats=2, train_missing=False) is None


def test_two_repeats_average_and_widen_by_training_noise(tmp_path):
    st, key = _store(tmp_path)
    one = measured_transfer(st, key, TRAIN, seed=0, tasks=["y_a", "y_near", "y_coin"])
    two = measured_transfer(st, key, TRAIN, seed=0, repeats=2, tasks=["y_a", "y_near", "y_coin"])
    assert two.trained == 3 + 3 and two.repeats == 2  # only the second repeat's models
    off = ~np.eye(3, dtype=bool)
    assert np.all(two.lo[off] <= two.mean[off]) and np.all(two.mean[off] <= two.hi[off])
    assert not np.array_equal(one.mean, two.mean)
    first = measured_transfer(st, key, TRAIN, seed=0, repeats=2, tasks=["y_a", "y_near", "y_coin"], only=0)
    assert np.array_equal(first.mean, one.mean) and first.trained == 0  # one repeat's matrix: the first repeat's
    second = measured_transfer(st, key, TRAIN, seed=0, repeats=2, tasks=["y_a", "y_near", "y_coin"], only=1)
    np.testing.assert_allclose((first.mean + second.mean) / 2, two.mean, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="task 'y_nope' is not in the prepared dataset"):
        measured_transfer(st, key, TRAIN, seed=0, tasks=["y_a", "y_nope"])


def _transfer(m):
    t = len(m)
    return Transfer([f"t{i}" for i in range(t)], np.asarray(m, float), np.zeros((t, t)), np.zeros((t, t)), 1, 0)


def test_fidelity_by_hand():
    m = np.array([[0, 3, 1, 2], [1, 0, 3, 2], [2, 1, 0, 3], [3, 2, 1, 0]], float)
    tr = _transfer(m)
    assert fidelity(AffinityMatrix(tr.tasks, m, "gain"), tr, k=1) == {"spearman": pytest.approx(1.0), "topk": 1.0,
                                                                     "k": 1, "pairs": 12}
    neg = fidelity(AffinityMatrix(tr.tasks, m, "distance"), tr, k=1)  # a distance is negated: reversed ranks
    assert neg["spearman"] == pytest.approx(-1.0) and neg["topk"] == 0.0
    assert fidelity(AffinityMatrix(tr.tasks, m, "gain"), tr, k=9)["k"] == 3  # at most T - 1 partners
    # the matrix is aligned by task name, whatever its order
    order = [2, 0, 3, 1]
    shuffled = AffinityMatrix([tr.tasks[i] for i in order], m[np.ix_(order, order)], "gain")
    assert fidelity(shuffled, tr, k=2)["spearman"] == pytest.approx(1.0)
    # top-2 by hand: receiver 0's partners by affinity 1, 3; by transfer 1, 3 -> 1.0 for a copy; one swap
    swapped = m.copy()
    swapped[0, 2], swapped[0, 3] = swapped[0, 3], swapped[0, 2]  # receiver 0: top-2 {1, 2} against {1, 3}
    assert fidelity(AffinityMatrix(tr.tasks, swapped, "gain"), tr, k=2)["topk"] == pytest.approx((0.5 + 3) / 4)
