"""The second hour with one's own table (issue 27), without a Prefect server: column warnings, unusable
task columns, imputation, at-chance for every kind, frames into exported models, history, the main guard."""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import polars as pl
import pytest
import torch

from taskgrouping.data.load import dataset_from_frame, load_dataset
from taskgrouping.errors import InputError


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    return pl.DataFrame({
        "customer_id": np.arange(5000, 5000 + n),
        "const_one": np.ones(n),
        "signup_date": [f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(n)],
        "email": [f"user{i}@example.com" for i in range(n)],
        "segment": [("a", "b", "c")[i % 3] for i in range(n)],
        "comment": [f"note {i % 90}" for i in range(n)],
        "f_0": x[:, 0], "f_1": x[:, 1], "f_2": x[:, 2],
        "y_a": (x[:, 0] > 0).astype(int), "y_b": (x[:, 1] > 0).astype(int),
    })


# --- column warnings -------------------------------------------------------------------------------------
def test_id_constant_and_text_columns_are_named_and_still_chosen_as_before():
    ds = dataset_from_frame(_frame(), "t.csv")
    assert ds.feature_names == ["customer_id", "const_one", "f_0", "f_1", "f_2"]  # unchanged choice
    by = {w["column"]: w for w in ds.warnings}
    assert set(by) == {"customer_id", "const_one", "signup_date", "email", "segment", "comment"}
    assert by["customer_id"]["kind"] == "id" and "identifier" in by["customer_id"]["message"]
    assert by["customer_id"]["message"].endswith("leave it out with --features")
    assert by["const_one"]["kind"] == "constant" and "(1.0) on every row" in by["const_one"]["message"]
    assert by["email"]["kind"] == "id" and "distinct value on each of the 200 rows" in by["email"]["message"]
    assert by["signup_date"] == {"column": "signup_date", "kind": "dropped", "message": (
        "dates as text (84 distinct values): not numeric, so not a feature (encode them as numbers, e.g. days since "
        "a reference day, to use them)")}
    assert by["comment"]["message"].startswith("high-cardinality text (90 distinct values): not numeric")
    assert by["segment"] == {"column": "segment", "kind": "dropped",
                             "message": "text (3 distinct values): not numeric, so not a feature (encode it as "
                                        "numbers to use it)"}


def test_named_features_warn_only_about_themselves():
    ds = dataset_from_frame(_frame(), "t.csv", features="f_*,customer_id")
    assert [(w["column"], w["kind"]) for w in ds.warnings] == [("customer_id", "id")]
    clean = dataset_from_frame(_frame(), "t.csv", features="f_*")
    assert clean.warnings == ()


def test_a_small_table_has_no_id_warning():
    from taskgrouping.data.load import ID_MIN_ROWS, column_warnings

    small = _frame().head(ID_MIN_ROWS - 1)
    out = column_warnings(small, ["y_a"], ["customer_id", "f_0"], ["customer_id", "f_0"], frozenset({"y_a"}))
    assert out == []  # 19 distinct integers are not yet an identifier
    big = _frame().head(ID_MIN_ROWS)
    out = column_warnings(big, ["y_a"], ["customer_id", "f_0"], ["customer_id", "f_0"], frozenset({"y_a"}))
    assert [w["kind"] for w in out] == ["id"]


# --- unusable task columns -------------------------------------------------------------------------------
def _with_bad_labels(n=200):
    f = _frame(n)
    return f.with_columns(pl.lit(None, pl.Float64).alias("y_empty"), pl.lit(None, pl.Float64).alias("y_void"),
                          pl.lit(1).alias("y_const"))


