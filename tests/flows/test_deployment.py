"""End to end as a user deploys it: a real server, a process pool, `prefect deploy` from the committed
prefect.yaml, a triggered run executed by a worker with --run-once, and artifacts read back.

Every process is started in its own session and stopped by its PID, also when the test fails.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskgrouping.flows.server import local_server, stop_process_group

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def _run(cmd, env, timeout=120):
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        pytest.fail(f"{' '.join(map(str, cmd[2:]))} did not finish in {timeout} s")
    finally:
        if proc.poll() is None:
            stop_process_group(proc)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(map(str, cmd[2:]))} exited {proc.returncode}:\n{text[-3000:]}"
    return text


def _git_status():
    """``git status --porcelain`` of the repository ('' where git or a checkout is missing)."""
    try:
        return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    except OSError:
        return ""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, monkeypatch):
    """The server's database: Prefect's SQLite, or a real PostgreSQL (``PREFECT_API_DATABASE_CONNECTION_URL``)."""
    if request.param == "sqlite":
        yield None
        return
    from pg import postgres

    with postgres() as url:
        monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", url)
        yield url


@pytest.mark.flow
def test_deploy_from_prefect_yaml_and_run_with_a_worker(tmp_path, database):
    home, store = tmp_path / "home", tmp_path / "store"
    before = _git_status()
    with local_server(home) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_API_URL": url, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING"}
        _run([*PREFECT, "work-pool", "create", "taskgrouping", "--type", "process"], env)
        _run([*PREFECT, "--no-prompt", "deploy", "--all"], env)
        _run([*PREFECT, "automation", "create", "--from-file", "deployments/automations.yaml"], env)
        params = {"data": "builtin:synthetic:tasks=4,groups=2,samples=200,noise=0.2", "store": str(store),
                  "samples": 48, "workers": 1, "groups": 2, "max_epochs": 3}
        out = _run([*PREFECT, "deployment", "run", "regroup-scheduled/weekly-regroup",
                    *(a for k, v in params.items() for a in ("--param", f"{k}={v}"))], env)
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        _run([*PREFECT, "worker", "start", "--pool", "taskgrouping", "--run-once"], env, timeout=400)

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
            deployment = client.read_deployment(run.deployment_id)
            keys = {a.key for a in client.read_artifacts()}
            automations = {a.name: a for a in client.read_automations()}
        if database is not None:  # the server really ran on PostgreSQL: no SQLite database was made
            assert not (home / "prefect.db").exists()
    assert run.state.is_completed(), run.state
    assert {"taskgrouping-crash-zombie-runs", "taskgrouping-grouping-changed"} <= set(automations)
    assert automations["taskgrouping-crash-zombie-runs"].trigger.within.total_seconds() == 90
    assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 3 * * 1"
    (summary_file,) = store.glob("runs/*/summary.json")
    summary = json.loads(summary_file.read_text())
    from taskgrouping.tasks.report import artifact_suffix

    assert {f"taskgrouping-{k}-{artifact_suffix(summary)}" for k in (
        "groups", "affinity", "settings", "changes", "report", "heatmap")} <= keys
    assert summary["version"] == 1 and summary["counts"]["probes_computed"] == 4
    assert list(store.glob("groupings/*/v0001.json"))

    assert _git_status() == before  # deploying wrote nothing into the repository
