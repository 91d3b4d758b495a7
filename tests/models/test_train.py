import numpy as np
import torch

from taskgrouping.data.builtins import synthetic
from taskgrouping.data.dataset import prepare
from taskgrouping.models.evaluate import evaluation_groupings, evaluation_jobs, setting_totals
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


def test_evaluation_groupings_and_totals():
    tasks = [f"t{i}" for i in range(7)]
    grouped = [["t0", "t1", "t2"], ["t3", "t4"], ["t5", "t6"]]
    g = evaluation_groupings(tasks, grouped, seed=1)
    assert [len(x) for x in g["random"]] == [3, 2, 2]
    assert sorted(sum(g["random"], [])) == tasks
    assert g["random"] == evaluation_groupings(tasks, grouped, seed=1)["random"]
    assert g["all_together"] == [tasks] and g["single_task"] == [[t] for t in tasks]
    rows = [{"setting": "grouped", "val_loss": 1.0, "sel_loss": 1.5, "test_loss": 2.0, "repeat": 0},
            {"setting": "grouped", "val_loss": 3.0, "sel_loss": 2.5, "test_loss": 4.0, "repeat": 1},
            {"setting": "single_task", "val_loss": 0.5, "sel_loss": 0.7, "test_loss": 3.0, "repeat": 0}]
    totals = setting_totals(rows)  # summed over tasks, averaged over repeats
    assert totals["grouped"] == {"val_loss": 2.0, "sel_loss": 2.0, "test_loss": 3.0}
    assert totals["single_task"]["sel_loss"] == 0.7


def test_repeats_keep_the_grouping_and_draw_new_random_partitions():
    tasks = [f"t{i}" for i in range(8)]
    grouped = [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6", "t7"]]
    served = {t: gi for gi, g in enumerate(grouped) for t in g}
    first, second = (evaluation_jobs(tasks, grouped, served, 0, repeat=r) for r in (0, 1))
    assert [j.members for j in first["grouped"]] == [j.members for j in second["grouped"]]
    assert all(j.repeat == 1 for js in second.values() for j in js)
    assert [len(j.members) for j in second["random"]] == [3, 3, 2]
    assert [j.members for j in first["random"]] != [j.members for j in second["random"]]
    # repeat 0 is what a single run always trained
    assert [j.members for j in first["random"]] == [tuple(g) for g in evaluation_groupings(tasks, grouped, 0)["random"]]
