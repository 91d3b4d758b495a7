"""TaskGrouper's store is the CLI's store (issue 12): incremental fits, and the CLI reuses the API's probes."""

from sklearn.base import clone

from taskgrouping import TaskGrouper
from taskgrouping.data.builtins import synthetic

FAST = {"n_samples": 128, "hidden": 16}


def test_the_store_is_incremental_and_shared_with_the_cli(prefect_api, tmp_path, capsys):
    from taskgrouping.cli import main

    ds = synthetic(tasks=6, groups=2, samples=400, noise=0.2, seed=0)
    y = {t: ds.labels[:, j] for j, t in enumerate(ds.task_names)}
    store = str(tmp_path / "store")
    first = TaskGrouper(n_groups=2, store=store, **FAST).fit(ds.features, {k: y[k] for k in ds.task_names[:4]})
    assert first.counts_["probes_computed"] == 4
    second = clone(first).fit(ds.features, y)
    assert second.counts_["probes_computed"] == 2 and second.counts_["probes_reused"] == 4
    assert second.counts_["pairs_computed"] == 9
    # the CLI on the same data (builtin:synthetic: the same features, names and labels) computes nothing new
    import json

    rc = main(["run", "--data", "builtin:synthetic:tasks=6,groups=2,samples=400,noise=0.2", "--store", store,
               "--samples", "128", "--hidden", "16", "--groups", "2", "--evaluate", "none", "--workers", "1",
               "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["probes_computed"] == 0 and summary["counts"]["pairs_computed"] == 0
    assert sorted(map(sorted, summary["groups"])) == sorted(map(sorted, second.groups_))


def test_run_returns_the_cli_summary_as_a_typed_object(prefect_api, tmp_path):
    import json

    from taskgrouping import RunSummary, run

    summary = run(data="builtin:synthetic:tasks=4,groups=2,samples=300", store=str(tmp_path / "s"), samples=64,
                  hidden=8, groups=2, evaluate="none", workers=1)
    assert isinstance(summary, RunSummary)
    d = summary.to_dict()
    stored = json.loads((tmp_path / "s" / "runs" / summary.run_id / "summary.json").read_text())
    assert d == stored
    assert summary.groups == d["groups"] and summary.counts["probes_computed"] == 4
    assert summary.version == 1 and summary.task_kinds == d["task_kinds"]
    import pytest

    from taskgrouping import InputError

    with pytest.raises(InputError, match="run: unknown option 'colour'"):
        run(colour="red")
