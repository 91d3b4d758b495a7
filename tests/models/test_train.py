import numpy as np
import torch

from taskgrouping.data.builtins import synthetic
from taskgrouping.data.dataset import prepare
from taskgrouping.models.evaluate import evaluation_groupings, recommend, setting_totals
from taskgrouping.models.train import MultiTaskModel, TrainSettings, train_group

FAST = TrainSettings(hidden=16, max_epochs=30, patience=5)


def test_training_learns_and_is_deterministic():
    ds = synthetic(tasks=4, groups=2, samples=600, noise=0.1)
    data = prepare(ds, 0, 64)
    state, results, info = train_group(data, [0, 1, 2], FAST, seed=3)
    assert [r["task"] for r in results] == ds.task_names[:3]
    assert all(r["metric_name"] == "auroc" and r["metric"] > 0.75 for r in results)  # well above chance
    assert info["epochs"] >= 1 and np.isfinite(info["best_val_loss"])
    state2, results2, _ = train_group(data, [0, 1, 2], FAST, seed=3)
    assert results == results2
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_missing_labels_are_masked_not_zero():
    ds = synthetic(tasks=2, groups=1, samples=400, noise=0.1, missing=0.3)
    data = prepare(ds, 0, 64)
    _, results, _ = train_group(data, [0, 1], FAST, seed=0)
    assert all(np.isfinite(r["test_loss"]) and r["metric"] > 0.7 for r in results)


def test_model_heads_match_tasks():
    ds = synthetic(tasks=3, groups=1, samples=100)
    m = MultiTaskModel(32, ds.tasks, 8, 2, 0)
    outs = m(torch.zeros(5, 32))
    assert [o.shape for o in outs] == [(5, 1)] * 3


def test_evaluation_groupings_and_recommendation():
    tasks = [f"t{i}" for i in range(7)]
    grouped = [["t0", "t1", "t2"], ["t3", "t4"], ["t5", "t6"]]
    g = evaluation_groupings(tasks, grouped, seed=1)
    assert [len(x) for x in g["random"]] == [3, 2, 2]
    assert sorted(sum(g["random"], [])) == tasks
    assert g["random"] == evaluation_groupings(tasks, grouped, seed=1)["random"]
    assert g["all_together"] == [tasks] and g["single_task"] == [[t] for t in tasks]
    rows = [{"setting": "grouped", "val_loss": 1.0, "test_loss": 2.0},
            {"setting": "single_task", "val_loss": 0.5, "test_loss": 3.0}]
    totals = setting_totals(rows)
    assert recommend(totals) == "single_task"  # chosen on validation, never on test
