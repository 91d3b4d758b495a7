"""Crash and resume, and lost workers, with injected faults (``TASKGROUPING_FAULT``), not sleeps.

Each run is the real CLI in its own process group on the session's Prefect server; a
``kill-run`` fault SIGKILLs that whole group (the run and its Dask workers) right after
the K-th item of a stage reached the store. The rerun must reuse what finished and end
with the groups and metrics of an uninterrupted run with the same seed.
"""

import json
import os
import subprocess
import sys

import pytest

from taskgrouping.faults import ENV, parse
from taskgrouping.storage.integrity import verify_store

DATA = "builtin:synthetic:tasks=6,groups=2,samples=400,noise=0.2"
ARGS = ["--samples", "128", "--groups", "2", "--hidden", "16", "--max-epochs", "8", "--workers", "2", "--json"]


IMAGE = ["--input-shape", "2,4,4", "--trunk", "cnn"]
"""Probes of an image trunk go to the Dask workers (an MLP's few probes run in the flow's process)."""


def _run(store, fault=None, extra=()):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if fault:
        env[ENV] = fault
    return subprocess.run([sys.executable, "-m", "taskgrouping", "run", "--data", DATA, "--store", str(store), *ARGS,
                           *extra], env=env, start_new_session=True, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def uninterrupted(prefect_api, tmp_path_factory):
    done = _run(tmp_path_factory.mktemp("reference") / "store")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("fault", ["sample:1:kill-run", "probe:3:kill-run", "affinity:1:kill-run",
                                   "select:1:kill-run", "train:4:kill-run"])
def test_a_killed_run_resumes_with_the_work_it_finished(uninterrupted, tmp_path, fault):
    store = tmp_path / "store"
    killed = _run(store, fault)
    assert killed.returncode == -9, killed.stderr  # SIGKILL, as kill -9
    resumed = _run(store)
    assert resumed.returncode == 0, resumed.stderr
    s = json.loads(resumed.stdout)
    c = s["counts"]
    stage = parse(fault)[0]
    if stage == "sample":  # only the prepared data finished
        assert (c["probes_computed"], c["pairs_computed"]) == (6, 15)
    elif stage == "probe":
        assert c["probes_reused"] >= 3 and c["probes_computed"] == 6 - c["probes_reused"]
    else:  # probes and pairs all finished before the kill
        assert (c["probes_computed"], c["pairs_computed"]) == (0, 0)
    if stage == "train":
        assert c["groups_reused"] >= 4 and c["groups_trained"] + c["groups_reused"] == \
            uninterrupted["counts"]["groups_trained"]
    assert s["groups"] == uninterrupted["groups"] and s["metrics"] == uninterrupted["metrics"]
    assert verify_store(store)[1] == []  # nothing half-written was left or read back


@pytest.fixture(scope="module")
def uninterrupted_image(prefect_api, tmp_path_factory):
    done = _run(tmp_path_factory.mktemp("reference-image") / "store", extra=IMAGE)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("fault", ["probe:2:kill-worker", "train:3:kill-worker"])
def test_a_worker_killed_while_probing_or_training_does_not_fail_the_run(uninterrupted, uninterrupted_image, tmp_path,
                                                                          fault):
    store = tmp_path / "store"
    extra = IMAGE if fault.startswith("probe") else ()
    if extra:
        uninterrupted = uninterrupted_image
    done = _run(store, fault, extra)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    # the lost worker's step ran again elsewhere; what it wrote before dying is intact and reused
    c = s["counts"]
    assert c["probes_computed"] >= 5 and c["probes_computed"] + c["probes_reused"] == 6
    total = uninterrupted["counts"]["groups_trained"]
    assert c["groups_trained"] >= total - 1 and c["groups_trained"] + c["groups_reused"] == total
    assert s["groups"] == uninterrupted["groups"] and s["metrics"] == uninterrupted["metrics"]


def test_a_bad_fault_setting_is_rejected_before_anything_runs(tmp_path):
    env_fault = "probe:zero:kill-run"
    done = _run(tmp_path / "store", env_fault)
    assert done.returncode == 2
    assert f"{ENV}='probe:zero:kill-run': expected STAGE:K:ACTION" in done.stderr
    assert not (tmp_path / "store").exists()


def test_two_concurrent_runs_on_one_store_both_finish_consistently(uninterrupted, tmp_path):
    """Overlapping task sets at the same time: both finish, the store verifies, a rerun computes no probe."""
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != ENV}
    common = [sys.executable, "-m", "taskgrouping", "run", "--data", DATA, "--store", str(store), *ARGS]
    procs = [subprocess.Popen(common + extra, env=env, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for extra in ([], ["--tasks", "y_00,y_01,y_02,y_03"])]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    full, part = (json.loads(o[0]) for o in outs)
    assert full["groups"] == uninterrupted["groups"] and full["metrics"] == uninterrupted["metrics"]
    assert part["tasks"] == ["y_00", "y_01", "y_02", "y_03"]
    assert verify_store(store)[1] == []
    again = _run(store)
    assert again.returncode == 0, again.stderr
    s = json.loads(again.stdout)
    assert s["counts"]["probes_computed"] == 0 and s["counts"]["groups_trained"] == 0
    assert s["groups"] == full["groups"] and s["metrics"] == full["metrics"]
