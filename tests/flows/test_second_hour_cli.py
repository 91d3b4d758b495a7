"""The second hour with one's own table through the CLI and the API (issue 27): a realistic table with an ID
column, a constant, a date, missing feature values, two empty label columns and a random 3-class label;
then export of the recommended setting, predictions from a frame, history, and the API on the CLI's store."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from taskgrouping.cli import main

FAST = ["--samples", "64", "--hidden", "8", "--max-epochs", "8", "--workers", "1"]


def _table(path, n=400):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, 4))
    f3 = x[:, 3].copy()
    f3[rng.choice(n, 25, replace=False)] = np.nan
    pl.DataFrame({
        "customer_id": rng.permutation(np.arange(10_000, 10_000 + n)),
        "const_one": np.ones(n),
        "signup_date": [f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(n)],
        "f_0": x[:, 0], "f_1": x[:, 1], "f_2": x[:, 2], "f_3": f3,
        "y_a": (x[:, 0] + 0.2 * rng.standard_normal(n) > 0).astype(int),
        "y_b": (x[:, 0] + 0.2 * rng.standard_normal(n) > 0.1).astype(int),
        "y_c": (x[:, 1] > 0).astype(int),
        "y_three": rng.integers(0, 3, n),          # random: at chance
        "y_empty": [None] * n, "y_void": [None] * n,
    }, schema_overrides={"y_empty": pl.Float64, "y_void": pl.Float64}).write_csv(path)
    return str(path)


def _run(capsys, *args):
    rc = main(["run", *args, *FAST, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_second_hour_with_ones_own_table(prefect_api, tmp_path, capsys):
    data = _table(tmp_path / "customers.csv")
    store = tmp_path / "store"

    # both empty label columns in one refusal, exit 2, nothing in the store
    assert main(["run", "--data", data, "--store", str(store), "--impute", "median", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 task columns cannot be used: task 'y_empty' has no labels" in err
    assert "task 'y_void' has no labels" in err and "--skip-unusable-tasks" in err
    assert not (store / "runs").exists()

    s = _run(capsys, "--data", data, "--store", str(store), "--skip-unusable-tasks", "--impute", "median")
    assert s["tasks"] == ["y_a", "y_b", "y_c", "y_three"]
    kinds = {w["column"]: w["kind"] for w in s["warnings"]}
    assert kinds == {"customer_id": "id", "const_one": "constant", "signup_date": "dropped", "f_3": "imputed",
                     "y_empty": "skipped", "y_void": "skipped"}
    assert s["features"] == ["customer_id", "const_one", "f_0", "f_1", "f_2", "f_3"]  # warned, not changed
    assert "y_three" in s["at_chance"] and "y_a" not in s["at_chance"]
    report = Path(s["artifacts"]["report"]).read_text()
    assert "| `customer_id` | ID-like | a distinct integer on each of the 400 rows looks like an identifier" in report
    assert "| `const_one` | constant | the same value (1.0) on every row" in report
    assert "| `signup_date` | left out | dates as text (" in report
    assert "| `f_3` | imputed | 25 missing values filled with the median of the column's training rows" in report
    assert "`y_three` (accuracy 0." in report.split("**At chance**: ")[1].split("\n")[0]
    assert "Trunk `mlp` (`--trunk auto`) on inputs of shape 6, " in report

    # export: the recommended setting by default, named in every model.json
    out = tmp_path / "exported"
    assert main(["export", "--run", s["run_id"], "--store", str(store), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    chosen = s["recommended"]
    assert printed.err.startswith(f"exported setting {chosen} (recommended) of run {s['run_id']}")
    index = json.loads((out / "export.json").read_text())
    assert index["setting"] == chosen and sorted(t for m in index["models"] for t in m["serves"]) == sorted(s["tasks"])
    from taskgrouping import load_group_model

    frame = pl.read_csv(data)
    cols = frame.columns
    rng = np.random.default_rng(0)
    shuffled = frame.select([cols[i] for i in rng.permutation(len(cols))])
    from taskgrouping.storage import Store

    prepared = Store(store).read_prepared(s["dataset_key"])
    f3 = frame["f_3"].to_numpy()
    f3_median = float(np.median(f3[(prepared.split == 0) & ~np.isnan(f3)]))  # the training rows' median
    assert prepared.imputed == {"f_3": pytest.approx(f3_median, rel=1e-6)}  # of the float32 features
    filled = frame.select(s["features"]).with_columns(pl.col("f_3").fill_null(f3_median)).to_numpy()
    for m in index["models"]:
        folder = out / m["folder"]
        spec = json.loads((folder / "model.json").read_text())
        assert spec["setting"] == chosen and spec["imputed"] == prepared.imputed and spec["trunk"]["name"] == "mlp"
        model = load_group_model(folder)
        by_frame, by_array = model.predict(shuffled), model.predict(filled)  # NaNs of f_3 filled as in training
        assert set(by_frame) == set(m["members"])
        for t in by_frame:
            np.testing.assert_allclose(by_frame[t], by_array[t], rtol=1e-6, atol=1e-7)
            assert np.isfinite(by_frame[t]).all()
    for setting, folders in (("all_together", ["all-together"]),
                             ("single_task", [f"task-{t}" for t in s["tasks"]]),
                             ("grouped", [f"group-{g}" for g in range(len(s["groups"]))])):
        target = tmp_path / f"x-{setting}"
        assert main(["export", "--run", s["run_id"], "--store", str(store), "--out", str(target),
                     "--setting", setting]) == 0
        capsys.readouterr()
        assert sorted(p.name for p in target.iterdir()) == sorted([*folders, "export.json"])
        assert {json.loads((target / f / "model.json").read_text())["setting"] for f in folders} == {setting}

    # the API on the table's frames reuses every probe of the CLI's run on the same store
    from taskgrouping import TaskGrouper

    labels = [c for c in frame.columns if c.startswith("y_")]
    tg = TaskGrouper(store=str(store), n_samples=64, hidden=8, impute="median", skip_unusable_tasks=True)
    tg.fit(frame.drop(labels), frame.select(labels))
    assert tg.counts_["probes_computed"] == 0 and tg.counts_["probes_reused"] == 4
    assert tg.features_ == s["features"] and {w["column"] for w in tg.warnings_} == set(kinds)

    # a second version (a task left out), then the history lists both
    again = _run(capsys, "--data", data, "--store", str(store), "--skip-unusable-tasks", "--impute", "median",
                 "--tasks", "y_*,!y_c", "--evaluate", "none")
    assert again["version"] == 2
    assert main(["history", "--store", str(store), "--json"]) == 0
    (lineage,) = json.loads(capsys.readouterr().out)
    assert lineage["name"] == "customers.csv" and lineage["data"] == data
    assert [(v["version"], v["run_id"], v["tasks"]) for v in lineage["versions"]] == [
        (1, s["run_id"], 4), (2, again["run_id"], 3)]
    assert lineage["versions"][1]["tasks_removed"] == ["y_c"] and lineage["versions"][0]["recommended"] == chosen
    assert main(["history", "--store", str(store)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("customers.csv  (swola/graph, 2 versions") and "removed y_c" in text

    # a run that trained nothing has nothing to export: one line, exit 2, nothing written
    assert main(["export", "--run", again["run_id"], "--store", str(store), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the run recorded no grouped models (made with --evaluate none" in err
    assert not (tmp_path / "none").exists()
