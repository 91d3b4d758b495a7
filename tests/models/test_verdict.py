"""The honest verdict: per-task splits, intervals against brute force and simulation, the decision rule."""

import numpy as np
import pytest

from taskgrouping.data.builtins import synthetic
from taskgrouping.data.dataset import HELD_OUT_FRACTIONS, prepare, split_rows, task_parts
from taskgrouping.models.train import TrainSettings, train_group
from taskgrouping.models.verdict import Cost, Estimate, analyse, decide, difference, estimate

# --- the split -----------------------------------------------------------------------------------


def test_task_parts_are_stratified_disjoint_and_cover_the_labelled_rows():
    rng = np.random.default_rng(0)
    n = 3000
    split = split_rows(n, 0)
    y = (rng.random(n) < 0.04).astype(np.float64)  # a rare positive class
    y[rng.random(n) < 0.2] = np.nan
    parts = task_parts(y, split, "binary", 0, "y_rare")
    labelled = ~np.isnan(y)
    assert ((parts == -1) == ~labelled).all()
    assert ((parts == 0) == (labelled & (split == 0))).all()  # training rows are the shared ones
    held = labelled & (split == 1)
    want = np.asarray(HELD_OUT_FRACTIONS) / sum(HELD_OUT_FRACTIONS)
    for cls in (0.0, 1.0):  # every class in every part, in proportion (within one row)
        rows = held & (y == cls)
        counts = np.array([(parts[rows] == p).sum() for p in (1, 2, 3)])
        assert np.all(np.abs(counts - want * rows.sum()) <= 1.0 + 1e-9), (cls, counts, want * rows.sum())


def test_task_parts_depend_on_the_task_alone_and_the_seed():
    rng = np.random.default_rng(1)
    split = split_rows(500, 3)
    y = rng.integers(0, 3, 500).astype(np.float64)
    a = task_parts(y, split, "multiclass", 3, "y_a")
    assert np.array_equal(a, task_parts(y.copy(), split, "multiclass", 3, "y_a"))
    assert not np.array_equal(a, task_parts(y, split, "multiclass", 4, "y_a"))
    # adding a task to a dataset leaves the other tasks' parts (and the shared split) unchanged
    ds = synthetic(tasks=4, groups=2, samples=300, seed=2)
    small, big = prepare(ds, 0, 64), prepare(synthetic(tasks=4, groups=2, samples=300, seed=2, random=1), 0, 64)
    assert np.array_equal(small.split, big.split)
    assert all(np.array_equal(small.parts(j), big.parts(j)) for j in range(4))


def test_training_reports_selection_loss_and_the_per_sample_losses_behind_it():
    data = prepare(synthetic(tasks=3, groups=1, samples=400, missing=0.2), 0, 64)
    _, results, info = train_group(data, [0, 2], TrainSettings(hidden=8, max_epochs=5), 0)
    for j, r in zip([0, 2], results, strict=True):
        parts = data.parts(j)
        for part, code, key in (("selection", 2, "sel_loss"), ("test", 3, "test_loss")):
            rows, losses = info["heldout"][r["task"]][part]
            assert sorted(rows.tolist()) == np.flatnonzero(parts == code).tolist()
            assert float(losses.mean()) == pytest.approx(r[key], rel=1e-5)
    assert info["parameters"] == (32 * 8 + 8) + (8 * 8 + 8) + 2 * (8 + 1)  # 32 features, 2 layers of 8, 2 heads
    assert info["flops"] == 2 * (32 * 8 + 8 * 8 + 2 * 8)  # one multiply-add = 2 FLOPs, per sample


# --- intervals -----------------------------------------------------------------------------------


def test_one_task_one_training_is_the_textbook_t_interval():
    from scipy import stats

    x = np.random.default_rng(2).exponential(size=40)
    e = estimate({"t": x[None, :]}, {"t": np.arange(40)})
    se = x.std(ddof=1) / np.sqrt(40)
    assert e.mean == pytest.approx(x.mean()) and e.se == pytest.approx(se)
    assert e.hi - e.mean == pytest.approx(stats.t.ppf(0.975, 39) * se)


def test_training_noise_alone_is_the_t_interval_over_repeats():
    from scipy import stats

    offsets = np.array([0.3, -0.1, 0.5, 0.0])
    losses = np.ones((4, 30)) + offsets[:, None]  # every row the same: no sample noise
    e = estimate({"t": losses}, {"t": np.arange(30)})
    assert e.se == pytest.approx(offsets.std(ddof=1) / 2) and e.df == pytest.approx(3)
    assert e.hi - e.mean == pytest.approx(stats.t.ppf(0.975, 3) * e.se)


def test_shared_rows_are_one_sample_disjoint_rows_add_variances():
    x = np.random.default_rng(3).normal(size=(1, 50))
    rows = np.arange(50)
    one = estimate({"a": x}, {"a": rows})
    shared = estimate({"a": x, "b": x}, {"a": rows, "b": rows})  # perfectly correlated: the sum doubles
    assert shared.se == pytest.approx(2 * one.se)
    y = np.random.default_rng(4).normal(size=(1, 50))
    apart = estimate({"a": x, "b": y}, {"a": rows, "b": rows + 50})
    assert apart.se**2 == pytest.approx(one.se**2 + estimate({"b": y}, {"b": rows}).se**2)


