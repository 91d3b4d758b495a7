"""+1 task through the CLI: the new task joins its nearest group without a full selection, the old
tasks keep their groups, the report says which happened; ``--regroup full`` selects from scratch."""

import json
from pathlib import Path

from taskgrouping.cli import main

DATA = "builtin:synthetic:tasks=11,groups=2,samples=400,noise=0.1,jitter=0.1,seed=3"
FAST = ["--samples", "128", "--workers", "1", "--evaluate", "none", "--json"]


def _run(capsys, *args):
    rc = main(["run", "--data", DATA, *args, *FAST])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def _partners(s):
    return {t: frozenset(u for u in s["tasks"] if s["served"][u] == s["served"][t]) for t in s["tasks"]}


def test_one_more_task_joins_its_nearest_group(prefect_api, tmp_path, capsys):
    from taskgrouping.data.load import load_dataset

    truth = load_dataset(DATA).ground_truth
    store = str(tmp_path / "store")
    first = _run(capsys, "--store", store, "--tasks", "y_*,!y_10")
    assert first["regroup"]["mode"] == "full" and first["regroup"]["reason"] == "first grouping of this lineage"
    assert first["ground_truth_ari"] == 1.0

    second = _run(capsys, "--store", store)
    assert second["regroup"]["mode"] == "incremental", second["regroup"]
    assert second["regroup"]["placed"] == {"y_10": second["served"]["y_10"]}
    before, after = _partners(first), _partners(second)
    assert all(after[t] - {"y_10"} == before[t] for t in first["tasks"])  # the old tasks kept their groups
    assert second["ground_truth_ari"] == 1.0  # and the new one went to its planted group
    assert {truth[t] for t in after["y_10"]} == {truth["y_10"]}
    assert second["counts"]["probes_computed"] == 1 and second["counts"]["pairs_computed"] == 10
    report = Path(second["artifacts"]["report"]).read_text()
    assert "Regrouping incremental: 1 new task joined its nearest group; no drift." in report
    assert second["changes"]["tasks_added"] == ["y_10"] and second["changes"]["moved"] == []

    full = _run(capsys, "--store", store, "--regroup", "full")
    assert full["regroup"] == {"mode": "full", "reason": "--regroup full"}


def test_two_concurrent_runs_adding_different_tasks_keep_every_pair(prefect_api, tmp_path, capsys):
    """Two CLI processes at once on one store, each adding its own task: the pair cache keeps both."""
    import subprocess
    import sys

    store = str(tmp_path / "store")
    shared = ["--head", "shared"]  # probes that stay whatever the task set (a joint head's C may move with it)
    _run(capsys, "--store", store, "--tasks", "y_0[0-3]", *shared)
    procs = [subprocess.Popen([sys.executable, "-m", "taskgrouping", "run", "--data", DATA, "--store", store,
                               "--tasks", f"y_0[0-3],{extra}", *shared, *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for extra in ("y_04", "y_05")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    for out, _ in outs:
        assert json.loads(out)["counts"]["pairs_computed"] == 4  # its new task against the four old ones
    both = _run(capsys, "--store", store, "--tasks", "y_0[0-5]", *shared)
    # every pair either run computed is in the cache: only the pair of the two new tasks is new
    assert both["counts"]["pairs_computed"] == 1 and both["counts"]["probes_computed"] == 0
