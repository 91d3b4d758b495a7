"""The run's Dask workers start without Dask's 64 KiB malloc trim threshold (flows/regroup.WORKER_MALLOC)."""

import os


def _trim():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


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
                assert list(client.run(_trim).values()) == [None]
        finally:
            cluster.close()
