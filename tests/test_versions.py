"""Grouping versions: what changed, and concurrent-safe version numbers."""

import threading

from taskgrouping.storage import Store
from taskgrouping.versions import grouping_changes


def g(groups):
    tasks = [t for grp in groups for t in grp]
    return {"tasks": tasks, "groups": groups, "served": {t: i for i, grp in enumerate(groups) for t in grp}}


def test_added_tasks_move_nobody_and_regrouping_is_reported():
    old = g([["a", "b"], ["c", "d"]])
    c = grouping_changes(old, g([["a", "b", "e"], ["c", "d"]]))
    assert c["tasks_added"] == ["e"] and c["moved"] == [] and c["changed"]
    c = grouping_changes(old, g([["d", "c"], ["b", "a"]]))  # same groups, other order
    assert not c["changed"] and c["moved"] == []
    c = grouping_changes(old, g([["a", "c"], ["b", "d"]]))
    assert [m["task"] for m in c["moved"]] == ["a", "c", "b", "d"]
    assert c["moved"][0] == {"task": "a", "from": ["b"], "to": ["c"]}
    c = grouping_changes(old, g([["a", "b"], ["c"]]))
    assert c["tasks_removed"] == ["d"] and c["moved"] == [] and c["changed"]
    first = grouping_changes(None, old)
    assert first["tasks_added"] == ["a", "b", "c", "d"] and first["changed"]


def test_helpers_do_not_count_as_partners():
    old = {"tasks": ["a", "b", "c"], "groups": [["a", "b"], ["b", "c"]], "served": {"a": 0, "b": 0, "c": 1}}
    new = {"tasks": ["a", "b", "c"], "groups": [["a", "b", "c"], ["c"]], "served": {"a": 0, "b": 0, "c": 1}}
    c = grouping_changes(old, new)
    assert c["moved"] == [] and c["changed"]  # membership changed, serving did not


def test_concurrent_writers_get_distinct_versions(tmp_path):
    st = Store(tmp_path)
    got = []
    threads = [threading.Thread(target=lambda i=i: got.append(st.add_version("lin", {"writer": i}))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))
    assert [v["version"] for v in st.versions("lin")] == list(range(1, 9))
    assert st.latest_version("lin")["version"] == 8
    leftovers = [p for p in (tmp_path / "groupings" / "lin").iterdir() if not p.name.startswith("v")]
    assert [p.name for p in leftovers] == [".lock"]  # no temporary file left; the lock file stays
