import numpy as np
import polars as pl
import pytest

from taskgrouping.data.builtins import digits, synthetic
from taskgrouping.data.dataset import prepare, split_rows
from taskgrouping.data.load import load_dataset
from taskgrouping.errors import InputError


def _frame(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "f1": rng.standard_normal(n), "f2": rng.integers(0, 5, n), "name": ["a"] * n,
        "y_bin": rng.integers(0, 2, n), "y_reg": rng.standard_normal(n),
        "y_cls": rng.choice(["cat", "dog", "eel"], n),
    })


def _write(tmp_path, frame, name="d.parquet"):
    path = tmp_path / name
    if name.endswith(".csv"):
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return str(path)


def test_kinds_defaults_and_missing_labels_kept(tmp_path):
    frame = _frame().with_columns(pl.when(pl.int_range(pl.len()) < 3).then(None).otherwise(pl.col("y_bin")).alias("y_bin"))
    ds = load_dataset(_write(tmp_path, frame))
    assert ds.task_names == ["y_bin", "y_reg", "y_cls"]
    assert [t.kind for t in ds.tasks] == ["binary", "regression", "multiclass"]
    assert ds.tasks[2].classes == ("cat", "dog", "eel")
    assert ds.feature_names == ["f1", "f2"]  # the string column is not a feature by default
    assert np.isnan(ds.labels[:3, 0]).all() and not np.isnan(ds.labels[3:, 0]).any()


def test_csv_and_parquet_agree_and_globs(tmp_path):
    frame = _frame()
    a = load_dataset(_write(tmp_path, frame, "d.csv"), tasks="y_b*,y_reg", features="f*")
    b = load_dataset(_write(tmp_path, frame), tasks="y_b*,y_reg", features="f*")
    assert a.task_names == b.task_names == ["y_bin", "y_reg"]
    np.testing.assert_allclose(a.features, b.features)
    assert a.features_fingerprint() == b.features_fingerprint()


def test_list_feature_column(tmp_path):
    rng = np.random.default_rng(1)
    frame = pl.DataFrame({"x": rng.standard_normal((30, 3)).tolist(), "y_a": rng.integers(0, 2, 30)})
    frame = frame.with_columns(pl.col("x").cast(pl.Array(pl.Float64, 3)))
    ds = load_dataset(_write(tmp_path, frame))
    assert ds.features.shape == (30, 3) and ds.feature_names == ["x[0]", "x[1]", "x[2]"]


