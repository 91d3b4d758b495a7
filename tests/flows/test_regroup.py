"""The regroup flow for real: Prefect server, a local Dask process cluster, the store."""

import json
import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from taskgrouping.config import RunConfig
from taskgrouping.flows.regroup import PROBE_BATCH_MAX, probe_batches, run_regroup
from taskgrouping.methods.swola import SwolaSettings
from taskgrouping.models.train import TrainSettings

DATA = "builtin:synthetic:tasks=6,groups=2,samples=400,noise=0.2"


def _cfg(store, tasks=None, **kw):
    return RunConfig(data=DATA, tasks=tasks, store=str(store), samples=128, groups=2, workers=2,
                     swola=SwolaSettings(hidden=16), train=TrainSettings(hidden=16, max_epochs=8, patience=3),
                     **kw)


def test_regroup_first_run_incremental_run_and_identical_rerun(prefect_api, tmp_path):
    store = tmp_path / "store"
    first = run_regroup(_cfg(store, tasks="y_00,y_01,y_02,y_03"), "run-1")
    assert first["counts"]["probes_computed"] == 4 and first["counts"]["probes_reused"] == 0
    assert first["counts"]["pairs_computed"] == 6
    assert set(first["metrics"]) == {"grouped", "all_together", "single_task", "random"}
    for path in first["artifacts"].values():
        assert Path(path).exists()
    assert pq.read_table(first["artifacts"]["affinity"]).num_rows == 16

    # two tasks added: one probe each, only their 4*2 + 1 new pairs
    second = run_regroup(_cfg(store), "run-2")
    c = second["counts"]
    assert (c["probes_computed"], c["probes_reused"]) == (2, 4)
    assert (c["pairs_computed"], c["pairs_reused"]) == (9, 6)
    assert c["groups_reused"] >= 4  # single-task models of the first four tasks at least
    assert second["ground_truth_ari"] == 1.0  # two planted groups of three
    assert first["version"] == 1 and first["previous_version"] is None
    assert second["version"] == 2 and second["previous_version"] == 1
    assert second["changes"]["tasks_added"] == ["y_04", "y_05"] and second["changes"]["changed"]

    # an identical rerun computes nothing and gives the same groups
    third = run_regroup(_cfg(store), "run-3")
    c = third["counts"]
    assert c["probes_computed"] == c["pairs_computed"] == c["groups_trained"] == 0
    assert third["groups"] == second["groups"] and third["metrics"] == second["metrics"]
    assert third["version"] == 2 and third["changes"]["changed"] is False  # nothing new to record
    assert len(list((store / "groupings" / third["lineage"]).glob("v*.json"))) == 2
    summary = json.loads((store / "runs" / "run-3" / "summary.json").read_text())
    assert summary["counts"] == c
    report = (store / "runs" / "run-3" / "report.md").read_text()
    assert "## Recommendation" in report and "| grouped" in report
    grid = first["settings"]["swola"]["head_cs"]
    assert first["head"]["c"] in grid and first["head"]["c"] == second["head"]["c"] == third["head"]["c"]
    assert [r["head"]["scored"] for r in (first, second, third)] == [4, 2, 0]  # only new tasks are scored
    assert f"Probe heads: one C = {third['head']['c']:g} for every task" in report
    assert "0 tasks scored in this run, the rest from the store" in report
    # the identical rerun copied the heatmap drawn for the same affinity and groups
    assert Path(third["artifacts"]["heatmap"]).read_bytes() == Path(second["artifacts"]["heatmap"]).read_bytes()

    # files removed behind Prefect's back are recomputed, not trusted from the cache record
    probe_file = sorted((store / "probes").glob("*.arrow"))[0]
    probe_file.unlink()
    model_dir = Path(third["models"]["0"])  # a model this run uses (not one only the 4-task run trained)
    shutil.rmtree(model_dir)
    fourth = run_regroup(_cfg(store), "run-4")
    c = fourth["counts"]
    assert (c["probes_computed"], c["pairs_computed"], c["groups_trained"]) == (1, 0, 1)
    assert probe_file.exists() and (model_dir / "model.safetensors").exists()
    assert fourth["groups"] == second["groups"] and fourth["metrics"] == second["metrics"]


