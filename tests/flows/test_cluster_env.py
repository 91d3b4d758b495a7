"""The run's Dask workers: forked from a forkserver, with the run's environment and Prefect settings
(flows/worker.py), without Dask's 64 KiB malloc trim threshold (flows/regroup.WORKER_MALLOC)."""

import json
import os

import pytest


def _trim():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def _seen():
    from prefect.settings import get_current_settings

    return {"api": get_current_settings().api.url, "stale": os.environ.get("TG_TEST_STALE"),
            "ppid": os.getppid()}


def test_workers_start_without_the_malloc_trim_threshold(tmp_path, monkeypatch):
    import dask
    from distributed import Client

    from taskgrouping.config import RunConfig
    from taskgrouping.flows.regroup import WORKER_MALLOC, start_cluster

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask.config.set({WORKER_MALLOC: 65536}):  # Dask's default
        cluster = start_cluster(RunConfig(workers=1, store=str(tmp_path / "s")))
        try:
            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=120)
                assert list(client.run(_trim).values()) == [None]
        finally:
            cluster.close()


def test_forked_workers_see_each_runs_environment_and_prefect_settings(tmp_path, monkeypatch):
    """The forkserver outlives a run and imported Prefect once: a later run's workers still get its API
    URL, and lose variables its environment no longer has."""
    from distributed import Client

    from taskgrouping.config import RunConfig
    from taskgrouping.flows.regroup import start_cluster

    seen = []
    for i, stale in enumerate(("1", None)):
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{4300 + i}/api")
        if stale is None:
            monkeypatch.delenv("TG_TEST_STALE", raising=False)
        else:
            monkeypatch.setenv("TG_TEST_STALE", stale)
        cluster = start_cluster(RunConfig(workers=1, store=str(tmp_path / "s")))
        try:
            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=120)
                seen += list(client.run(_seen).values())
        finally:
            cluster.close()
    assert [s["api"] for s in seen] == ["http://127.0.0.1:4300/api", "http://127.0.0.1:4301/api"]
    assert [s["stale"] for s in seen] == ["1", None]
    assert all(s["ppid"] != os.getpid() for s in seen)  # forked by the forkserver, not spawned by this process


def test_only_the_snapshot_and_dasks_own_variables_survive():
    from taskgrouping.flows.worker import ENV_KEYS, keep_only_snapshot

    env = {"A": "1", "OLD": "2", "PYTHONHASHSEED": "6640", "OMP_NUM_THREADS": "1",
           ENV_KEYS: json.dumps(["A", ENV_KEYS])}
    keep_only_snapshot(env)
    assert sorted(env) == sorted(["A", "PYTHONHASHSEED", "OMP_NUM_THREADS", ENV_KEYS])  # OMP: Dask's pre-spawn
    untouched = {"A": "1", "OLD": "2"}
    keep_only_snapshot(untouched)  # no snapshot named: not a run's worker
    assert untouched == {"A": "1", "OLD": "2"}


def test_a_step_waits_for_workers_and_names_the_scheduler_that_gets_none(prefect_api, monkeypatch):
    from distributed import LocalCluster
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from taskgrouping.flows import regroup

    monkeypatch.setattr(regroup, "WORKER_WAIT", 1.0)
    with LocalCluster(n_workers=0, dashboard_address=None) as cluster:
        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def no_workers() -> None:
            regroup._await_workers()

        no_workers()  # a cluster the run did not start (--dask-address): left to its own pace
        monkeypatch.setattr(regroup, "_STARTED_AHEAD", {cluster.scheduler_address})
        with pytest.raises(RuntimeError, match=f"no Dask worker joined the scheduler {cluster.scheduler_address} in 1 s"):
            no_workers()
