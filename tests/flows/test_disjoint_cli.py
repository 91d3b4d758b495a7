"""Tasks that share no samples through ``taskgrouping run``: two datasets stacked, and meta-learning."""

import json

import numpy as np
import polars as pl
import pytest

from taskgrouping.cli import main


def _stacked(tmp_path):
    """Two small datasets stacked in one table: y_a* labelled on the first 150 rows, y_b* on the last 150."""
    rng = np.random.default_rng(0)
    n = 300
    x = rng.standard_normal((n, 4))
    first = np.arange(n) < 150
    cols = {f"f{i}": x[:, i] for i in range(4)}
    for name, w, rows in (("y_a1", [1, 1, 0, 0], first), ("y_a2", [1, 0.8, 0, 0], first),
                          ("y_b1", [0, 0, 1, -1], ~first), ("y_b2", [0, 0, 0.9, -1], ~first)):
        cols[name] = np.where(rows, (x @ np.array(w) > 0).astype(float), np.nan)
    path = tmp_path / "stacked.csv"
    pl.DataFrame(cols).fill_nan(None).write_csv(path)
    return str(path)


def test_a_stacked_table_runs_with_groups_and_a_report(tmp_path, capsys):
    store = tmp_path / "store"
    rc = main(["run", "--data", _stacked(tmp_path), "--store", str(store), "--json", "--max-epochs", "5",
               "--groups", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(out)
    assert summary["distance"]["probe"] == "swola-meta signature"
    assert "4 task pairs share fewer than 30 labelled probe samples (fewest: 0)" in summary["distance"]["why"]
    assert sorted(map(sorted, summary["groups"])) == [["y_a1", "y_a2"], ["y_b1", "y_b2"]]
    report = open(summary["artifacts"]["report"]).read()
    assert "**Tasks that share too few samples**" in report
    assert all(np.isfinite(v) for v in summary["metrics"].values() if v is not None)
    assert summary["verdict"]["setting"] is not None  # the baselines trained and compared


def test_meta_training_on_mmaml_compares_four_settings_and_reuses_probes(tmp_path, capsys):
    store = tmp_path / "store"
    args = ["run", "--data", "builtin:mmaml:modes=2,train=3,heldout=2,query=20", "--store", str(store), "--json",
            "--method", "swola-meta", "--training", "meta", "--meta-outer-steps", "20", "--groups", "2"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    m = summary["meta_training"]
    assert set(m["settings"]) == {"all", "grouped", "random", "planted"}
    assert m["held_out"] == ["test_sin_00", "test_sin_01", "test_line_00", "test_line_01"]
    for per in m["settings"].values():
        for k in ("5", "10"):
            assert per[k]["low"] <= per[k]["mean"] <= per[k]["high"] and len(per[k]["per_task"]) == 4
    assert summary["verdict"]["pays"] in ("yes", "no") and "random partitions" in summary["verdict"]["reason"]
    assert summary["counts"]["probes_computed"] == 6 and summary["counts"]["groups_trained"] == 0
    report = open(summary["artifacts"]["report"]).read()
    assert "## Meta-learning on held-out tasks" in report and "one init per planted family" in report


def test_adding_a_task_to_swola_meta_probes_only_it_and_leaves_stored_probes_untouched(tmp_path, capsys):
    store = tmp_path / "store"
    base = ["run", "--data", "builtin:mmaml:modes=2,train=3,heldout=0", "--store", str(store), "--json",
            "--method", "swola-meta", "--evaluate", "none", "--groups", "2"]
    assert main([*base, "--tasks", "sin_*,line_00,line_01"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["counts"]["probes_computed"] == 5
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (store / "probes").glob("*.arrow")}
    assert len(stamps) == 5
    assert main(base) == 0  # all six tasks: line_02 is new
    more = json.loads(capsys.readouterr().out)
    assert more["counts"]["probes_computed"] == 1 and more["counts"]["probes_reused"] == 5
    assert more["counts"]["pairs_computed"] == 5 and more["counts"]["pairs_reused"] == 10
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (store / "probes").glob("*.arrow")}
    assert len(after) == 6 and all(after[k] == v for k, v in stamps.items())


@pytest.mark.parametrize("args, message", [
    (["--training", "meta"], "--training meta evaluates on held-out tasks: name the columns of"),
    (["--held-out-tasks", "y_a1"], "--held-out-tasks names the tasks meta-learning is evaluated on: use it "
                                   "with --training meta"),
    (["--training", "meta", "--held-out-tasks", "y_zz"], "--held-out-tasks names column 'y_zz', which is not in "
                                                         "the table"),
    (["--meta-outer-steps", "0"], "--meta-outer-steps must be at least 1, got 0"),
    (["--training", "twice"], "--training must be one of joint, meta, got 'twice'"),
    (["--meta-probe", "fisher"], "--meta-probe must be one of signature, gradients, adapted, got 'fisher'"),
])
def test_bad_meta_arguments_exit_2_with_one_line_and_no_store(tmp_path, capsys, args, message):
    store = tmp_path / "store"
    rc = main(["run", "--data", _stacked(tmp_path), "--store", str(store), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert not store.exists()


def test_meta_training_refuses_tasks_of_mixed_kinds(tmp_path):
    from taskgrouping.config import RunConfig
    from taskgrouping.errors import InputError

    rng = np.random.default_rng(0)
    n = 60
    path = tmp_path / "t.csv"
    pl.DataFrame({"f": rng.standard_normal(n), "y_a": rng.standard_normal(n), "y_b": rng.standard_normal(n),
                  "y_c": rng.integers(0, 2, n).astype(float)}).write_csv(path)
    cfg = RunConfig(data=str(path), training="meta", held_out_tasks="y_c", store=str(tmp_path / "s"))
    with pytest.raises(InputError, match="must be of one kind and width, got \\[\\('binary', 1\\), "
                                         "\\('regression', 1\\)\\]"):
        cfg.check_data()
    assert not (tmp_path / "s").exists()