@pytest.mark.parametrize("mutate, kwargs, message", [
    (lambda f: f.drop("y_bin", "y_reg", "y_cls"), {}, "no task columns"),
    (lambda f: f, {"tasks": "y_bin,y_bin"}, "'y_bin' is named twice"),
    (lambda f: f, {"features": "name"}, "feature column 'name' is not numeric"),
    (lambda f: f.with_columns(pl.lit(1).alias("y_bin")), {}, "task 'y_bin' has 1 distinct label value"),
    (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) < 25).then(None).otherwise(pl.col("y_reg")).alias("y_reg")),
     {}, "task 'y_reg' has 15 labelled samples; at least 20"),
    (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(float("nan")).otherwise(pl.col("f1")).alias("f1")),
     {}, "feature column 'f1' has 1 missing, NaN or inf values (first at row 7)"),
    (lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(float("inf")).otherwise(pl.col("f1")).alias("f1")),
     {}, "feature column 'f1'"),
    (lambda f: f.head(0), {}, "the table is empty"),
    (lambda f: f, {"tasks": "y_nope"}, "column 'y_nope', which is not in the table"),
    (lambda f: f, {"tasks": "z_*"}, "pattern 'z_*' matches no column"),
])
def test_rejections_name_the_culprit(tmp_path, mutate, kwargs, message):
    path = _write(tmp_path, mutate(_frame()))
    with pytest.raises(InputError) as err:
        load_dataset(path, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_ragged_csv_duplicate_header_unreadable_and_missing(tmp_path):
    ragged = tmp_path / "r.csv"
    ragged.write_text("f1,y_a\n1,0\n2,1,5\n")
    with pytest.raises(InputError, match=r"r.csv: ragged CSV: line 3 has 3 fields, the header has 2"):
        load_dataset(str(ragged))
    dup = tmp_path / "dup.csv"
    dup.write_text("f1,y_a,y_a\n1,0,1\n")
    with pytest.raises(InputError, match="column 'y_a' appears 2 times in the header"):
        load_dataset(str(dup))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="bad.parquet: unreadable file"):
        load_dataset(str(bad))
    with pytest.raises(InputError, match="nope.csv: no such file"):
        load_dataset(str(tmp_path / "nope.csv"))
    with pytest.raises(InputError, match="unsupported file type '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        load_dataset(str(tmp_path / "a.txt"))


def test_digits_are_read_as_scikit_learn_loads_them_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from taskgrouping.data.builtins import _digits_arrays

    pixels, labels = _digits_arrays()
    ref = load_digits()
    np.testing.assert_array_equal(pixels, ref.data)
    np.testing.assert_array_equal(labels, ref.target)
    code = ("import sys; from taskgrouping.data.builtins import digits; digits(); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_builtin_digits_tasks():
    ds = digits()
    assert ds.features.shape == (1797, 64) and len(ds.tasks) == 15
    i3, n3 = ds.task_names.index("is_3"), ds.task_names.index("not_3")
    np.testing.assert_array_equal(ds.labels[:, n3], 1 - ds.labels[:, i3])
    assert abs(ds.labels[:, ds.task_names.index("random")].mean() - 0.5) < 0.05


def test_builtin_synthetic_options_and_errors():
    ds = load_dataset("builtin:synthetic:tasks=6,groups=3,samples=100,complement=1,random=1")
    assert len(ds.tasks) == 8 and ds.features.shape == (100, 32)
    assert sorted(set(ds.ground_truth[t] for t in ds.task_names[:6])) == [0, 1, 2]
    np.testing.assert_array_equal(ds.labels[:, 6], 1 - ds.labels[:, 0])
    with pytest.raises(InputError, match="unknown built-in dataset 'nope'; known: digits, digits-images, mmaml, shapes, subsets, synthetic"):
        load_dataset("builtin:nope")
    with pytest.raises(InputError, match="unknown option 'colour=3'"):
        load_dataset("builtin:synthetic:colour=3")
    with pytest.raises(InputError, match="option tasks needs a number"):
        load_dataset("builtin:synthetic:tasks=many")
    with pytest.raises(InputError, match="unknown option 'vary=0.5'"):  # an option of another generator
        load_dataset("builtin:synthetic:vary=0.5")


def test_builtin_subsets_plants_what_it_says():
    ds = load_dataset("builtin:subsets:tasks=20,groups=4,samples=400,missing=0.4,seed=3")
    assert ds.task_names[-2:] == ["y_not_" + ds.task_names[-2][6:], "y_random_0"] and len(ds.tasks) == 22
    twin = ds.task_names.index("y_" + ds.task_names[-2][6:])
    both = ~np.isnan(ds.labels[:, twin]) & ~np.isnan(ds.labels[:, -2])
    np.testing.assert_array_equal(ds.labels[both, -2], 1 - ds.labels[both, twin])  # the complement of its twin
    assert ds.ground_truth[ds.task_names[-2]] == ds.ground_truth[ds.task_names[twin]]
    assert ds.ground_truth["y_random_0"] == -1
    assert sorted({ds.ground_truth[t] for t in ds.task_names[:20]}) == [0, 1, 2, 3]
    assert {t.kind for t in ds.tasks} == {"binary", "multiclass", "regression"}  # mixed kinds by default
    missing = np.isnan(ds.labels).mean(axis=0)
    assert 0 < missing.max() <= 0.55 and missing.min() < 0.4  # per-task rates drawn in [0, missing]
    same = load_dataset("builtin:subsets:tasks=20,groups=4,samples=400,missing=0.4,seed=3")
    np.testing.assert_array_equal(same.labels, ds.labels)  # seeded
    binary = load_dataset("builtin:subsets:tasks=6,groups=2,samples=100,mixed=0,missing=0")
    assert {t.kind for t in binary.tasks} == {"binary"} and not np.isnan(binary.labels).any()
    for spec, message in (("tasks=3,groups=4", "need 1 <= groups <= tasks"), ("samples=10", "too small"),
                          ("subset=30", "need 1 <= subset <= features"), ("missing=1.0", "need 0 <= missing < 1")):
        with pytest.raises(InputError, match=message):
            load_dataset(f"builtin:subsets:{spec}")


def test_split_and_probe_sample_are_seeded():
    ds = synthetic(tasks=4, groups=2, samples=200)
    a, b, c = prepare(ds, 3, 50), prepare(ds, 3, 50), prepare(ds, 4, 50)
    np.testing.assert_array_equal(a.split, b.split)
    np.testing.assert_array_equal(a.probe_idx, b.probe_idx)
    assert not np.array_equal(a.probe_idx, c.probe_idx)
    assert (a.split[a.probe_idx] == 0).all() and len(a.probe_idx) == 50
    counts = np.bincount(split_rows(1000, 0))
    assert counts.tolist() == [600, 400]
    # standardised with training statistics
    np.testing.assert_allclose(a.x[a.split == 0].mean(axis=0), 0, atol=1e-5)


def test_fingerprint_changes_with_rows_not_with_other_columns():
    ds = synthetic(tasks=4, groups=2, samples=200)
    fp = ds.label_fingerprint(0)
    sub = synthetic(tasks=4, groups=2, samples=200)
    sub.labels = sub.labels[:, :2]
    sub.tasks = sub.tasks[:2]
    assert sub.label_fingerprint(0) == fp and sub.features_fingerprint() == ds.features_fingerprint()
    ds.features[0, 0] += 1.0
    assert ds.features_fingerprint() != sub.features_fingerprint()


def test_label_kind_rules(tmp_path):
    rng = np.random.default_rng(2)
    n = 200
    frame = pl.DataFrame({
        "f": rng.standard_normal(n),
        "y_int3": rng.integers(0, 3, n),            # few integer values: multi-class
        "y_int_many": rng.integers(0, 1000, n),     # many integer values: regression
        "y_bool": rng.random(n) < 0.4,              # bool: binary
        "y_float01": rng.integers(0, 2, n).astype(float),  # floats that are all 0/1: binary
        "y_two_strings": rng.choice(["no", "yes"], n),     # two categories: binary, sorted classes
    })
    ds = load_dataset(_write(tmp_path, frame))
    kinds = {t.name: (t.kind, t.n_classes) for t in ds.tasks}
    assert kinds == {"y_int3": ("multiclass", 3), "y_int_many": ("regression", 1), "y_bool": ("binary", 2),
                     "y_float01": ("binary", 2), "y_two_strings": ("binary", 2)}
    j = ds.task_names.index("y_two_strings")
    assert ds.tasks[j].classes == ("no", "yes")
    np.testing.assert_array_equal(ds.labels[:, j], (frame["y_two_strings"] == "yes").to_numpy().astype(np.float32))
    j = ds.task_names.index("y_int3")
    assert set(np.unique(ds.labels[:, j]).tolist()) == {0.0, 1.0, 2.0}


def test_builtin_mmaml_tasks_share_no_samples_and_keep_their_held_out_tasks_apart():
    from taskgrouping.data.builtins import mmaml
    from taskgrouping.data.load import load_held_out

    full = mmaml(modes=5, train=6, heldout=3, query=20, seed=1)
    lab = ~np.isnan(full.labels)
    assert (lab.sum(axis=1) == 1).all()  # every row belongs to one task
    counts = dict(zip(full.task_names, lab.sum(axis=0).tolist(), strict=True))
    assert all(20 <= counts[f"{f}_{i:02d}"] <= 200 for f in ("sin", "line", "quad", "tanh", "abs") for i in range(6))
    assert all(counts[n] == 30 for n in full.held_out) and len(full.held_out) == 15
    assert np.abs(full.features).max() <= 5.0 and full.feature_names == ["x"]
    # the families' planted shapes: a line's points lie on a line up to the noise
    j = full.task_names.index("line_00")
    rows = lab[:, j]
    fit = np.polyfit(full.features[rows, 0], full.labels[rows, j], 1)
    resid = full.labels[rows, j] - np.polyval(fit, full.features[rows, 0])
    assert resid.std() == pytest.approx(0.3, rel=0.3)
    grouped = load_dataset("builtin:mmaml:modes=3,heldout=2,seed=1")
    assert len(grouped.tasks) == 18 and not any(n.startswith("test_") for n in grouped.task_names)
    assert set(grouped.ground_truth.values()) == {0, 1, 2}
    held = load_held_out("builtin:mmaml:modes=3,heldout=2,seed=1", None)
    assert held.task_names == [f"test_{f}_{i:02d}" for f in ("sin", "line", "quad") for i in range(2)]
    assert load_held_out("builtin:mmaml:modes=3,heldout=2,seed=1", "test_sin_*").task_names == \
        ["test_sin_00", "test_sin_01"]
    with pytest.raises(InputError, match="modes=4; MMAML's sets have 2, 3 or 5 modes"):
        load_dataset("builtin:mmaml:modes=4")
    with pytest.raises(InputError, match="builtin:digits declares none; name them with --held-out-tasks"):
        load_held_out("builtin:digits", None)
    with pytest.raises(InputError, match="name the columns of d.csv to keep out of the grouping with "
                                         "--held-out-tasks NAMES"):
        load_held_out("d.csv", None)


def test_a_checked_table_is_handed_to_the_next_identical_load_once(tmp_path):
    import os

    from taskgrouping.data.load import _HANDOFF, release_kept

    path = tmp_path / "t.csv"
    _frame(60).write_csv(path)
    checked = load_dataset(str(path), decode=False, keep=True)
    assert load_dataset(str(path)) is checked  # the sample step takes it
    assert load_dataset(str(path)) is not checked  # once only
    load_dataset(str(path), keep=True)
    assert load_dataset(str(path), tasks="y_bin") is not checked and _HANDOFF  # other arguments: loaded again
    kept = load_dataset(str(path), keep=True)
    _frame(60).with_columns(f1=pl.lit(1.0)).write_csv(path)  # the file changed since it was checked
    os.utime(path, ns=(0, 0))
    again = load_dataset(str(path))
    assert again is not kept and np.all(again.features[:, again.feature_names.index("f1")] == 1.0)
    release_kept()
    assert not _HANDOFF