def test_every_unusable_task_column_is_named_in_one_refusal():
    with pytest.raises(InputError) as err:
        dataset_from_frame(_with_bad_labels(), "t.csv")
    msg = str(err.value)
    assert msg.startswith("t.csv: 3 task columns cannot be used: task 'y_empty' has no labels (every value is "
                          "missing); task 'y_void' has no labels")
    assert "task 'y_const' has 1 distinct label value (1)" in msg
    assert msg.endswith("To go on, leave them out (--tasks 'y_*,!y_empty,!y_void,!y_const') or pass "
                        "--skip-unusable-tasks")
    assert "\n" not in msg
    with pytest.raises(InputError, match=r"leave them out \(--tasks 'y_a,y_empty,y_void,!y_empty,!y_void'\)"):
        dataset_from_frame(_with_bad_labels(), "t.csv", tasks="y_a,y_empty,y_void")
    with pytest.raises(InputError, match=r"To go on, leave them out of Y or pass skip_unusable_tasks=True$"):
        dataset_from_frame(_with_bad_labels(), "X, Y", python=True)


def test_one_unusable_column_keeps_its_own_message():
    f = _frame().with_columns(pl.lit(None, pl.Float64).alias("y_empty"))
    with pytest.raises(InputError, match=r"^t.csv: task 'y_empty' has no labels \(every value is missing\) \(leave "
                                         r"it out \(--tasks 'y_\*,!y_empty'\) or pass --skip-unusable-tasks\)$"):
        dataset_from_frame(f, "t.csv")


def test_skip_unusable_tasks_leaves_them_out_with_a_warning():
    ds = dataset_from_frame(_with_bad_labels(), "t.csv", skip_unusable=True)
    assert ds.task_names == ["y_a", "y_b"] and ds.labels.shape == (200, 2)
    skipped = [w for w in ds.warnings if w["kind"] == "skipped"]
    assert [w["column"] for w in skipped] == ["y_empty", "y_void", "y_const"]
    assert skipped[0]["message"] == ("task 'y_empty' has no labels (every value is missing); left out "
                                     "(--skip-unusable-tasks)")
    only_bad = _with_bad_labels().drop("y_a", "y_b")
    with pytest.raises(InputError, match=r"^t.csv: no task column can be used: task 'y_empty' has no labels"):
        dataset_from_frame(only_bad, "t.csv", skip_unusable=True)


# --- imputation ------------------------------------------------------------------------------------------
def _missing(tmp_path):
    f = _frame()
    f1 = f["f_1"].to_numpy().copy()
    f1[[3, 10, 50]] = np.nan
    path = tmp_path / "m.csv"
    f.with_columns(pl.Series("f_1", f1)).write_csv(path)
    return str(path), f1


def test_missing_features_are_refused_with_the_hint_or_imputed_from_the_training_rows(tmp_path):
    from taskgrouping.data.dataset import prepare

    path, f1 = _missing(tmp_path)
    with pytest.raises(InputError, match=r"feature column 'f_1' has 3 missing, NaN or inf values \(first at row 3\); "
                                         r"pass --impute median \(or mean\) to fill missing values$"):
        load_dataset(path, features="f_*")
    for how, stat in (("median", np.median), ("mean", np.mean)):
        ds = load_dataset(path, features="f_*", impute=how)
        assert ds.imputed == {"f_1": how} and np.isnan(ds.features[[3, 10, 50], 1]).all()
        w = [w for w in ds.warnings if w["kind"] == "imputed"]
        assert w == [{"column": "f_1", "kind": "imputed",
                      "message": f"3 missing values filled with the {how} of the column's training rows (--impute "
                                 f"{how}; the value is in the prepared data and every exported model.json)"}]
        data = prepare(ds, 0, 64)
        train = data.split == 0
        fill = float(stat(f1[train & ~np.isnan(f1)]))  # the training rows only: no held-out row shapes x
        assert data.imputed == {"f_1": pytest.approx(fill)}
        raw = data.x[:, 1] * data.x_std[1] + data.x_mean[1]
        np.testing.assert_allclose(raw[[3, 10, 50]], fill, rtol=1e-5)
        assert np.isfinite(data.x).all()
        assert fill != pytest.approx(float(stat(f1[~np.isnan(f1)])), abs=1e-9)  # not the whole column's
    # how the values are filled is part of the features' identity
    by = {how: load_dataset(path, features="f_*", impute=how).features_fingerprint() for how in ("median", "mean")}
    assert by["median"] != by["mean"]
    with pytest.raises(InputError, match=r"^--impute 'zero': use one of none, median, mean$"):
        load_dataset(path, impute="zero")


