"""The sparse task graph through the CLI: neighbour lists stored, groups found, +1 task incremental,
old probes untouched."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from taskgrouping.cli import main

DATA = "builtin:synthetic:tasks=101,groups=10,samples=400,seed=2"
FAST = ["--samples", "128", "--workers", "1", "--evaluate", "none", "--hidden", "16", "--json"]


def _run(capsys, *args):
    rc = main(["run", "--data", DATA, *args, *FAST])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_sparse_run_then_one_more_task(prefect_api, tmp_path, capsys):
    store = tmp_path / "store"
    first = _run(capsys, "--store", str(store), "--tasks", "y_*,!y_100", "--pairs", "sparse")
    pairs = first["pairs"]
    assert pairs["form"] == "neighbours" and pairs["stored"] == 10 and pairs["candidates"] == 20
    assert first["counts"]["pairs_computed"] == pairs["pairs_exact"] < 100 * 99 // 2
    table = pq.read_table(first["artifacts"]["affinity"])
    assert table.num_rows == 100 * 10 and set(table.column("rank").to_pylist()) == set(range(1, 11))
    assert first["ground_truth_ari"] >= 0.8
    report = Path(first["artifacts"]["report"]).read_text()
    assert "Sparse affinity (`--pairs sparse`): each task's 10 nearest partners" in report
    assert Path(first["artifacts"]["heatmap"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    probes = {p: p.read_bytes() for p in (store / "probes").glob("*.arrow")}
    assert len(probes) == 100

    second = _run(capsys, "--store", str(store), "--pairs", "sparse")
    assert second["counts"]["probes_computed"] == 1 and second["counts"]["probes_reused"] == 100
    assert all(p.read_bytes() == b for p, b in probes.items())  # the old probes are byte-identical
    # the new task's candidates (and who lists it), and the refinement pairs through it
    assert 0 < second["counts"]["pairs_computed"] <= 0.15 * first["pairs"]["pairs_exact"]
    assert second["regroup"]["mode"] == "incremental", second["regroup"]
    assert list(second["regroup"]["placed"]) == ["y_100"]
    old = {t: g for t, g in first["served"].items()}
    moved = [t for t in old if sorted(first["groups"][old[t]]) != sorted(u for u in second["groups"][second["served"][t]]
                                                                          if u != "y_100")]
    assert moved == []
    assert second["pairs"]["sketched"] == 1 and second["pairs"]["rows_read"] <= second["counts"]["pairs_computed"] + 1 < 101
    # only the rows of the pairs it computes, not every probe
    assert len(list((store / "sketches").rglob("*.parquet"))) == 2
    # the kept candidate lists: only the new task's row is searched against every task
    assert first["pairs"]["candidate_rows"] == 100 and second["pairs"]["candidate_rows"] == 1
    assert len(list((store / "sketches").rglob("lists/*.arrow"))) == 2

    fresh = _run(capsys, "--store", str(tmp_path / "fresh"), "--pairs", "sparse")  # all 101 from scratch
    from taskgrouping.storage import Store

    a = Store(store).read_affinity(Path(second["artifacts"]["affinity"]))
    b = Store(tmp_path / "fresh").read_affinity(Path(fresh["artifacts"]["affinity"]))
    assert a.tasks == b.tasks and (a.neighbours == b.neighbours).all()  # adding a task = computing afresh
    assert second["pairs"]["pairs_exact"] == fresh["pairs"]["pairs_exact"]  # the same exact pairs
    assert abs(a.values - b.values).max() < 1e-6 * abs(b.values).max()


def test_dense_and_sparse_find_the_same_planted_groups(prefect_api, tmp_path, capsys):
    common = ["--tasks", "y_*,!y_100"]
    dense = _run(capsys, "--store", str(tmp_path / "d"), "--pairs", "dense", *common)
    sparse = _run(capsys, "--store", str(tmp_path / "s"), "--pairs", "sparse", *common)
    assert dense["pairs"] == {"form": "dense"} and sparse["pairs"]["form"] == "neighbours"
    assert sparse["ground_truth_ari"] >= dense["ground_truth_ari"] - 0.1
