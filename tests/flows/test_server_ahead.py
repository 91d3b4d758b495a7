"""``taskgrouping run`` starts the store's shared Prefect server before its checks (flows/keeper.start_ahead):
a good run uses that server; bad input stops it and leaves nothing behind."""

import json
import os
import time
from pathlib import Path

import pytest

from taskgrouping.cli import main
from taskgrouping.flows import keeper


def _processes_naming(text: str, wait: float = 0.0) -> list[int]:
    deadline = time.monotonic() + wait
    while (pids := _naming(text)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def _naming(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmd and state != "Z":
                pids.append(int(proc.name))
    return pids


@pytest.fixture
def shared(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv(keeper.IDLE_ENV, "600")


@pytest.mark.parametrize("args, message", [
    (["--data", "{bad}"], "the table is empty (0 rows)"),
    (["--data", "builtin:synthetic:tasks=4", "--trunks", "0"], "--trunks must be at least 1, got 0"),
])
def test_bad_input_stops_the_server_started_ahead_and_leaves_no_store(tmp_path, capsys, shared, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n")
    store = tmp_path / "new" / "store"
    argv = ["run", "--store", str(store)] + [a.replace("{bad}", str(bad)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "new").exists()  # the folders the early start made are gone
    assert _processes_naming(str(store)) == []  # no keeper, no server


def test_bad_input_on_an_existing_folder_keeps_only_what_was_there(tmp_path, capsys, shared):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n")
    store = tmp_path / "store"
    store.mkdir()
    (store / "notes.txt").write_text("mine")
    assert main(["run", "--data", str(bad), "--store", str(store)]) == 2
    assert [p.name for p in store.iterdir()] == ["notes.txt"]
    assert _processes_naming(str(store)) == []


def test_a_run_uses_the_server_started_ahead_and_leaves_it_for_the_next(tmp_path, capsys, shared):
    store = tmp_path / "store"
    home = store / "prefect" / "home"
    data = "builtin:synthetic:tasks=4,groups=2,samples=200,noise=0.2"
    try:
        assert main(["run", "--data", data, "--store", str(store), "--evaluate", "none", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["groups"]
        record = keeper.read_record(home)
        assert record is not None and record["ready"]
        assert len([p for p in _processes_naming(str(home)) if p == record["keeper"]]) == 1
        started = time.time()
        assert main(["run", "--data", data, "--store", str(store), "--evaluate", "none", "--json"]) == 0
        assert keeper.read_record(home)["keeper"] == record["keeper"]  # the same server, no second start
        assert time.time() - started < 60
    finally:
        keeper.stop_shared(home)
    assert _processes_naming(str(home), wait=30) == []
    assert os.environ.get("PREFECT_API_URL") is None


def test_runs_on_the_stores_own_server_send_no_heartbeats_and_on_yours_they_do():
    from prefect.settings import get_current_settings, temporary_settings

    from taskgrouping.cli import run_settings

    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None  # Prefect sends them unless told not to
    with temporary_settings(updates=run_settings(own_server=True)):
        assert get_current_settings().flows.heartbeat_frequency is None
    with temporary_settings(updates=run_settings(own_server=False)):
        assert get_current_settings().flows.heartbeat_frequency == default