def test_every_column_with_missing_features_is_named_at_once():
    f = _frame()
    gaps = f.with_columns(pl.Series("f_0", np.where(np.arange(200) < 4, np.nan, f["f_0"].to_numpy())),
                          pl.Series("f_2", np.where(np.arange(200) == 9, np.nan, f["f_2"].to_numpy())))
    with pytest.raises(InputError, match=r"^t.csv: 2 feature columns have missing, NaN or inf values: 'f_0' \(4\), "
                                         r"'f_2' \(1\); pass --impute median \(or mean\) to fill missing values$"):
        dataset_from_frame(gaps, "t.csv", features="f_*")
    with pytest.raises(InputError, match=r"; pass impute='median' \(or 'mean'\) to fill missing values$"):
        dataset_from_frame(gaps, "X, Y", features="f_*", python=True)


def test_inf_and_all_missing_columns_are_not_imputed(tmp_path):
    f = _frame()
    inf = f.with_columns(pl.Series("f_0", np.where(np.arange(200) == 7, np.inf, f["f_0"].to_numpy())))
    with pytest.raises(InputError, match=r"feature column 'f_0' has 1 missing, NaN or inf values \(first at row 7\)$"):
        dataset_from_frame(inf, "t.csv", features="f_*", impute="median")
    empty = f.with_columns(pl.lit(None, pl.Float64).alias("f_9"))
    with pytest.raises(InputError, match=r"^t.csv: feature column 'f_9' has no values to impute from \(all missing\)$"):
        dataset_from_frame(empty, "t.csv", features="f_*", impute="mean")


def test_run_config_checks_impute():
    from taskgrouping.config import RunConfig

    with pytest.raises(InputError, match=r"^--impute must be one of none, median, mean, got 'knn'$"):
        RunConfig(impute="knn")


# --- at chance for every kind ----------------------------------------------------------------------------
def _row(task, name, value):
    return {"setting": "single_task", "task": task, "repeat": 0, "metric_name": name, "metric": value}


def test_multiclass_at_chance_is_accuracy_against_the_majority_rate():
    from taskgrouping.report import chance_tasks

    counts = [50, 30, 20]  # majority rate 0.5, n = 100: se 0.05, one-sided 5% needs acc > 0.5 + 1.645 * 0.05
    refs = {"m": {"kind": "multiclass", "counts": counts}}
    assert chance_tasks([_row("m", "accuracy", 0.58)], refs) == {
        "m": {"metric": "accuracy", "value": 0.58, "reference": 0.5}}
    assert chance_tasks([_row("m", "accuracy", 0.59)], refs) == {}
    # brute force: the flag is exactly "z below 1.645" over a grid of accuracies
    for acc in np.linspace(0.3, 0.8, 51):
        z = (acc - 0.5) / np.sqrt(0.25 / 100)
        assert ("m" in chance_tasks([_row("m", "accuracy", float(acc))], refs)) == (z < 1.645)


def test_regression_at_chance_uses_the_paired_z_and_binary_keeps_auroc():
    from taskgrouping.report import chance_tasks

    refs = {"r": {"kind": "regression", "z": 1.2, "rmse_mean": 3.0}, "q": {"kind": "regression", "z": 4.0,
                                                                            "rmse_mean": 3.0},
            "b": [50, 50]}
    rows = [_row("r", "rmse", 2.9), _row("q", "rmse", 1.0), _row("b", "auroc", 0.55)]
    out = chance_tasks(rows, refs)
    assert out == {"r": {"metric": "RMSE", "value": 2.9, "reference": 3.0},
                   "b": {"metric": "AUROC", "value": 0.55, "reference": 0.5}}


