"""What Prefect shows must be true (issue 26): a served deployment runs its overrides, a killed run
leaves nothing Running, and SIGINT or SIGTERM off a terminal ends a run mid-training promptly.

Mid-training is made exact with the ``train:1:hang`` fault: the first model written leaves
``<store>/.faults/train.hanging`` and its worker sleeps, so the run is in its training
stage, with a task run Running on a worker, when the signal comes."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from taskgrouping.errors import InputError
from taskgrouping.flows.scheduled import build_config, effective

ARGS = ["--samples", "128", "--hidden", "8", "--max-epochs", "6", "--workers", "2", "--json"]


def _spawn(args, env, ignore_sigint=False):
    def pre():
        if ignore_sigint:  # what a shell leaves a background job without job control
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "taskgrouping", *args], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=pre)


def _wait_for(predicate, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}: {proc.stderr.read().decode()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout} s")


def _post(api, path, body):
    req = urllib.request.Request(api + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _runs_named(api, fragment):
    """Flow runs whose name holds ``fragment``, and all their task runs."""
    flows = _post(api, "/flow_runs/filter", {"flow_runs": {"name": {"like_": fragment}}})
    tasks = _post(api, "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [f["id"] for f in flows]}}}) \
        if flows else []
    return flows, tasks


def _group_left(pgid):
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and not line.split()[1].startswith("Z")]


def test_given_parameters_win_over_a_served_config_and_names_say_what_ran(tmp_path):
    from taskgrouping.config import RunConfig

    served = RunConfig(data=str(tmp_path / "customers.csv"), store=str(tmp_path / "s"), method="tag").to_dict()
    cfg = build_config({"config": served, "data": "builtin:synthetic:tasks=6,groups=2", "groups": "auto",
                        "max_epochs": 5, "task_kinds": {"y_*": "binary"}})
    assert (cfg.data, cfg.store, cfg.method, cfg.groups) == ("builtin:synthetic:tasks=6,groups=2",
                                                             str(tmp_path / "s"), "tag", None)
    assert cfg.train.max_epochs == 5 and cfg.task_kinds == (("y_*", "binary"),)
    assert build_config({"config": served}).data == served["data"]  # nothing given: the served config
    plain = build_config({"data": "x.csv"})  # no config: the flow's defaults, relative paths resolved
    assert plain.data == str(Path("x.csv").resolve()) and (plain.method, plain.selector) == ("swola", "graph")
    # the run's name is built from what it runs, not from the parameters' defaults
    assert effective({"config": served}) == {"data": served["data"], "method": "tag", "selector": "graph"}
    assert effective({"config": served, "data": "builtin:x", "method": None})["data"] == "builtin:x"
    with pytest.raises(InputError, match="parameter groups='many': need a whole number or 'auto'"):
        build_config({"groups": "many"})
    with pytest.raises(InputError, match="unknown --method 'nope'"):
        build_config({"config": served, "method": "nope"})


def test_a_served_deployment_triggered_with_other_data_runs_that_data(prefect_api, tmp_path):
    import numpy as np
    import polars as pl
    from prefect.deployments import run_deployment

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3))
    pl.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "y_a": (x[:, 0] > 0).astype(int),
                  "y_b": (x[:, 1] > 0).astype(int), "y_c": (x[:, 0] + x[:, 1] > 0).astype(int)}).write_csv(
        tmp_path / "customers.csv")
    store = tmp_path / "s"
    env = dict(os.environ, PREFECT_API_URL=prefect_api)
    proc = _spawn(["serve", "--data", str(tmp_path / "customers.csv"), "--store", str(store), "--name", "override",
                   "--cron", "0 3 1 1 *", *ARGS[:-1], "--evaluate", "none"], env)
    try:
        ready = b""
        deadline = time.monotonic() + 120
        while b"one line per run follows" not in ready and time.monotonic() < deadline and proc.poll() is None:
            ready += proc.stderr.readline()
        assert b"one line per run follows" in ready, ready.decode(errors="replace")
        other = "builtin:synthetic:tasks=4,groups=2,samples=300,seed=26"
        run = run_deployment("regroup-scheduled/override", parameters={"data": other}, timeout=300)
        assert run.state.is_completed(), run.state
        assert run.name == f"scheduled {other} swola/graph"
        summaries = [json.loads(p.read_text()) for p in store.glob("runs/*/summary.json")]
        assert [s["data"] for s in summaries] == [other]
        assert len(summaries[0]["tasks"]) == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGINT])  # SIGTERM takes the same way (measured: exit 143 in 6 s)
def test_a_signal_off_a_terminal_mid_training_ends_the_run_and_marks_it(prefect_api, tmp_path, sig):
    store = tmp_path / "s"
    data = f"builtin:synthetic:tasks=6,groups=2,samples=400,seed={2600 + sig}"
    env = dict(os.environ, PREFECT_API_URL=prefect_api, TASKGROUPING_FAULT="train:1:hang")
    proc = _spawn(["run", "--data", data, "--store", str(store), *ARGS], env, ignore_sigint=True)
    try:
        _wait_for((store / ".faults" / "train.hanging").exists, 180, "training started", proc)
        time.sleep(0.5)
        os.killpg(proc.pid, sig)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = err.decode(errors="replace")
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), text
    assert took < 30 and "did not finish" in text and "KeyboardInterrupt" not in text
    _wait_for(lambda: not _group_left(proc.pid), 10, "every process of the run gone")
    flows, tasks = _runs_named(prefect_api, data)
    assert flows and all(f["state_type"] == "CRASHED" for f in flows), [(f["name"], f["state_type"]) for f in flows]
    assert not [t["name"] for t in tasks if t["state_type"] in ("RUNNING", "PENDING")]
    assert any(t["state_type"] == "CRASHED" and t["name"].startswith("train") for t in tasks)
    assert not list((store / "prefect" / "owners").glob("*.json"))  # released


def test_kill_9_mid_training_leaves_nothing_running_on_the_stores_server(tmp_path):
    from taskgrouping.flows.keeper import stop_shared

    store = tmp_path / "s"
    home = store / "prefect" / "home"
    data = "builtin:synthetic:tasks=6,groups=2,samples=400,seed=2609"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"TASKGROUPING_FAULT": "train:1:hang",
                                                                         "TASKGROUPING_SERVER_IDLE": "120"}
    proc = _spawn(["run", "--data", data, "--store", str(store), *ARGS], env)
    try:
        _wait_for((store / ".faults" / "train.hanging").exists, 180, "training started", proc)
        time.sleep(0.5)
        api = f"http://127.0.0.1:{json.loads((home / 'shared-server.json').read_text())['port']}/api"
        flows, tasks = _runs_named(api, data)
        assert any(t["state_type"] == "RUNNING" for t in tasks)  # the hanging model, before the kill
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()

        def settled():
            flows, tasks = _runs_named(api, data)
            return flows and not [r for r in flows + tasks if r["state_type"] in ("RUNNING", "PENDING")]
        _wait_for(settled, 90, "no run left Running after kill -9")
        flows, tasks = _runs_named(api, data)
        assert all(f["state_type"] == "CRASHED" for f in flows)
        crashed = [t for t in tasks if t["state_type"] == "CRASHED"]
        assert crashed and "is gone" in crashed[0]["state"]["message"]
        print(f"marked within {time.monotonic() - t0:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop_shared(home)


def test_kill_9_with_a_private_server_is_marked_by_the_next_run_on_the_store(tmp_path):
    from taskgrouping.flows.server import local_server

    store = tmp_path / "s"
    data = "builtin:synthetic:tasks=6,groups=2,samples=400,seed=2610"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"TASKGROUPING_SERVER_IDLE": "0"}
    proc = _spawn(["run", "--data", data, "--store", str(store), *ARGS], env | {"TASKGROUPING_FAULT": "train:1:hang"})
    try:
        _wait_for((store / ".faults" / "train.hanging").exists, 180, "training started", proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the run, its workers; its private server dies with it
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list((store / "prefect" / "owners").glob("*.json"))  # nothing could mark it yet
    again = subprocess.run([sys.executable, "-m", "taskgrouping", "run", "--data", data, "--store", str(store),
                            *ARGS], env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr
    assert "runs Crashed that a dead process had left Running" in again.stderr, again.stderr
    with local_server(store / "prefect" / "home") as api:
        flows, tasks = _runs_named(api, data)
    states = sorted(f["state_type"] for f in flows)
    assert states == ["COMPLETED", "CRASHED"], states
    assert not [t["name"] for t in tasks if t["state_type"] in ("RUNNING", "PENDING")]
    assert not list((store / "prefect" / "owners").glob("*.json"))
