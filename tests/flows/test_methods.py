"""Every peer method and subset selector through the real regroup flow (tiny data, few epochs)."""

from pathlib import Path

from taskgrouping.config import RunConfig
from taskgrouping.flows.regroup import run_regroup
from taskgrouping.methods.datamaps import DatamapSettings
from taskgrouping.methods.hoa import HoaSettings
from taskgrouping.methods.swola import SwolaSettings
from taskgrouping.models.train import TrainSettings
from taskgrouping.selectors import SelectSettings
from taskgrouping.storage import Store

DATA = "builtin:synthetic:tasks=6,groups=2,samples=300,noise=0.2"


def _cfg(store, tasks="y_00,y_01,y_02,y_03", **kw):
    base = {"data": DATA, "tasks": tasks, "store": str(store), "samples": 96, "groups": 2, "workers": 2,
            "swola": SwolaSettings(hidden=16), "train": TrainSettings(hidden=16, max_epochs=6, patience=3)}
    return RunConfig(**(base | kw))


def _check_summary(s, tasks):
    assert s["tasks"] == tasks
    assert {t for g in s["groups"] for t in g} == set(tasks)
    for t, gi in s["served"].items():
        assert t in s["groups"][gi]
    assert set(s["metrics"]) == {"grouped", "all_together", "single_task", "random"}
    assert all(v > 0 for v in s["metrics"].values())
    # time is recorded when work was done (reused SWOLA probes cost only a file check)
    assert s["seconds"]["probe"] > 0 or s["counts"]["probes_computed"] == 0


def test_joint_methods_recompute_when_a_task_is_added(prefect_api, tmp_path):
    store = tmp_path / "store"
    for method in ("principled", "tag", "datamaps"):
        first = run_regroup(_cfg(store, method=method), f"{method}-1")
        _check_summary(first, ["y_00", "y_01", "y_02", "y_03"])
        assert first["counts"]["probes_computed"] == 4 and first["counts"]["pairs_computed"] == 6
        # the reruns check what the affinity reuses or recomputes: no baselines to train (--evaluate none)
        again = run_regroup(_cfg(store, method=method, evaluate="none"), f"{method}-2")
        assert again["counts"]["probes_computed"] == again["counts"]["pairs_computed"] == 0
        assert again["groups"] == first["groups"]
        # one more task: the joint run is keyed on the whole task set, so all of it is recomputed
        more = run_regroup(_cfg(store, method=method, tasks="y_00,y_01,y_02,y_03,y_04", evaluate="none"),
                           f"{method}-3")
        assert more["counts"]["probes_computed"] == 5 and more["counts"]["pairs_computed"] == 10
    assert first["method_info"]["epochs"] == 20  # data maps: a fixed-length run, every snapshot exists


def test_datamaps_membership_weighted_training(prefect_api, tmp_path):
    store = tmp_path / "store"
    s = run_regroup(_cfg(store, method="datamaps", datamaps=DatamapSettings(weighted=True, epochs=6,
                                                                             snapshots=2)), "dm-w")
    _check_summary(s, ["y_00", "y_01", "y_02", "y_03"])
    import pyarrow.parquet as pq

    u = pq.read_table(store / "runs" / "dm-w" / "memberships.parquet").to_pylist()
    per_task: dict[str, float] = {}
    for row in u:
        per_task[row["task"]] = per_task.get(row["task"], 0.0) + row["membership"]
    assert all(abs(v - 1.0) < 1e-9 for v in per_task.values())
    # each grouped model trains on every task; the served task is the group's own
    models = [p for p in (store / "models").iterdir() if (p / "info.json").exists()]
    import json

    weighted = [json.loads((p / "info.json").read_text()) for p in models]
    weighted = [i for i in weighted if i.get("weights") is not None]
    assert len(weighted) == len(s["groups"]) and all(len(i["members"]) == 4 for i in weighted)


def test_hoa_pairs_resume_and_extend_and_the_exhaustive_oracle(prefect_api, tmp_path):
    store = tmp_path / "store"
    cfg = _cfg(store, method="hoa", selector="network", tasks="y_00,y_01,y_03")
    first = run_regroup(cfg, "hoa-1")
    _check_summary(first, ["y_00", "y_01", "y_03"])
    assert (first["counts"]["probes_computed"], first["counts"]["pairs_computed"]) == (3, 3)
    assert first["selection"]["exact"] is True
    # HOA's single and pair models are the measured-transfer reference: the report states the fidelity
    fid = first["fidelity"]
    assert fid["pairs"] == 6 and -1 <= fid["spearman"] <= 1 and 0 <= fid["topk"] <= 1 and fid["k"] == 2
    assert "**Fidelity**: this `hoa` affinity's Spearman correlation" in Path(first["artifacts"]["report"]).read_text()
    # adding a task trains one single model and three new pairs; nothing old is retrained
    second = run_regroup(_cfg(store, method="hoa", selector="network"), "hoa-2")
    c = second["counts"]
    assert (c["probes_computed"], c["probes_reused"], c["pairs_computed"], c["pairs_reused"]) == (1, 3, 3, 3)
    # the oracle: every subset of 4 tasks (15 models); singles, pairs and any evaluation group are reused
    oracle = run_regroup(_cfg(store, method="hoa", selector="network", hoa=HoaSettings(exhaustive=True)),
                         "hoa-3")
    c = oracle["counts"]
    assert c["probes_computed"] == 0 and c["pairs_computed"] + c["pairs_reused"] == 11
    assert 1 <= c["pairs_computed"] <= 4  # at most the 4 triples (the full set trained as all_together)
    assert oracle["selection"]["oracle"] == "exhaustive"
    _check_summary(oracle, ["y_00", "y_01", "y_02", "y_03"])
    # a SWOLA run on the same store and tasks finds HOA's models and states its own fidelity (nothing trained for it)
    sw = run_regroup(_cfg(store), "swola-after-hoa")
    from taskgrouping.methods.transfer import fidelity, measured_transfer

    tr = measured_transfer(Store(store), sw["dataset_key"], _cfg(store).train, 0, tasks=sw["tasks"],
                           train_missing=False)
    expected = fidelity(Store(store).read_affinity(Path(sw["artifacts"]["affinity"])), tr)
    assert sw["fidelity"]["spearman"] == expected["spearman"] and sw["fidelity"]["pairs"] == 12
    assert "**Fidelity**: this `swola` affinity's" in Path(sw["artifacts"]["report"]).read_text()
    fresh = run_regroup(_cfg(tmp_path / "other"), "no-pairs")  # a store without pair models: nothing stated
    assert fresh["fidelity"] is None


def test_subset_selectors_on_swola(prefect_api, tmp_path):
    store = tmp_path / "store"
    net = run_regroup(_cfg(store, selector="network"), "net")
    _check_summary(net, ["y_00", "y_01", "y_02", "y_03"])
    assert len(net["groups"]) <= 2
    mip = run_regroup(_cfg(store, selector="mip", select=SelectSettings(max_group_size=2)), "mip")
    _check_summary(mip, ["y_00", "y_01", "y_02", "y_03"])
    assert sorted(len(g) for g in mip["groups"]) == [2, 2]
    assert mip["counts"]["probes_computed"] == 0  # probes and pairs are shared with the network run
