"""The first hour of a new user (issue 16): every rejection through the CLI with its message, the leakage
rule, task kinds, the verdict's controls, lineage, verify on a non-store, stale servers."""

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from taskgrouping.cli import main
from taskgrouping.data.load import label_columns, load_dataset
from taskgrouping.errors import InputError


def _table(tmp_path, n=120, name="t.csv", **extra):
    rng = np.random.default_rng(0)
    cols = {f"f_{i}": rng.standard_normal(n) for i in range(3)}
    cols |= {"y_a": rng.integers(0, 2, n), "y_b": rng.integers(0, 2, n), "y_c": rng.standard_normal(n)}
    cols |= {k: v(n, rng) if callable(v) else v for k, v in extra.items()}
    path = tmp_path / name
    frame = pl.DataFrame(cols)
    frame.write_parquet(path) if name.endswith(".parquet") else frame.write_csv(path)
    return str(path)


def _rejected(tmp_path, capsys, args, message):
    store = tmp_path / "store"
    rc = main([*args, "--store", str(store)] if "--store" not in args else args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert err.count("\n") == 1, err
    assert not store.exists()


# --- 1. labels never leak into features -------------------------------------------------------------

def test_labels_left_out_of_tasks_are_not_features(tmp_path):
    path = _table(tmp_path, y_x=lambda n, r: r.integers(0, 2, n), z_label=lambda n, r: r.integers(0, 2, n))
    for tasks in ("y_a,y_c", "y_a", "y_*,!y_b", "!y_b,!y_x", "z_label"):
        ds = load_dataset(path, tasks=tasks)
        labels = label_columns(pl.read_csv(path).columns, tasks)
        assert not set(ds.feature_names) & labels, (tasks, ds.feature_names)
        assert not any(f.startswith("y_") for f in ds.feature_names)
    # dropping a task leaves the feature set (and so every probe's input) unchanged
    assert load_dataset(path, tasks="y_a,y_c").feature_names == load_dataset(path, tasks="y_a").feature_names
    assert load_dataset(path, tasks="y_*,!y_b").task_names == ["y_a", "y_c", "y_x"]
    # an exact name in --features makes a label a feature; a glob never does
    assert "y_b" in load_dataset(path, tasks="y_a", features="f_*,y_b").feature_names
    assert load_dataset(path, tasks="y_a", features="*").feature_names == ["f_0", "f_1", "f_2", "z_label"]


@pytest.mark.parametrize("args, message", [
    (["--tasks", "y_a", "--features", "y_*"], "--features pattern 'y_*' matches only label columns; a label is a "
                                               "feature only when named exactly"),
    (["--tasks", "y_*,!y_zz"], "--tasks excludes 'y_zz', which matches no column"),
    (["--tasks", "!y_*"], "--tasks '!y_*' leaves no column"),
])
def test_task_and_feature_selection_rejections(tmp_path, capsys, args, message):
    _rejected(tmp_path, capsys, ["run", "--data", _table(tmp_path), *args], message)


# --- 3. task kinds -----------------------------------------------------------------------------------

def test_inferred_kinds_and_overrides(tmp_path):
    path = _table(tmp_path, n=200, y_int31=lambda n, r: r.integers(0, 31, n), y_q=lambda n, r: r.integers(3, 9, n),
                  y_flag=lambda n, r: r.choice(["no", "yes"], n), y_num_text=lambda n, r: r.integers(0, 40, n).astype(str))
    ds = load_dataset(path)
    kinds = {t.name: t.kind for t in ds.tasks}
    assert kinds == {"y_a": "binary", "y_b": "binary", "y_c": "regression", "y_int31": "regression",
                     "y_q": "multiclass", "y_flag": "binary", "y_num_text": "regression"}
    reasons = {t.name: t.reason for t in ds.tasks}
    assert reasons["y_int31"] == "inferred: integers with 31 distinct values (more than 10)"
    over = load_dataset(path, task_kinds=(("y_int*", "multiclass"), ("y_q", "regression")))
    by = {t.name: t for t in over.tasks}
    assert by["y_int31"].kind == "multiclass" and by["y_int31"].n_classes == 31
    assert by["y_int31"].classes == tuple(str(v) for v in sorted(np.unique(pl.read_csv(path)["y_int31"])))
    assert by["y_int31"].reason == "set by --task-kind y_int31=multiclass"
    assert by["y_q"].kind == "regression"
    # class indices follow numeric order, labels survive the round trip
    raw = pl.read_csv(path)["y_int31"].to_numpy()
    np.testing.assert_array_equal(np.array(by["y_int31"].classes, dtype=float)[over.labels[:, 3].astype(int)], raw)


@pytest.mark.parametrize("extra, args, message", [
    ({"y_id": lambda n, r: [f"id{i}" for i in range(n)]}, [],
     "task 'y_id' has 120 classes among 120 labelled samples; a multi-class task needs at least 5 labelled "
     "samples per class on average (leave it out of --tasks if it is an identifier)"),
    ({"y_n": lambda n, r: [str(v) if i % 10 else "unknown" for i, v in enumerate(r.integers(0, 50, n))]}, [],
     "task column 'y_n' is numeric except the token 'unknown' (12 rows): if it means missing, leave those cells "
     "empty (or NA); if the column is categorical, pass --task-kind y_n=multiclass"),
    ({}, ["--task-kind", "y_c=binary"], "--task-kind y_c=binary, but task 'y_c' has 120 distinct values; a binary "
                                        "task has exactly 2"),
    ({"y_k": lambda n, r: r.integers(0, 40, n)}, ["--task-kind", "y_k=multiclass"],
     "task 'y_k' has 40 classes among 120 labelled samples; a multi-class task needs at least 5 labelled samples "
     "per class on average (pass --task-kind y_k=regression if it is a quantity)"),
    ({}, ["--task-kind", "y_zz=binary"], "--task-kind y_zz=binary matches no task"),
    ({}, ["--task-kind", "y_a"], "--task-kind 'y_a': write NAME=KIND (KIND one of binary, multiclass, regression)"),
    ({}, ["--task-kind", "y_a=ordinal"], "--task-kind 'y_a=ordinal': unknown kind 'ordinal'; use one of binary, "
                                         "multiclass, regression"),
])
def test_task_kind_rejections(tmp_path, capsys, extra, args, message):
    _rejected(tmp_path, capsys, ["run", "--data", _table(tmp_path, **extra), *args], message)


def test_task_kind_on_a_builtin_is_rejected(tmp_path, capsys):
    _rejected(tmp_path, capsys, ["run", "--data", "builtin:digits", "--task-kind", "is_0=regression"],
              "--task-kind applies to files; the tasks of builtin:digits have fixed kinds")


# --- 4. bad input that was reported as an internal error ----------------------------------------------

def test_cuda_without_cuda_is_bad_input(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _rejected(tmp_path, capsys, ["run", "--data", _table(tmp_path), "--device", "cuda"],
              "--device cuda: torch sees no CUDA device on this machine")


def test_store_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    for store, message in ((afile, f"--store {afile}: is a file, not a folder"),
                           (afile / "s", f"--store {afile / 's'}: lies under {afile}, which is a file")):
        rc = main(["run", "--data", _table(tmp_path), "--store", str(store)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1
        assert afile.read_text() == "x"


def test_abbreviated_options_are_not_guessed(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--hid", "8"])  # not --hidden: a typo must not become another option
    assert exc.value.code == 2 and "unrecognized arguments: --hid 8" in capsys.readouterr().err


# --- 9. verify on a folder that is not a store -------------------------------------------------------

def test_verify_refuses_a_folder_that_is_not_a_store(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "readme.txt").write_text("hi")
    rc = main(["verify", "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and f"--store {tmp_path}: not a taskgrouping store" in err and err.count("\n") == 1
    assert "damaged" not in err


# --- 2. the random control is never recommended ------------------------------------------------------

def test_random_control_is_never_recommended():
    from taskgrouping.models.verdict import Cost, Estimate, decide
    from taskgrouping.report import settings_table

    def est(m: float, half: float = 0.01) -> Estimate:
        return Estimate(m, m - half, m + half, half / 2, 100.0)

    sel = {"grouped": est(1.2), "all_together": est(1.3), "single_task": est(1.1), "random": est(0.9)}
    pairwise = {(a, b): est(sel[a].mean - sel[b].mean) for a in sel for b in sel if a != b}
    costs = {s: Cost(m, 10 * m, 100 * m) for s, m in {"grouped": 3, "all_together": 1, "single_task": 8,
                                                        "random": 3}.items()}
    verdict = decide(sel, pairwise, costs)
    assert verdict["setting"] == "single_task" and verdict["pays"] == "no"
    totals = {s: {"val_loss": e.mean, "sel_loss": e.mean, "test_loss": e.mean} for s, e in sel.items()}
    table = settings_table({"verdict": verdict, "costs": {s: c.to_dict() for s, c in costs.items()}}, totals)
    assert "| random (control) |" in table and "| single_task **(recommended)** |" in table
    only = decide({"random": est(1.0)}, {}, {"random": costs["random"]})
    assert only["setting"] is None


# --- 8. lineage --------------------------------------------------------------------------------------

def test_lineage_name_replaces_the_path_but_keeps_method_and_selector():
    from taskgrouping.versions import lineage_key

    assert lineage_key("/a/t.csv", "swola", "spectral") != lineage_key("/b/t.csv", "swola", "spectral")
    assert lineage_key("/a/t.csv", "swola", "spectral", "prod") == lineage_key("/b/u.csv", "swola", "spectral", "prod")
    assert lineage_key("/a/t.csv", "swola", "spectral", "prod") != lineage_key("/a/t.csv", "tag", "spectral", "prod")


def test_empty_lineage_is_rejected(tmp_path, capsys):
    _rejected(tmp_path, capsys, ["run", "--data", _table(tmp_path), "--lineage", " "], "--lineage must not be empty")


# --- 5. servers left by crashed runs are reaped --------------------------------------------------------

def test_a_server_whose_owner_died_is_reaped_and_a_live_owners_is_kept(tmp_path):
    from taskgrouping.flows.server import _start_time, reap_stale_servers

    home = tmp_path / "home"
    (home / "servers").mkdir(parents=True)
    cmd = [sys.executable, "-c", "import time; time.sleep(120)"]
    stale = subprocess.Popen(cmd, start_new_session=True)
    live = subprocess.Popen(cmd, start_new_session=True)
    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait()
    try:
        for proc, owner in ((stale, dead_owner.pid), (live, os.getpid())):
            (home / "servers" / f"{proc.pid}.json").write_text(json.dumps({
                "pid": proc.pid, "cmdline": cmd, "start": _start_time(proc.pid), "owner": owner,
                "owner_start": _start_time(owner)}))
        assert reap_stale_servers(home) == [stale.pid]
        assert stale.wait(timeout=10) != 0
        assert live.poll() is None and (home / "servers" / f"{live.pid}.json").exists()
        assert not (home / "servers" / f"{stale.pid}.json").exists()
    finally:
        for proc in (stale, live):
            proc.kill()
            proc.wait()


def test_a_recycled_pid_running_something_else_is_not_killed(tmp_path):
    from taskgrouping.flows.server import _start_time, reap_stale_servers

    home = tmp_path / "home"
    (home / "servers").mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        (home / "servers" / f"{other.pid}.json").write_text(json.dumps({
            "pid": other.pid, "cmdline": [sys.executable, "-m", "prefect", "server", "start"],
            "start": _start_time(other.pid), "owner": 2 ** 22 + 7, "owner_start": None}))
        assert reap_stale_servers(home) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_unreadable_input_error_is_importable_from_the_package():
    import taskgrouping

    assert taskgrouping.InputError is InputError