def test_random_three_class_and_noise_regression_are_flagged_planted_ones_are_not(tmp_path):
    """The flow's references (regroup._chance_refs) on real single-task models: random labels at chance, planted not."""
    from dataclasses import asdict

    from taskgrouping.data.dataset import prepare
    from taskgrouping.flows.regroup import _chance_refs
    from taskgrouping.models.train import TrainSettings
    from taskgrouping.report import chance_tasks
    from taskgrouping.storage import Store
    from taskgrouping.tasks.steps import store_prepared, train_step

    rng = np.random.default_rng(4)
    n = 1000
    x = rng.standard_normal((n, 4))
    frame = pl.DataFrame({f"f_{i}": x[:, i] for i in range(4)} | {
        "y_three": rng.integers(0, 3, n), "y_class": np.digitize(x[:, 0], [-0.5, 0.5]),
        "y_noise": rng.standard_normal(n), "y_amount": 3 * x[:, 1] + 0.1 * rng.standard_normal(n)})
    ds = dataset_from_frame(frame, "t.csv")
    assert [t.kind for t in ds.tasks] == ["multiclass", "multiclass", "regression", "regression"]
    st = Store(tmp_path / "store")
    data = prepare(ds, 0, 128)
    key = store_prepared(st, data, 128)
    rows, single = [], []
    for t in data.task_names:
        rec = train_step.fn(str(st.root), key, [t], asdict(TrainSettings(hidden=16, max_epochs=40)), 0, "cpu",
                            cache_key=f"single-{t}", run_id="r")
        rows += [{"setting": "single_task", "repeat": 0, **r} for r in rec["results"]]
        single.append((t, f"single-{t}"))
    refs = _chance_refs(st, key, {"tasks": [{"name": t.name, "kind": t.kind} for t in data.tasks]}, single)
    test = data.parts(0) == 3
    assert refs["y_three"]["counts"] == np.bincount(data.y[test, 0].astype(int), minlength=3).tolist()
    # the regression reference: the training mean's RMSE on the test rows, in the label's units
    j = data.task_names.index("y_noise")
    y_test = frame["y_noise"].to_numpy()[data.parts(j) == 3]
    train_mean = frame["y_noise"].to_numpy()[data.split == 0].mean()
    assert refs["y_noise"]["rmse_mean"] == pytest.approx(np.sqrt(np.mean((y_test - train_mean) ** 2)), rel=1e-4)
    flagged = chance_tasks(rows, refs)
    assert set(flagged) == {"y_three", "y_noise"}, flagged
    assert flagged["y_three"]["metric"] == "accuracy" and flagged["y_noise"]["metric"] == "RMSE"


def test_counts_and_small_numbers_print_for_people():
    from taskgrouping.report import _count, _fixed

    assert [_count(v) for v in (999, 12_345, 999_500, 1_030_000, 2.5e10)] == ["999", "12.3k", "1M", "1.03M", "25G"]
    assert _fixed(-1.2e-4) == "-0.00012" and _fixed(0.0) == "0.000" and _fixed(0.25) == "0.250"


# --- exported models from frames -------------------------------------------------------------------------
def _predictor(imputed=None, columns=("a", "b", "c")):
    from taskgrouping.data.dataset import TaskSpec
    from taskgrouping.models.export import FORMAT, GroupPredictor

    spec = {"format": FORMAT, "format_version": 1, "setting": "all_together",
            "trunk": {"name": "mlp", "input_shape": None, "in_dim": 3, "hidden": 8, "layers": 2},
            "features": list(columns), "x_mean": [0.5, -1.0, 2.0], "x_std": [1.0, 2.0, 0.5],
            "imputed": imputed or {},
            "tasks": [{"name": "y", "kind": "binary", "n_classes": 2, "classes": ["0", "1"], "y_mean": 0.0,
                       "y_scale": 1.0, "served": True},
                      {"name": "r", "kind": "regression", "n_classes": 1, "classes": [], "y_mean": 3.0,
                       "y_scale": 2.0, "served": True}]}
    assert TaskSpec  # the kinds above are TaskSpec's
    torch.manual_seed(0)
    return GroupPredictor(spec).eval()


