"""``taskgrouping select``: both file forms, its JSON, and every rejection with its message."""

import json

import numpy as np
import polars as pl
import pyarrow.parquet as papq
import pytest

from taskgrouping.cli import main
from taskgrouping.methods.base import AffinityMatrix


def planted_gain(t=9):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), t // 3)
    g = np.where(labels[:, None] == labels[None, :], 0.5, -0.3) + 0.05 * rng.normal(size=(t, t))
    np.fill_diagonal(g, 0.0)
    return [f"task{i}" for i in range(t)], g


def write_csv(path, names, values, first="", rows=None):
    rows = names if rows is None else rows
    lines = [",".join([first, *names])]
    lines += [",".join([r, *(str(v) for v in vals)]) for r, vals in zip(rows, values, strict=False)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_json(capsys, *args):
    assert main(["select", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_csv_and_parquet_give_the_same_groups(tmp_path, capsys):
    names, g = planted_gain()
    csv = write_csv(tmp_path / "m.csv", names, g)
    pq = tmp_path / "m.parquet"
    papq.write_table(AffinityMatrix(names, g, "gain").to_table(), pq)
    a = run_json(capsys, "--affinity", csv, "--groups", "4")
    b = run_json(capsys, "--affinity", str(pq), "--groups", "4")
    assert a["groups"] == b["groups"] and a["objective"] == pytest.approx(b["objective"])
    assert {"groups", "served", "objective"} <= set(a)
    planted = run_json(capsys, "--affinity", csv, "--groups", "3")
    assert sorted(map(sorted, planted["groups"])) == [names[0:3], names[3:6], names[6:9]]
    for t, gi in a["served"].items():
        assert t in a["groups"][gi]


def test_rows_in_any_order_and_mip_constraints(tmp_path, capsys):
    names, g = planted_gain(6)
    order = [5, 3, 1, 0, 2, 4]
    csv = write_csv(tmp_path / "m.csv", names, g[order], first="task", rows=[names[i] for i in order])
    out = run_json(capsys, "--affinity", csv, "--groups", "3", "--selector", "mip", "--max-group-size", "2")
    assert max(len(x) for x in out["groups"]) <= 2 and sum(len(x) for x in out["groups"]) == 6
    assert main(["select", "--affinity", csv, "--groups", "2"]) == 0
    assert "objective (sum of served scores)" in capsys.readouterr().out


def test_task_costs_file(tmp_path, capsys):
    names, g = planted_gain(6)
    csv = write_csv(tmp_path / "m.csv", names, g)
    costs = tmp_path / "c.csv"
    pl.DataFrame({"task": names, "cost": [3.0, 1, 1, 1, 1, 1]}).write_csv(costs)
    out = run_json(capsys, "--affinity", csv, "--groups", "4", "--selector", "mip", "--max-group-cost", "3",
                   "--task-costs", str(costs))
    assert ["task0"] in out["groups"]  # task0 alone already uses the whole budget


def _long(tmp_path, frame):
    path = tmp_path / "long.parquet"
    frame.write_parquet(path)
    return str(path)


LONG = pl.DataFrame({"task_a": ["a", "a", "b", "b"], "task_b": ["a", "b", "a", "b"], "value": [0.0, 1.0, 1.0, 0.0]})


@pytest.mark.parametrize("make, args, message", [
    (lambda p: str(p / "none.csv"), [], "none.csv: no such file"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, 1], [1, 0]]), ["--selector", "magic"],
     "unknown --selector 'magic'; known selectors: graph, spectral, gat, network, mip"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, 1]], rows=["a"]), [],
     "the matrix has 1 rows and 2 task columns; it must be square"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, 1], [1, 0]], rows=["a", "c"]), [],
     "task 'b' is not both a row name and a column name"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, 1], [1, 0]], rows=["a", "a"]), [],
     "task 'a' names more than one row"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, "x"], [1, 0]]), [], "column 'b' is String, not numeric"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, "inf"], [1, 0]]), [],
     "value for ('a', 'b') is inf, not a finite number"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, ""], [1, 0]]), [], "column 'b' has an empty value in row 1"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, -1], [1, 0]]), ["--kind", "distance"],
     "distance ('a', 'b') is negative (-1)"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, 1], [1, 0]]), ["--groups", "3"],
     "--groups 3 is outside 1..2 (the number of tasks in"),
    (lambda p: write_csv(p / "m.csv", ["a", "b", "c"], np.eye(3)), ["--groups", "1", "--selector", "mip",
                                                                     "--max-group-size", "2"],
     "infeasible constraints: 1 groups of at most 2 tasks cannot hold 3 tasks without overlap"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, 1], [1, 0]]), ["--selector", "gat", "--max-group-size", "1"],
     "--selector gat takes no overlap, size or cost constraints; use one of network, mip"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, 1], [1, 0]]), ["--selector", "graph", "--max-group-size", "1"],
     "--selector graph takes no overlap, size or cost constraints; use one of network, mip"),
    (lambda p: write_csv(p / "m.csv", ["a", "b"], [[0, 1], [1, 0]]), ["--selector", "graph", "--groups", "3"],
     "--groups 3 is outside 1..2 (the number of tasks in"),
    (lambda p: _long(p, LONG.with_columns(value=pl.Series([0.0, float("nan"), float("nan"), 0.0]))),
     ["--selector", "graph", "--kind", "distance"], "value for ('a', 'b') is nan, not a finite number"),
    (lambda p: _long(p, LONG.drop("value")), [], "missing column 'value' (long form needs task_a, task_b, value[, kind])"),
    (lambda p: _long(p, LONG.slice(0, 1).vstack(LONG.slice(3, 1)).vstack(LONG.slice(2, 1))), [],
     "no value for pair ('a', 'b')"),
    (lambda p: _long(p, LONG.vstack(LONG.head(1))), [], "pair ('a', 'a') appears more than once"),
    (lambda p: _long(p, LONG.with_columns(kind=pl.lit("distance"))), ["--kind", "gain"],
     "--kind gain disagrees with the file's kind column (distance)"),
    (lambda p: _long(p, LONG.with_columns(kind=pl.lit("closeness"))), [],
     "column 'kind' must hold one of 'gain' or 'distance' throughout, got ['closeness']"),
])
def test_rejections_exit_2_with_one_line(tmp_path, capsys, make, args, message):
    rc = main(["select", "--affinity", make(tmp_path), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1


def test_bad_task_costs_file(tmp_path, capsys):
    csv = write_csv(tmp_path / "m.csv", ["a", "b"], [[0, 1], [1, 0]])
    costs = tmp_path / "c.csv"
    pl.DataFrame({"task": ["z"], "cost": [1.0]}).write_csv(costs)
    rc = main(["select", "--affinity", csv, "--selector", "mip", "--task-costs", str(costs)])
    assert rc == 2 and "task 'z' is not in the affinity matrix" in capsys.readouterr().err
    pl.DataFrame({"task": ["a"], "cost": [-2.0]}).write_csv(costs)
    rc = main(["select", "--affinity", csv, "--selector", "mip", "--task-costs", str(costs)])
    assert rc == 2 and "task cost of 'a' must be a finite non-negative number, got -2.0" in capsys.readouterr().err
