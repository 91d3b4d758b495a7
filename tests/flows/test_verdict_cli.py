"""The honest verdict through the CLI: ``evaluate --groups FILE`` with repeats, intervals, costs, the
verdict in the summary and the report, and repeats cached like every training (R=3 after R=2 trains
only the third repeat's models)."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from taskgrouping.cli import main

FAST = ["--samples", "64", "--hidden", "8", "--max-epochs", "8", "--workers", "1", "--json"]
DATA = "builtin:synthetic:tasks=4,groups=2,samples=300,seed=1"


def _evaluate(capsys, *args):
    rc = main(["evaluate", *args, *FAST])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_evaluate_a_given_grouping_with_repeats(prefect_api, tmp_path, capsys):
    from taskgrouping.data.load import load_dataset

    truth = load_dataset(DATA).ground_truth
    planted = [[t for t in sorted(truth) if truth[t] == g] for g in sorted(set(truth.values()))]
    groups = tmp_path / "ours.csv"
    groups.write_text("task,group\n" + "".join(f"{t},team-{g}\n" for g, ts in enumerate(planted) for t in ts))
    store = tmp_path / "store"
    s = _evaluate(capsys, "--data", DATA, "--groups", str(groups), "--store", str(store), "--repeats", "2")
    assert s["selector"] == "given" and s["groups"] == planted and s["repeats"] == 2
    settings = {"grouped", "all_together", "single_task", "random"}
    assert set(s["metrics_ci"]) == settings and set(s["selection_ci"]) == settings
    for k, (lo, hi) in s["metrics_ci"].items():
        assert lo <= s["metrics"][k] <= hi
    assert set(s["comparisons"]) == {"all_together", "single_task", "random"}
    d = s["comparisons"]["all_together"]["test"]
    assert abs(d["difference"] - (s["metrics"]["grouped"] - s["metrics"]["all_together"])) < 1e-5  # float32 losses
    assert d["ci"][0] <= d["difference"] <= d["ci"][1]
    assert {k: v["models"] for k, v in s["costs"].items()} == {"grouped": 2, "all_together": 1, "single_task": 4,
                                                               "random": 2}
    assert s["costs"]["single_task"]["parameters"] > s["costs"]["all_together"]["parameters"] > 0
    v = s["verdict"]
    assert set(v) == {"setting", "models", "parameters", "pays", "reason"} and v["pays"] in ("yes", "no", "undecided")
    assert v["setting"] == s["recommended"] != "random" and v["models"] == s["costs"][v["setting"]]["models"]
    rows = pq.read_table(s["artifacts"]["metrics"]).to_pylist()
    assert {r["repeat"] for r in rows} == {0, 1} and all(r["sel_loss"] > 0 for r in rows)
    report = Path(s["artifacts"]["report"]).read_text()
    assert report.split("\n")[2].startswith("**What to do:**") and "| groups minus |" in report
    assert report.startswith(f"# taskgrouping evaluate {s['run_id']}\n")  # not "taskgrouping run"
    assert f"grouping pays: **{v['pays']}**" in report and " ± " in report
    trained = s["counts"]["groups_trained"]

    # one more repeat: only its models are trained, the first two repeats' are reused
    more = _evaluate(capsys, "--data", DATA, "--groups", str(groups), "--store", str(store), "--repeats", "3")
    assert more["counts"]["groups_reused"] == trained and 1 <= more["counts"]["groups_trained"] <= 9
    assert more["repeats"] == 3 and more["metrics"] != s["metrics"]
    # the affinity is measured once; the given groups need no selector
    assert more["counts"]["probes_computed"] == 0