def test_predict_takes_a_frame_by_column_name_in_any_order():
    model = _predictor()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3)).astype(np.float32)
    frame = pl.DataFrame({"extra": np.zeros(20), "c": x[:, 2], "a": x[:, 0], "b": x[:, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "non-writable array" warning included
        from_frame = model.predict(frame)
        ro = x.copy()
        ro.setflags(write=False)
        from_array = model.predict(ro)
    for k in ("y", "r"):
        np.testing.assert_array_equal(from_frame[k], from_array[k])
    np.testing.assert_array_equal(model.predict(frame.to_arrow())["r"], from_array["r"])
    with pytest.raises(ValueError, match=r"^the frame lacks the feature column 'b' \(this model takes 3: a, b, c\)$"):
        model.predict(frame.drop("b"))
    nan = frame.with_columns(pl.Series("a", np.where(np.arange(20) == 2, np.nan, x[:, 0])))
    with pytest.raises(ValueError, match=r"^feature column 'a' has 1 missing values, and the model was not trained "
                                         r"with --impute$"):
        model.predict(nan)
    with pytest.raises(ValueError, match=r"^feature column 'c' has dtype String; it must be numeric$"):
        model.predict(frame.with_columns(pl.col("c").cast(pl.String)))


def test_imputed_columns_are_filled_at_prediction_as_in_training():
    model = _predictor(imputed={"a": 0.25})
    x = np.array([[np.nan, 1.0, 2.0], [0.25, 1.0, 2.0]], dtype=np.float32)
    out = model.predict(x)
    assert out["y"][0] == out["y"][1] and out["r"][0] == out["r"][1]
    framed = model.predict(pl.DataFrame({"a": [None, 0.25], "b": [1.0, 1.0], "c": [2.0, 2.0]}))
    assert framed["y"][0] == framed["y"][1]
    with pytest.raises(ValueError, match=r"^feature column 'b' has 1 missing values, the model has no fill value for "
                                         r"it \(it had no missing values in training\)$"):
        model.predict(pl.DataFrame({"a": [0.1, 0.25], "b": [None, 1.0], "c": [2.0, 2.0]}))


def test_export_plan_resolves_the_setting_and_names_folders():
    from taskgrouping.models.export import export_plan

    summary = {"run_id": "r1", "recommended": "single_task", "groups": [["a/b", "c"]], "served": {"a/b": 0, "c": 0},
               "models": {"0": "/m/g"}, "settings": {"evaluate": "grouped"},
               "setting_models": {"grouped": [{"folder": "/m/g", "serves": ["a/b", "c"]}],
                                  "single_task": [{"folder": "/m/1", "serves": ["a/b"]},
                                                  {"folder": "/m/2", "serves": ["a_b"]}]}}
    chosen, plan = export_plan(summary, "recommended")
    assert chosen == "single_task" and [n for n, _ in plan] == ["task-a_b", "task-a_b-1"]
    assert export_plan(summary, "grouped")[1][0][0] == "group-0"
    with pytest.raises(InputError, match=r"^--setting all_together: run r1 did not train it \(--evaluate grouped; it "
                                         r"trained: grouped, single_task\); run it again with --evaluate all$"):
        export_plan(summary, "all_together")
    old = {k: v for k, v in summary.items() if k not in ("setting_models", "recommended")}
    assert export_plan(old, "recommended") == ("grouped", [("group-0", {"folder": "/m/g", "serves": ["a/b", "c"]})])


# --- history ---------------------------------------------------------------------------------------------
def _history_store(tmp_path):
    from taskgrouping.storage import Store
    from taskgrouping.versions import grouping_changes, lineage_key

    st = Store(tmp_path / "store")
    first = {"tasks": ["a", "b", "c"], "groups": [["a", "b"], ["c"]], "served": {"a": 0, "b": 0, "c": 1}}
    second = {"tasks": ["a", "b", "c", "d"], "groups": [["a", "d"], ["b", "c"]], "served": {"a": 0, "d": 0, "b": 1,
                                                                                          "c": 1}}
    key = lineage_key("/data/wine.csv", "swola", "graph")
    for i, (prev, cur) in enumerate(((None, first), (first, second))):
        st.add_version(key, cur | {"run_id": f"run-{i}", "created": f"2026-12-0{i + 1}T03:00:00+0000",
                                   "data": "/data/wine.csv", "method": "swola", "selector": "graph",
                                   "changes": grouping_changes(prev, cur), "previous_version": i or None})
    named = lineage_key("/data/cellar.csv", "swola", "graph", "cellar")
    st.add_version(named, first | {"run_id": "run-9", "created": "2026-12-03T03:00:00+0000", "data": "/data/c.csv",
                                   "method": "swola", "selector": "graph", "changes": grouping_changes(None, first),
                                   "lineage_name": "cellar"})
    return st.root, key


def test_history_lists_lineages_versions_and_changes(tmp_path, capsys):
    from taskgrouping.cli import main
    from taskgrouping.history import history

    root, key = _history_store(tmp_path)
    lineages = history(root)
    assert [e["name"] for e in lineages] == ["cellar", "wine.csv"]  # newest activity first
    wine = lineages[1]
    assert wine["lineage"] == key and [v["version"] for v in wine["versions"]] == [1, 2]
    v2 = wine["versions"][1]
    assert (v2["tasks"], v2["groups"], v2["tasks_added"]) == (4, 2, ["d"]) and set(v2["moved"]) == {"a", "b", "c"}
    assert main(["history", "--store", str(root), "--lineage", "wine.csv", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [wine]
    assert main(["history", "--store", str(root)]) == 0
    text = capsys.readouterr().out
    assert "wine.csv  (swola/graph, 2 versions, lineage " in text
    assert "  v1  2026-12-01T03:00:00+0000  run run-0  3 tasks in 2 groups: first grouping" in text
    assert "  v2  2026-12-02T03:00:00+0000  run run-1  4 tasks in 2 groups: added d; moved a, b, c" in text
    assert "cellar  (swola/graph, 1 version" in text and "  data /data/c.csv" in text
    assert main(["history", "--store", str(root), "--lineage", key[:8], "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["wine.csv"]


def test_history_refusals(tmp_path, capsys):
    from taskgrouping.cli import main

    root, _ = _history_store(tmp_path)
    assert main(["history", "--store", str(root), "--lineage", "nope"]) == 2
    assert capsys.readouterr().err.strip() == (f"taskgrouping: error: --lineage 'nope': no such lineage in {root}; the "
                                               "store has: cellar, wine.csv")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    assert main(["history", "--store", str(tmp_path / "plain")]) == 2
    assert capsys.readouterr().err.strip() == f"taskgrouping: error: --store {tmp_path / 'plain'}: not a taskgrouping store"


# --- the main guard --------------------------------------------------------------------------------------
CASES = {
    "top level": ("from taskgrouping.mainguard import unguarded_call\nprint(unguarded_call())\n", "line 2"),
    "guarded": ("from taskgrouping.mainguard import unguarded_call\nif __name__ == '__main__':\n"
                "    x = 1\n    print(unguarded_call())\n", "None"),
    "in a function called unguarded": ("from taskgrouping.mainguard import unguarded_call\n\ndef main():\n"
                                       "    print(unguarded_call())\n\nmain()\n", "line 6"),
    "in a function called under the guard": ("from taskgrouping.mainguard import unguarded_call\n\ndef main():\n"
                                             "    print(unguarded_call())\n\nif '__main__' == __name__:\n    main()\n",
                                             "None"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unguarded_calls_are_found_on_the_scripts_syntax_tree(tmp_path, case):
    source, expected = CASES[case]
    script = tmp_path / "script.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True).stdout
    if expected == "None":
        assert out.strip() == "None"
    else:
        assert out.strip() == repr((str(script), int(expected.split()[1])))


def test_a_script_without_the_guard_fails_at_once_naming_the_fix(tmp_path):
    import time

    script = tmp_path / "nightly.py"
    script.write_text(textwrap.dedent(f"""
        import taskgrouping
        taskgrouping.run(data="builtin:synthetic:tasks=4,groups=2,samples=200", store={str(tmp_path / 's')!r},
                         samples=64, evaluate="none", workers=1)
    """))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60 and res.returncode == 1
    assert (f"InputError: {script}:3: taskgrouping.run starts worker processes, which import this script again: put "
            "the call under `if __name__ == \"__main__\":`") in res.stderr
    assert not (tmp_path / "s").exists()  # nothing started, nothing written


# --- the run's local cluster -----------------------------------------------------------------------------
def test_two_run_clusters_at_once_do_not_fight_over_port_8787():
    from distributed import LocalCluster

    from taskgrouping.config import RunConfig
    from taskgrouping.flows.regroup import cluster_kwargs

    kwargs = cluster_kwargs(RunConfig(workers=1)) | {"n_workers": 0}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with LocalCluster(**kwargs) as first, LocalCluster(**kwargs) as second:
            ports = {c.scheduler.http_server.port for c in (first, second)}
    assert 8787 not in ports and len(ports) == 2
    assert not [w for w in seen if "8787" in str(w.message)], [str(w.message) for w in seen]


def test_an_mlp_trained_from_a_checkpoint_exports_and_loads(tmp_path):
    """--trunk mlp --checkpoint FILE builds the trunk wrapped (trunk.body.*); the loader must build it the same way."""
    from safetensors.torch import save_file

    from taskgrouping import load_group_model
    from taskgrouping.data.dataset import TaskSpec
    from taskgrouping.models.export import group_spec
    from taskgrouping.models.train import MultiTaskModel
    from taskgrouping.models.trunks import build_any_trunk

    ckpt = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in build_any_trunk("mlp", (3,), 8, 2, seed=1).body.state_dict().items()},
              str(ckpt))
    tasks = [TaskSpec("y", "binary", 2, ("0", "1"))]
    trained = MultiTaskModel(3, tasks, 8, 2, 0, "mlp", checkpoint=str(ckpt)).eval()
    folder = tmp_path / "group-0"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(folder / "model.safetensors"))
    meta = {"tasks": [{"name": "y", "kind": "binary", "n_classes": 2, "classes": ["0", "1"]}], "y_mean": [0.0],
            "y_scale": [1.0], "x_mean": [0.0, 1.0, 0.0], "x_std": [1.0, 2.0, 1.0], "feature_names": ["a", "b", "c"],
            "input_shape": None}
    spec = group_spec(meta, ["y"], ["y"], {"trunk": "mlp", "hidden": 8, "layers": 2}, {"setting": "grouped"})
    (folder / "model.json").write_text(json.dumps(spec))
    model = load_group_model(folder)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    with torch.no_grad():
        z = (torch.from_numpy(x) - torch.tensor([0.0, 1.0, 0.0])) / torch.tensor([1.0, 2.0, 1.0])
        expected = torch.sigmoid(trained(z)[0][:, 0]).numpy()
    np.testing.assert_allclose(model.predict(x)["y"], expected, rtol=1e-6)


def test_scheduled_flow_and_prefect_yaml_take_impute_and_skip_unusable_tasks(tmp_path):
    import inspect
    from pathlib import Path

    import yaml

    from taskgrouping.flows.scheduled import _PARAMS, build_config, scheduled_regroup

    cfg = build_config({"data": "builtin:digits", "store": str(tmp_path), "impute": "mean",
                        "skip_unusable_tasks": True})
    assert (cfg.impute, cfg.skip_unusable_tasks) == ("mean", True)
    served = build_config({"config": cfg.to_dict(), "impute": "median"})  # a given parameter wins over config
    assert (served.impute, served.skip_unusable_tasks) == ("median", True)
    with pytest.raises(InputError, match=r"^--impute must be one of none, median, mean, got 'zero'$"):
        build_config({"data": "builtin:digits", "store": str(tmp_path), "impute": "zero"})
    signature = set(inspect.signature(scheduled_regroup.fn).parameters)
    assert signature == set(_PARAMS)
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    params = spec["deployments"][0]["parameters"]
    assert {"impute", "skip_unusable_tasks"} <= set(params) <= signature
