"""A store's shared local Prefect server: the next run reuses it, a live run keeps it, idle it stops."""

import json
import os
import time
import urllib.request

import pytest

from taskgrouping.errors import InputError
from taskgrouping.flows import keeper
from taskgrouping.flows.server import prefect_api


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as fh:  # a zombie awaiting its parent counts as gone
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        time.sleep(0.2)
    return False


def test_the_next_run_reuses_the_server_and_an_idle_one_stops(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv(keeper.IDLE_ENV, "3")
    home = tmp_path / "home"
    with prefect_api(home) as first:
        record = json.loads((home / keeper.RECORD).read_text())
        assert os.environ["PREFECT_API_URL"] == first
        time.sleep(4.5)  # longer than idle: a run still using it keeps it up
        assert keeper.read_record(home) is not None
    with prefect_api(home) as second:  # the next run: the same server, no new start
        assert second == first
        assert json.loads((home / keeper.RECORD).read_text())["server"] == record["server"]
        with urllib.request.urlopen(second + "/health", timeout=5) as resp:
            assert resp.status == 200
    assert "PREFECT_API_URL" not in os.environ
    assert _gone(int(record["server"]), 30) and _gone(int(record["keeper"]), 30)  # idle 3 s, then stopped
    assert not (home / keeper.RECORD).exists() and not list((home / "users").glob("*.json"))

    monkeypatch.setenv(keeper.IDLE_ENV, "600")
    with prefect_api(home):
        pid = int(json.loads((home / keeper.RECORD).read_text())["server"])
    assert keeper.stop_shared(home) and _gone(pid, 30)  # stopped on request, long before its idle time
    assert not keeper.stop_shared(home)  # none left to stop


def test_server_idle_setting_is_checked(monkeypatch):
    monkeypatch.setenv(keeper.IDLE_ENV, "soon")
    with pytest.raises(InputError, match="TASKGROUPING_SERVER_IDLE='soon': need a number of seconds >= 0"):
        keeper.idle_seconds()
    monkeypatch.setenv(keeper.IDLE_ENV, "-1")
    with pytest.raises(InputError, match="TASKGROUPING_SERVER_IDLE='-1'"):
        keeper.idle_seconds()
    monkeypatch.delenv(keeper.IDLE_ENV)
    assert keeper.idle_seconds() == keeper.DEFAULT_IDLE
