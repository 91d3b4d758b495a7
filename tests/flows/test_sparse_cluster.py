"""The sparse step on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes on
loopback, one killed (SIGKILL) after its second pair tile; the run finishes on the other and stores
exactly what a run in one process stores."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from taskgrouping.cli import main

DATA = "builtin:synthetic:tasks=40,groups=8,samples=400,seed=5"
FAST = ["--samples", "128", "--evaluate", "none", "--hidden", "16", "--pairs", "sparse", "--json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_workers(address: str, n: int, timeout: float = 90.0) -> None:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(n, timeout=timeout)


def test_pair_tiles_survive_a_killed_worker(prefect_api, tmp_path, capsys, monkeypatch):
    from taskgrouping.flows import regroup
    from taskgrouping.storage import Store

    # 40 tasks in 3 bands: up to 6 tiles for the candidates and 6 a refinement round (fewer than
    # the store's PAIR_SEGMENTS_MAX segments, so every tile's segment is still there to count)
    monkeypatch.setattr(regroup, "ROW_BAND", 14)
    monkeypatch.setattr(regroup, "SKETCH_BATCH", 16)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = os.environ | {"PREFECT_API_URL": prefect_api, "TASKGROUPING_FAULT": "pairs:2:kill-worker",
                        "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                 "--name", f"w{i}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_workers(address, 2)
        store = tmp_path / "store"
        rc = main(["run", "--data", DATA, "--store", str(store), "--dask-address", address, *FAST])
        out = capsys.readouterr()
        assert rc == 0, out.err[-3000:]
        summary = json.loads(out.out)
        deadline = time.time() + 30
        while time.time() < deadline and all(p.poll() is None for p in procs[1:]):
            time.sleep(0.2)
        codes = [p.poll() for p in procs[1:]]
        assert codes.count(-9) == 1 and codes.count(None) == 1, codes  # one worker was killed, the other finished
        cluster = summary["pairs"]["cluster"]
        assert cluster["tiles"] >= 7 and cluster["sketch_steps"] == 3 and cluster["sketched"] == 40
        assert summary["counts"]["pairs_computed"] == cluster["pairs"] == summary["pairs"]["pairs_exact"]
        # the killed worker had written its tile before it died; run again elsewhere, nothing else was redone
        segments = list((store / "pairs").rglob("*.parquet"))
        assert len(segments) == cluster["tiles"] + 1
        # the candidate lists: searched once on the flow's side, kept once (the affinity step found them kept)
        assert summary["pairs"]["candidate_rows"] == 0
        assert len(list((store / "sketches").rglob("lists/*.arrow"))) == 1
        # the same lists as one process computes on a fresh store
        rc = main(["run", "--data", DATA, "--store", str(tmp_path / "local"), *FAST])
        local = json.loads(capsys.readouterr().out)
        a = Store(store).read_affinity(Path(summary["artifacts"]["affinity"]))
        b = Store(tmp_path / "local").read_affinity(Path(local["artifacts"]["affinity"]))
        assert (a.neighbours == b.neighbours).all()
        np.testing.assert_allclose(a.values, b.values, rtol=1e-6)  # float32 sums: one thread or two
        assert summary["groups"] == local["groups"]
    finally:
        for p in procs[::-1]:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