def test_same_seed_same_groups_in_a_fresh_store(prefect_api, tmp_path):
    a = run_regroup(_cfg(tmp_path / "a"), "a")
    b = run_regroup(_cfg(tmp_path / "b"), "b")
    assert a["groups"] == b["groups"] and a["metrics"] == b["metrics"]
    assert b["counts"]["probes_computed"] == 6  # a fresh store shares nothing


def test_existing_dask_scheduler_and_artifacts(prefect_api, tmp_path):
    from distributed import LocalCluster
    from prefect.client.orchestration import get_client

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = run_regroup(_cfg(tmp_path / "s", dask_address=cluster.scheduler_address), "on-cluster")
    assert summary["counts"]["probes_computed"] == 6
    assert Path(summary["artifacts"]["heatmap"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from taskgrouping.tasks.report import artifact_suffix

    suffix = artifact_suffix(summary)  # per lineage: each dataset's history is its own in the UI
    assert re.fullmatch(r"[a-z0-9-]+", suffix) and suffix.endswith(summary["lineage"][:8])
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts() if a.key and a.key.endswith(suffix)}
        logs = [log.message for log in client.read_logs()]
    assert {f"taskgrouping-{k}-{suffix}" for k in ("groups", "settings", "report", "affinity", "changes",
                                                    "heatmap")} == set(arts)
    image = arts[f"taskgrouping-heatmap-{suffix}"]
    assert image.type == "image" and str(image.data).startswith("data:image/png;base64,iVBORw0KGgo")
    report = str(arts[f"taskgrouping-report-{suffix}"].data)
    assert "![affinity heatmap](data:image/png;base64," in report and "](heatmap.png)" not in report
    assert any(m.startswith("select: 2 groups") for m in logs)  # the progress lines reach the UI
    deadline = time.monotonic() + 30
    events: list = []
    while not events and time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            events = [e for e in client.request("POST", "/events/filter", json={"filter": {"event": {
                "prefix": ["taskgrouping.grouping."]}}}).json()["events"]
                if e["resource"]["prefect.resource.id"] == f"taskgrouping.lineage.{summary['lineage']}"
                and e["payload"]["run_id"] == summary["run_id"]]  # other tests on this server share the lineage
        time.sleep(0.5)
    assert [e["event"] for e in events] == ["taskgrouping.grouping.changed"]
    assert events[0]["payload"]["tasks_added"] == summary["tasks"] and events[0]["payload"]["version"] == 1
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

        progress = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))
    assert progress and max(float(a.data) for a in progress) == 100.0  # the probe stage's progress bar


