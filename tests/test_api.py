"""The Python door (issue 12): TaskGrouper as a scikit-learn estimator, select(), the store shared with the
CLI, and every rejection as an InputError with the CLI's message."""

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score

from taskgrouping import InputError, TaskGrouper, select
from taskgrouping.data.builtins import synthetic

FAST = {"n_samples": 128, "hidden": 16}


def _data(tasks=8, groups=2, seed=0, missing=0.0):
    ds = synthetic(tasks=tasks, groups=groups, samples=400, noise=0.2, missing=missing, seed=seed)
    return ds, {t: ds.labels[:, j] for j, t in enumerate(ds.task_names)}


def _labels(tg):
    return [next(i for i, g in enumerate(tg.groups_) if t in g) for t in tg.tasks_]


def test_fit_recovers_planted_groups_from_arrays_and_a_frame_with_nulls():
    ds, y = _data(missing=0.1)
    frame = pl.DataFrame(y).fill_nan(None)
    assert frame.null_count().sum_horizontal()[0] > 0
    by_dict = TaskGrouper(n_groups=2, **FAST).fit(ds.features, y)
    by_frame = TaskGrouper(n_groups=2, **FAST).fit(ds.features, frame)
    import torch

    by_tensor = TaskGrouper(n_groups=2, **FAST).fit(torch.as_tensor(ds.features), frame.to_arrow())
    truth = [ds.ground_truth[t] for t in by_dict.tasks_]
    assert adjusted_rand_score(truth, _labels(by_dict)) == 1.0
    assert by_frame.groups_ == by_dict.groups_ == by_tensor.groups_
    np.testing.assert_array_equal(by_frame.affinity_, by_dict.affinity_)
    assert by_dict.affinity_.shape == (8, 8) and by_dict.affinity_kind_ == "distance"
    assert np.allclose(by_dict.affinity_, by_dict.affinity_.T) and not np.diag(by_dict.affinity_).any()
    assert set(by_dict.served_) == set(by_dict.tasks_) and by_dict.selection_["k"] == 2
    assert by_dict.counts_["probes_computed"] == 8 and by_dict.seconds_["total"] > 0
    long = by_dict.affinity_frame()
    assert long.columns == ["task_a", "task_b", "value", "kind"] and long.height == 64
    # X as a frame: its columns are the feature names; the matrix is the arrays' (same values, same order)
    names = [f"f_{i:02d}" for i in range(ds.features.shape[1])]
    x_frame = pl.DataFrame({n: ds.features[:, i] for i, n in enumerate(names)})
    by_x_frame = TaskGrouper(n_groups=2, **FAST).fit(x_frame, frame)
    assert by_x_frame.features_ == names and by_dict.features_ == [f"x_{i}" for i in range(len(names))]
    np.testing.assert_array_equal(by_x_frame.affinity_, by_dict.affinity_)
    with pytest.raises(InputError, match=r"^X and Y both have the column 'y_00'; a column is a feature or a task$"):
        TaskGrouper(**FAST).fit(x_frame.with_columns(pl.Series("y_00", np.zeros(len(x_frame)))), frame)
    with pytest.raises(InputError, match=r"^X has 10 rows but Y has 400$"):
        TaskGrouper(**FAST).fit(x_frame.head(10), frame)
    with pytest.raises(InputError, match=r"^impute must be one of none, median, mean, got 'zero'$"):
        TaskGrouper(impute="zero", **FAST).fit(x_frame, frame)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    by_dict.plot_affinity(ax)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "swola distance"  # the colour bar
    plt.close(fig)


def test_estimator_protocol():
    tg = TaskGrouper(n_groups=3, random_state=7, store=None)
    params = tg.get_params()
    assert params["n_groups"] == 3 and params["random_state"] == 7 and params["trunk"] is None
    twin = clone(tg)
    assert twin is not tg and twin.get_params() == params
    assert tg.set_params(n_groups="auto") is tg and tg.n_groups == "auto"
    with pytest.raises(ValueError, match="invalid parameter 'groups' for TaskGrouper"):
        tg.set_params(groups=2)
    assert repr(TaskGrouper(n_groups=3)) == "TaskGrouper(n_groups=3)"
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        tg.affinity_frame()


