import json

import numpy as np
import polars as pl
import pytest

from taskgrouping.cli import main


def _csv(tmp_path, n=40):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.csv"
    pl.DataFrame({"f": rng.standard_normal(n), "y_a": rng.integers(0, 2, n),
                  "y_b": rng.integers(0, 2, n)}).write_csv(path)
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--method", "magic"], "unknown --method 'magic'; known methods: swola, tag, datamaps, hoa"),
    (["--selector", "kmeans"], "unknown --selector 'kmeans'; known selectors: graph, spectral, gat, network, mip"),
    (["--exhaustive"], "--exhaustive trains every subset and selects exactly on the measured losses: "
                       "use it with --method hoa --selector network"),
    (["--membership-weighted", "--method", "tag"], "--membership-weighted applies to --method datamaps only"),
    (["--tag-every", "0"], "--tag-every must be at least 1, got 0"),
    (["--max-group-size", "0", "--selector", "mip"], "--max-group-size must be at least 1, got 0"),
    (["--no-overlap"], "--selector graph takes no overlap, size or cost constraints; use one of network, mip"),
    (["--samples", "0"], "--samples must be a positive integer, got 0"),
    (["--evaluate", "some"], "--evaluate must be one of all, grouped, none, got 'some'"),
    (["--groups", "3"], "--groups 3 is outside 1..2 (the number of tasks)"),
    (["--groups", "0"], "--groups must be at least 1 or 'auto', got 0"),
    (["--tasks", "y_a,y_a"], "--tasks: 'y_a' is named twice"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
])
def test_bad_arguments_exit_2_with_one_line_and_no_store(tmp_path, capsys, args, message):
    store = tmp_path / "store"
    rc = main(["run", "--data", _csv(tmp_path), "--store", str(store), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1
    assert not store.exists()


def test_bad_file_exit_2(tmp_path, capsys):
    rc = main(["run", "--data", str(tmp_path / "missing.parquet"), "--store", str(tmp_path / "s")])
    assert rc == 2 and "missing.parquet: no such file" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--groups", "many"])
    assert exc.value.code == 2
    assert "--groups must be an integer or 'auto', got 'many'" in capsys.readouterr().err


def test_exhaustive_oracle_refuses_more_than_six_tasks(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "seven.csv"
    pl.DataFrame({"f": rng.standard_normal(40)} | {f"y_{i}": rng.integers(0, 2, 40) for i in range(7)}).write_csv(path)
    store = tmp_path / "store"
    rc = main(["run", "--data", str(path), "--store", str(store), "--method", "hoa", "--selector", "network",
               "--exhaustive"])
    assert rc == 2 and "--exhaustive trains every subset: at most 6 tasks, got 7" in capsys.readouterr().err
    assert not store.exists()


def test_task_costs_must_name_tasks_of_the_data(tmp_path, capsys):
    costs = tmp_path / "costs.csv"
    pl.DataFrame({"task": ["y_zz"], "cost": [2.0]}).write_csv(costs)
    store = tmp_path / "store"
    rc = main(["run", "--data", _csv(tmp_path), "--store", str(store), "--selector", "mip",
               "--max-group-cost", "3", "--task-costs", str(costs)])
    assert rc == 2 and "--task-costs: task 'y_zz' is not a task of" in capsys.readouterr().err
    assert not store.exists()


@pytest.mark.parametrize("args, message", [
    (["--cron", "every monday"], "--cron 'every monday' is not a valid cron expression (e.g. '0 3 * * 1')"),
    (["--method", "magic"], "unknown --method 'magic'; known methods: swola, tag, datamaps, hoa"),
    (["--groups", "9"], "--groups 9 is outside 1..2 (the number of tasks)"),
])
def test_serve_rejects_bad_input_before_serving(tmp_path, capsys, args, message):
    store = tmp_path / "store"
    rc = main(["serve", "--data", _csv(tmp_path), "--store", str(store), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not store.exists()


def test_a_failing_step_names_its_ml_task():
    from taskgrouping.tasks.steps import _naming

    with pytest.raises(RuntimeError, match="probe of ML task 'y_07' failed: ValueError: labels are all equal"):
        with _naming("probe of ML task 'y_07'"):
            raise ValueError("labels are all equal")


def test_the_console_script_keeps_the_exit_status_through_its_quick_exit(tmp_path):
    """``python -m taskgrouping`` ends with os._exit after main: the status and the message still arrive."""
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "taskgrouping", "run", "--data", "builtin:nope", "--store",
                          str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("known: digits, digits-images, mmaml, shapes, "
                                                               "subsets, synthetic")
    matrix = tmp_path / "m.csv"
    matrix.write_text("task,a,b,c\na,0,1,5\nb,1,0,5\nc,5,5,0\n")
    ok = subprocess.run([sys.executable, "-m", "taskgrouping", "select", "--affinity", str(matrix), "--groups", "2",
                         "--kind", "distance", "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert sorted(map(sorted, json.loads(ok.stdout)["groups"])) == [["a", "b"], ["c"]]