def test_paired_difference_cancels_the_shared_sample_noise():
    rng = np.random.default_rng(5)
    base = rng.exponential(size=(3, 80))
    better = base - 0.05 + rng.normal(0, 0.01, size=base.shape)
    rows = {"t": np.arange(80)}
    d = difference({"t": better}, {"t": base}, rows)
    assert d.mean == pytest.approx((better - base).mean())
    assert d.hi < 0  # a 0.05 improvement is clear paired...
    a, b = estimate({"t": better}, rows), estimate({"t": base}, rows)
    assert a.hi > b.lo  # ...though the two intervals overlap


def test_intervals_cover_the_true_mean_about_95_percent():
    rng = np.random.default_rng(6)
    hits, sims = 0, 600
    for _ in range(sims):
        r, n = 3, 60
        sample = rng.exponential(size=(1, n))  # which rows were held out (true mean 1)
        train = rng.normal(0, 0.15, size=(r, 1))  # each training's offset
        losses = sample + train + rng.normal(0, 0.05, size=(r, n))
        e = estimate({"t": losses}, {"t": np.arange(n)})
        hits += e.lo <= 1.0 <= e.hi
    assert 0.91 <= hits / sims <= 0.99


# --- the decision --------------------------------------------------------------------------------


def _case(means: dict[str, float], half: float, models: dict[str, int]) -> tuple[dict, dict, dict]:
    sel = {s: Estimate(m, m - half, m + half, half / 2, 50.0) for s, m in means.items()}
    pair = {(a, b): Estimate(means[a] - means[b], means[a] - means[b] - half, means[a] - means[b] + half,
                             half / 2, 50.0) for a in means for b in means if a != b}
    return sel, pair, {s: Cost(k, 100 * k, 1000 * k) for s, k in models.items()}


MODELS = {"grouped": 3, "all_together": 1, "single_task": 12, "random": 3}


@pytest.mark.parametrize("means, half, setting, pays", [
    # the groups are best beyond the noise: they pay
    ({"grouped": 1.0, "all_together": 1.2, "single_task": 1.3, "random": 1.25}, 0.05, "grouped", "yes"),
    # one model is as good as the groups: fewer models win, grouping does not pay
    ({"grouped": 1.0, "all_together": 1.02, "single_task": 1.3, "random": 1.25}, 0.05, "all_together", "no"),
    # one model per task is better beyond the noise
    ({"grouped": 1.2, "all_together": 1.3, "single_task": 1.0, "random": 1.25}, 0.05, "single_task", "no"),
    # the groups tie with single-task (more models) and cannot be told from all-together: undecided
    ({"grouped": 1.04, "all_together": 1.08, "single_task": 1.0, "random": 1.25}, 0.05, "grouped", "undecided"),
    # random groups of the same sizes do as well: the number of models helps, not the grouping
    ({"grouped": 1.0, "all_together": 1.2, "single_task": 1.3, "random": 1.02}, 0.05, "grouped", "no"),
    # the control has the lowest loss: never recommended (and the groups do not pay)
    ({"grouped": 1.0, "all_together": 1.2, "single_task": 1.3, "random": 0.5}, 0.05, "grouped", "no"),
])
def test_decide(means, half, setting, pays):
    v = decide(*_case(means, half, MODELS))
    assert (v["setting"], v["pays"]) == (setting, pays), v["reason"]
    assert v["models"] == MODELS[setting] and v["parameters"] == 100 * MODELS[setting] and v["reason"]


def test_one_group_is_all_together_by_its_baseline_name():
    v = decide(*_case({"grouped": 1.0, "all_together": 1.0, "single_task": 1.3}, 0.01,
                      {"grouped": 1, "all_together": 1, "single_task": 12}))
    assert (v["setting"], v["pays"]) == ("all_together", "no")


def test_analyse_reads_models_once_and_pairs_repeats():
    rng = np.random.default_rng(7)
    rows = {"a": np.arange(0, 20), "b": np.arange(10, 30)}
    store = {}

    def model(key, tasks, shift):
        store[key] = {t: {"selection": (rows[t], rng.exponential(size=20).astype(np.float32) + shift),
                          "test": (rows[t] + 100, rng.exponential(size=20).astype(np.float32) + shift)}
                      for t in tasks}
        return {"key": key, "serves": tasks, "cost": {"parameters": 10 * len(tasks), "flops": 5}, "results": []}

    results = {"grouped": [dict(model(f"g{r}", ["a", "b"], 0.0), repeat=r) for r in range(2)],
               "single_task": [dict(model(f"s{t}{r}", [t], 0.5), repeat=r) for r in range(2) for t in "ab"]}
    reads = []
    a = analyse(results, lambda k: reads.append(k) or store[k])
    assert sorted(reads) == sorted(store)  # every model read exactly once
    assert a.repeats == 2 and a.costs["single_task"] == Cost(2, 20, 10) and a.costs["grouped"] == Cost(1, 20, 5)
    brute = np.mean([sum(store[f"g{r}"][t]["test"][1].astype(np.float64).mean() for t in "ab") for r in range(2)])
    assert a.test["grouped"].mean == pytest.approx(brute)
    assert a.comparisons["single_task"]["test"].mean == pytest.approx(a.test["grouped"].mean - a.test["single_task"].mean)
    assert a.verdict["setting"] == "grouped"
