"""Grouping versions: what changed between two groupings of the same data (no file I/O here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskgrouping.hashing import stable_hash


def data_label(data: str) -> str:
    """How run names and artifact keys show a data source: a built-in as written, a file by its name."""
    return data if str(data).startswith("builtin:") else Path(str(data)).name


def lineage_key(data: str, method: str, selector: str, name: str | None = None) -> str:
    """The line of versions a run belongs to: the same data source (or lineage ``name``), method and selector.

    By default a history follows the data file's path; ``--lineage NAME`` names it, so
    the same table under a new path (or a new table replacing it) continues it.
    """
    if name is not None:
        return stable_hash("lineage-name", name, method, selector)
    return stable_hash("lineage", data, method, selector)


def _partners(groups: list[list[str]], served: dict[str, int], among: set[str]) -> dict[str, frozenset[str]]:
    """For each task in ``among``: the other tasks of ``among`` served by the same group."""
    by_group: dict[int, set[str]] = {}
    for t in among:
        by_group.setdefault(served[t], set()).add(t)
    return {t: frozenset(by_group[served[t]] - {t}) for t in among}


def grouping_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """What changed from grouping ``old`` to ``new`` (each a dict with ``tasks, groups, served``).

    A task *moved* when the set of tasks served beside it changed, counting only tasks
    present in both versions (so adding a task to a group moves nobody). Returns
    ``tasks_added``, ``tasks_removed``, ``moved`` (task, old partners, new partners)
    and ``changed`` (whether anything did). With no ``old``, every task is added.
    """
    if old is None:
        return {"tasks_added": list(new["tasks"]), "tasks_removed": [], "moved": [], "changed": True}
    old_tasks, new_tasks = set(old["tasks"]), set(new["tasks"])
    common = old_tasks & new_tasks
    before = _partners(old["groups"], old["served"], common)
    after = _partners(new["groups"], new["served"], common)
    moved = [{"task": t, "from": sorted(before[t]), "to": sorted(after[t])}
             for t in new["tasks"] if t in common and before[t] != after[t]]
    added = [t for t in new["tasks"] if t not in old_tasks]
    removed = [t for t in old["tasks"] if t not in new_tasks]
    same_groups = sorted(map(sorted, old["groups"])) == sorted(map(sorted, new["groups"]))
    return {"tasks_added": added, "tasks_removed": removed, "moved": moved,
            "changed": bool(added or removed or moved or not same_groups)}
