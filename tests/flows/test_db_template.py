"""A new store's Prefect database starts as a copy of a cached empty one (flows/server.py)."""

import json
import sqlite3
import urllib.request

from taskgrouping.flows import keeper
from taskgrouping.flows.server import local_server, prefect_api, template_path


def _count(db, table):
    with sqlite3.connect(db) as con:
        return con.execute(f"select count(*) from {table}").fetchone()[0]


def _add_flow(url, name):
    req = urllib.request.Request(url + "/flows/", data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201)


def test_new_stores_copy_an_empty_migrated_database(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKGROUPING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    tpl = template_path()
    assert tpl is not None and tpl.parent == tmp_path / "cache" and not tpl.exists()
    with local_server(tmp_path / "a") as url:  # the first server on the machine migrates, then leaves a copy
        assert tpl.is_file()
        _add_flow(url, "in-store-a")
    assert _count(tpl, "flow") == 0  # taken before any run: store a's flows are not in it
    assert _count(tmp_path / "a" / "prefect.db", "flow") == 1

    home = tmp_path / "b"
    home.mkdir()
    with local_server(home) as url:
        _add_flow(url, "in-store-b")
    with sqlite3.connect(home / "prefect.db") as con:
        assert [r[0] for r in con.execute("select name from flow")] == ["in-store-b"]
    assert _count(tpl, "flow") == 0

    # the shared server (the keeper) seeds from it too
    monkeypatch.setenv(keeper.IDLE_ENV, "600")
    with prefect_api(tmp_path / "c") as url:
        _add_flow(url, "in-store-c")
        assert json.loads((tmp_path / "c" / keeper.RECORD).read_text())["ready"] is True
    assert keeper.stop_shared(tmp_path / "c")
    assert _count(tmp_path / "c" / "prefect.db", "flow") == 1 and _count(tpl, "flow") == 0


def test_a_rejected_template_is_replaced_and_the_server_still_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKGROUPING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    tpl = template_path()
    tpl.parent.mkdir(parents=True)
    tpl.write_bytes(b"not a database" * 100)
    with local_server(tmp_path / "a") as url:
        _add_flow(url, "x")
    assert _count(tpl, "flow") == 0  # a working template took its place (the garbage one would not open)


def test_no_template_for_a_database_the_user_chose(monkeypatch):
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://u@h/db")
    assert template_path() is None


def test_a_seeded_database_skips_the_migration_check_unless_you_set_it(tmp_path, monkeypatch):
    from taskgrouping.flows.server import MIGRATE_VARS, server_env

    for var in MIGRATE_VARS:
        monkeypatch.delenv(var, raising=False)
    assert server_env(tmp_path, 4200, seeded=True)[MIGRATE_VARS[0]] == "false"
    assert not any(v in server_env(tmp_path, 4200) for v in MIGRATE_VARS)  # a new database: migrated
    monkeypatch.setenv(MIGRATE_VARS[1], "true")
    env = server_env(tmp_path, 4200, seeded=True)
    assert env[MIGRATE_VARS[1]] == "true" and MIGRATE_VARS[0] not in env