def test_cli_on_a_csv_with_every_task_kind(prefect_api, tmp_path, capsys):
    import numpy as np
    import polars as pl

    from taskgrouping.cli import main

    rng = np.random.default_rng(0)
    n = 300
    x = rng.standard_normal((n, 5))
    y_bin = (x[:, 0] > 0).astype(float)
    y_bin[rng.random(n) < 0.2] = np.nan  # missing labels
    frame = pl.DataFrame({f"f{i}": x[:, i] for i in range(5)}).with_columns(
        pl.Series("y_bin", y_bin, nan_to_null=True),
        pl.Series("y_reg", x[:, 1] * 3 + rng.standard_normal(n)),
        pl.Series("y_cls", np.array(["a", "b", "c"])[np.digitize(x[:, 2], [-0.5, 0.5])]),
    )
    path = tmp_path / "mixed.csv"
    frame.write_csv(path)
    rc = main(["run", "--data", str(path), "--store", str(tmp_path / "s"), "--samples", "100", "--groups", "2",
               "--workers", "1", "--hidden", "8", "--max-epochs", "5", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    expected = {"run_id", "store", "method", "selector", "tasks", "groups", "served", "artifacts", "counts",
                "seconds", "metrics"}
    assert expected <= set(summary)
    assert summary["tasks"] == ["y_bin", "y_reg", "y_cls"]
    assert set(summary["served"]) == set(summary["tasks"]) and len(summary["groups"]) == 2
    assert set(summary["artifacts"]) == {"affinity", "groups", "metrics", "report", "heatmap", "neighbours"}
    # the default selector is the task graph: what it saw is in the summary, the report and a Parquet file
    assert summary["selector"] == "graph" and summary["graph"]["neighbours"] == 2
    assert set(summary["graph"]["nearest"]) == set(summary["tasks"]) and "modularity" in summary["graph"]
    nb = pq.read_table(summary["artifacts"]["neighbours"]).to_pylist()
    assert sorted((r["task"], r["rank"]) for r in nb) == sorted((t, r) for t in summary["tasks"] for r in (1, 2))
    report = Path(summary["artifacts"]["report"]).read_text()
    assert "## Task graph" in report and "Modularity of the groups" in report
    assert {"sample", "probe", "affinity", "select", "train", "total"} <= set(summary["seconds"])
    metrics = pq.read_table(summary["artifacts"]["metrics"]).to_pylist()
    kinds = {r["task"]: (r["kind"], r["metric_name"]) for r in metrics if r["setting"] == "grouped"}
    assert kinds == {"y_bin": ("binary", "auroc"), "y_reg": ("regression", "rmse"), "y_cls": ("multiclass", "accuracy")}
    assert all(np.isfinite(v) for v in summary["metrics"].values())


def test_edited_file_same_columns_new_rows_recomputes_probes(prefect_api, tmp_path):
    """The content fingerprint decides: a file edited in place is never served stale probes."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)

    def write(n):
        x = rng.standard_normal((n, 4))
        frame = {f"f{i}": x[:, i] for i in range(4)}
        frame |= {f"y_{k}": (x[:, k % 2] + 0.3 * rng.standard_normal(n) > 0).astype(int) for k in range(3)}
        pl.DataFrame(frame).write_csv(tmp_path / "d.csv")

    write(160)
    cfg = RunConfig(data=str(tmp_path / "d.csv"), store=str(tmp_path / "s"), samples=64, groups=2, workers=1,
                    swola=SwolaSettings(hidden=8), train=TrainSettings(hidden=8, max_epochs=4, patience=2))
    first = run_regroup(cfg, "edit-1")
    same = run_regroup(cfg, "edit-2")
    assert same["counts"]["probes_computed"] == 0
    write(200)  # same columns, new rows
    edited = run_regroup(cfg, "edit-3")
    assert edited["counts"]["probes_computed"] == 3 and edited["counts"]["pairs_computed"] == 3
    assert edited["counts"]["groups_reused"] == 0
    assert edited["lineage"] == first["lineage"]  # the same data source: one line of versions


def test_evaluate_none_then_grouped(prefect_api, tmp_path):
    """``--evaluate none`` trains nothing; ``grouped`` trains only the groups, reusing the probes."""
    store = tmp_path / "store"
    none = run_regroup(_cfg(store, evaluate="none"), "none")
    assert none["metrics"] == {"grouped": None, "all_together": None, "single_task": None, "random": None}
    assert none["counts"]["groups_trained"] == none["counts"]["groups_reused"] == 0
    assert not (store / "models").exists() or not any((store / "models").iterdir())
    assert none["ground_truth_ari"] == 1.0
    assert "No models were trained" in Path(none["artifacts"]["report"]).read_text()

    grouped = run_regroup(_cfg(store, evaluate="grouped"), "grouped")
    assert grouped["counts"]["probes_computed"] == grouped["counts"]["pairs_computed"] == 0
    assert grouped["groups"] == none["groups"]
    assert grouped["counts"]["groups_trained"] == len(grouped["groups"])
    assert grouped["metrics"]["grouped"] > 0
    assert [grouped["metrics"][s] for s in ("all_together", "single_task", "random")] == [None] * 3


def test_probe_batches_cover_every_task_once_in_bounded_steps():
    assert probe_batches([], 2) == []
    assert probe_batches(["a", "b", "c"], 2) == [["a"], ["b"], ["c"]]  # few tasks: one step each
    tasks = [f"t{i}" for i in range(1001)]
    for workers in (1, 2, 16):
        batches = probe_batches(tasks, workers)
        assert [t for b in batches for t in b] == tasks
        sizes = [len(b) for b in batches]
        assert max(sizes) <= PROBE_BATCH_MAX and len(set(sizes[:-1])) == 1  # even batches, a shorter last one
        assert len(batches) >= min(len(tasks), 2 * workers)  # every worker gets at least two steps


def test_a_failing_probe_batch_names_the_ml_task_and_keeps_the_others(tmp_path):
    """A batch that fails is probed task by task: the error names the task, earlier tasks are written."""
    from dataclasses import asdict

    import pytest
    import torch

    from taskgrouping import keys
    from taskgrouping.storage import Store
    from taskgrouping.tasks.steps import probe_step, sample_step

    if torch.cuda.is_available():
        pytest.skip("the injected failure is asking for CUDA where there is none")
    store = str(tmp_path / "store")
    data = sample_step.fn(store, DATA, None, None, 0, 64, cache_key="s", run_id="r")
    st = Store(store)
    meta = st.read_prepared_meta(data["dataset_key"])
    names = [t["name"] for t in meta["tasks"]][:3]
    settings = asdict(SwolaSettings(hidden=8))
    batch = [[t, keys.stable_hash("probe-test", t)] for t in names]
    with pytest.raises(RuntimeError, match="probe of ML task 'y_00' failed: RuntimeError: --device cuda was given"):
        probe_step.fn(store, data["dataset_key"], batch, settings, 0, "cuda", cache_key="b", run_id="r")
    assert not any(st.has_probe(k) for _, k in batch)  # nothing half-written
    out = probe_step.fn(store, data["dataset_key"], batch, settings, 0, "cpu", cache_key="b", run_id="r")
    assert out["computed"] == names and all(st.has_probe(k) for _, k in batch)
    again = probe_step.fn(store, data["dataset_key"], batch, settings, 0, "cpu", cache_key="b", run_id="r")
    assert again["computed"] == []  # a retried batch redoes only what is missing


def test_damaged_store_files_are_reported_and_recomputed_never_used(prefect_api, tmp_path, caplog):
    """A truncated probe, a corrupted affinity file and an edited model file: each is redone; same groups."""
    import logging

    from taskgrouping.storage.integrity import problem, verify_store

    store = tmp_path / "store"
    first = run_regroup(_cfg(store, evaluate="grouped"), "intact")
    probe = sorted((store / "probes").glob("*.arrow"))[0]
    probe.write_bytes(probe.read_bytes()[:-100])
    affinity = sorted((store / "affinity").glob("*.parquet"))[0]
    data = bytearray(affinity.read_bytes())
    data[len(data) // 2] ^= 0xFF
    affinity.write_bytes(bytes(data))
    info = sorted((store / "models").glob("*/info.json"))[0]
    info.write_text(info.read_text().replace('"seed"', '"seed_edited"'))
    # the run folder's affinity is the store's file (a hard link): an edit in place damages both names
    assert sorted(p.name for p, _ in verify_store(store)[1]) == sorted([probe.name, affinity.name, "affinity.parquet",
                                                                        "info.json"])
    with caplog.at_level(logging.WARNING, logger="taskgrouping"):
        second = run_regroup(_cfg(store, evaluate="grouped"), "repaired")
    assert f"damaged store file {probe}" in caplog.text
    c = second["counts"]
    assert (c["probes_computed"], c["groups_trained"]) == (1, 1)
    assert problem(probe) is problem(affinity) is problem(info) is None
    assert second["groups"] == first["groups"] and second["metrics"] == first["metrics"]
    # the store's files are new ones; the first run's folder still holds the bytes that were damaged
    assert [p for p, _ in verify_store(store)[1]] == [store / "runs" / "intact" / "affinity.parquet"]


def test_which_probes_run_in_the_flows_process():
    """Few tasks, or an MLP (in steps whose probes fit in INLINE_PROBE_FLOATS): here; image trunks and a given
    cluster: workers."""
    from taskgrouping.flows.regroup import INLINE_PROBE_FLOATS, inline_chunk, probes_here
    from taskgrouping.methods.swola import SwolaSettings

    mlp = SwolaSettings()
    per_task = 512 * mlp.layers * mlp.hidden
    limit = INLINE_PROBE_FLOATS // per_task  # 2,048 tasks at 512 samples x 128 errors
    assert inline_chunk(512, mlp) == limit and inline_chunk(512, SwolaSettings(trunks=3)) == limit // 3
    assert probes_here(limit, 512, mlp, None, None) and probes_here(10 * limit, 512, mlp, None, None)
    assert probes_here(limit, 512, mlp, [32], None)  # a flat input is the MLP's
    assert not probes_here(3, 512, mlp, [3, 8, 8], None)  # an image: the cnn trunk's per-sample gradients
    assert probes_here(2, 512, mlp, [3, 8, 8], None)  # one or two tasks are always probed here
    assert not probes_here(3, 512, SwolaSettings(trunk="cnn"), None, None)
    assert not probes_here(1, 512, mlp, None, "tcp://scheduler:8786")  # the user's cluster does the work
