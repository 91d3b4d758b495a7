"""``taskgrouping history``: a store's lineages (grouping histories), their versions and what changed.

A lineage is kept under ``groupings/<key>/`` (the key is a hash of the data source, or of
the ``--lineage`` name, with the method and selector: :func:`~taskgrouping.versions.lineage_key`);
its readable name comes from the version records: the ``--lineage`` name when one was
given, else the data file's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taskgrouping.errors import InputError
from taskgrouping.versions import data_label


def _readable(record: dict[str, Any]) -> str:
    return str(record.get("lineage_name") or data_label(str(record.get("data", "?"))))


def _version_row(store: Path, v: dict[str, Any]) -> dict[str, Any]:
    c = v.get("changes") or {}
    row = {"version": v.get("version"), "created": v.get("created"), "run_id": v.get("run_id"),
           "tasks": len(v.get("tasks") or []), "groups": len(v.get("groups") or []),
           "tasks_added": list(c.get("tasks_added") or []), "tasks_removed": list(c.get("tasks_removed") or []),
           "moved": [m.get("task") for m in c.get("moved") or []], "recommended": None}
    summary = store / "runs" / str(v.get("run_id")) / "summary.json"
    if summary.is_file():
        try:
            row["recommended"] = json.loads(summary.read_text()).get("recommended")
        except (OSError, ValueError):
            pass  # a damaged summary: `taskgrouping verify` names it; the history still lists the version
    return row


def history(store: str | Path, lineage: str | None = None) -> list[dict[str, Any]]:
    """Every lineage of ``store`` (or those ``lineage`` names), newest activity first.

    Each entry: ``lineage`` (the key), ``name`` (readable), ``data``, ``method``,
    ``selector`` and ``versions`` (oldest first: ``version``, ``created``, ``run_id``,
    ``tasks`` and ``groups`` counts, ``tasks_added``, ``tasks_removed``, ``moved``, and the
    run's ``recommended`` setting). ``lineage`` matches a ``--lineage`` name, a data
    path or file name, or a key (or its start); one that matches nothing is an
    :class:`InputError` listing the names there are.
    """
    from taskgrouping.storage import Store

    st = Store(store)
    root = Path(st.root) / "groupings"
    out: list[dict[str, Any]] = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        versions = st.versions(folder.name)
        if not versions:
            continue
        last = versions[-1]
        out.append({"lineage": folder.name, "name": _readable(last), "data": last.get("data"),
                    "method": last.get("method"), "selector": last.get("selector"),
                    "versions": [_version_row(Path(st.root), v) for v in versions]})
    out.sort(key=lambda e: str(e["versions"][-1].get("created") or ""), reverse=True)
    if lineage is None:
        return out
    chosen = [e for e in out if lineage in (e["name"], e["data"], data_label(str(e["data"])))
              or e["lineage"].startswith(lineage)]
    if not chosen:
        names = ", ".join(sorted({e["name"] for e in out})) or "none (no run has made a grouping yet)"
        raise InputError(f"--lineage {lineage!r}: no such lineage in {st.root}; the store has: {names}")
    return chosen


def history_text(lineages: list[dict[str, Any]], store: str | Path) -> str:
    """The history as a console listing: one block per lineage, one line per version."""
    if not lineages:
        return f"no groupings in {store} yet (each run adds a version when its grouping changes)\n"
    lines: list[str] = []
    for e in lineages:
        vs = e["versions"]
        lines.append(f"{e['name']}  ({e['method']}/{e['selector']}, {len(vs)} version{'' if len(vs) == 1 else 's'}, "
                     f"lineage {e['lineage'][:12]})")
        if e["name"] != data_label(str(e["data"])):
            lines.append(f"  data {e['data']}")
        for v in vs:
            if v["version"] == vs[0]["version"] and not v["tasks_removed"] and not v["moved"]:
                what = "first grouping"
            else:
                parts = []
                if v["tasks_added"]:
                    parts.append(f"added {_names(v['tasks_added'])}")
                if v["tasks_removed"]:
                    parts.append(f"removed {_names(v['tasks_removed'])}")
                if v["moved"]:
                    parts.append(f"moved {_names(v['moved'])}")
                what = "; ".join(parts) or "groups re-formed"
            rec = f"; recommended {v['recommended']}" if v.get("recommended") else ""
            lines.append(f"  v{v['version']}  {v['created']}  run {v['run_id']}  {v['tasks']} tasks in "
                         f"{v['groups']} groups: {what}{rec}")
        lines.append("")
    return "\n".join(lines)


def _names(items: list[str], shown: int = 4) -> str:
    return ", ".join(items[:shown]) + (f", ... {len(items) - shown} more" if len(items) > shown else "")