@pytest.mark.parametrize("kwargs, X, Y, message", [
    ({}, np.zeros((5, 3)), {"y": np.zeros(4)}, "X has 5 rows but Y has 4"),
    ({}, np.zeros((5, 3)), {}, "Y has no task columns"),
    ({"method": "magic"}, None, None, "unknown --method 'magic'; known methods: swola, tag, datamaps, hoa"),
    ({"selector": "kmeans"}, None, None, "unknown --selector 'kmeans'; known selectors: graph, spectral, gat, network, mip"),
    ({"n_groups": 9}, None, None, "--groups 9 is outside 1..8 (the number of tasks)"),
    ({"n_groups": "many"}, None, None, "n_groups must be an integer or 'auto', got 'many'"),
    ({"trunk": 3}, None, None, "trunk must be a name (mlp, cnn, resnet, PATH.py:FUNCTION, package.module:FUNCTION) "
                               "or a callable input_shape -> nn.Module, got int"),
    ({"trunk": "nomodule_q:make"}, None, None, "--trunk 'nomodule_q:make': cannot import nomodule_q"),
    ({"n_samples": 0}, None, None, "--samples must be a positive integer, got 0"),
])
def test_rejections_are_input_errors_with_the_cli_message(capsys, kwargs, X, Y, message):
    ds, y = _data()
    X = ds.features if X is None else X
    Y = y if Y is None else Y
    with pytest.raises(InputError) as exc:
        TaskGrouper(**kwargs).fit(X, Y)
    assert message in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_a_callable_trunk_and_image_arrays():
    from torch import nn

    from taskgrouping.data.builtins import shapes

    def tiny(shape):
        return nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    ds = shapes(samples=160, size=8, per=1, seed=0)
    images = ds.features.reshape(160, 3, 8, 8)
    tg = TaskGrouper(trunk=tiny, n_groups=2, n_samples=64).fit(images, {t: ds.labels[:, j]
                                                                        for j, t in enumerate(ds.task_names)})
    assert tg.affinity_.shape == (4, 4) and len(tg.groups_) == 2


def test_select_on_arrays_and_frames_matches_the_cli_fields():
    rng = np.random.default_rng(0)
    gains = rng.normal(0, 0.1, (6, 6))
    gains[:3, :3] += 1.0
    gains[3:, 3:] += 1.0
    names = [f"t{i}" for i in range(6)]
    out = select(gains, 2, tasks=names, selector="mip", overlap=False)
    assert sorted(map(sorted, out["groups"])) == [names[:3], names[3:]]
    assert set(out) == {"groups", "served", "objective", "selector", "kind", "exact", "seconds"}
    square = pl.DataFrame({"task": names} | {n: gains[:, j] for j, n in enumerate(names)})
    assert select(square, 2, selector="mip", overlap=False)["groups"] == out["groups"]
    long = pl.DataFrame({"task_a": [a for a in names for _ in names], "task_b": names * 6,
                         "value": gains.ravel()})
    assert select(long, 2, selector="mip", overlap=False)["groups"] == out["groups"]
    with pytest.raises(InputError, match="--groups 7 is outside 1..6"):
        select(gains, 7, tasks=names)
    with pytest.raises(InputError, match="pass tasks=\\[names\\] with a numpy matrix"):
        select(gains, 2)
    with pytest.raises(InputError, match="unknown --selector 'nope'"):
        select(gains, 2, tasks=names, selector="nope")


def test_swola_affinity_alone_equals_the_estimators_matrix():
    from taskgrouping import swola_affinity

    ds, y = _data()
    tasks, d = swola_affinity(ds.features, y, **FAST)
    tg = TaskGrouper(**FAST).fit(ds.features, y)
    assert tasks == tg.tasks_
    np.testing.assert_allclose(d, tg.affinity_, rtol=1e-6)
    with pytest.raises(InputError, match="--sketch must be auto, none or a positive integer K, got 'x'"):
        swola_affinity(ds.features, y, sketch="x")


def test_joint_training_methods_run_in_process():
    ds, y = _data(tasks=6)
    tg = TaskGrouper(method="datamaps", n_groups=2, n_samples=64, hidden=8).fit(ds.features, y)
    assert tg.affinity_kind_ == "distance" and tg.affinity_.shape == (6, 6) and len(tg.groups_) == 2
    with pytest.raises(InputError, match="method 'hoa' trains T \\+ T\\(T-1\\)/2 models: use taskgrouping.run"):
        TaskGrouper(method="hoa").fit(ds.features, y)
