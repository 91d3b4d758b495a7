"""A grouping the user already has (``taskgrouping evaluate --groups FILE``): read, check, serve.

FILE is JSON, a list of groups, each a list of task names (``[["y_a", "y_b"], ["y_c"]]``),
or a CSV with columns ``task, group`` (one row per membership; a group is any label).
Every task of the run must be in a group; a task in two groups is refused unless
overlap is asked for, and is then served by the first group that lists it (it trains
with the others as a helper), as the network selector's helpers are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taskgrouping.errors import InputError
from taskgrouping.selectors.base import Grouping


def read_groups_file(path: str) -> list[list[str]]:
    """The groups of a JSON or CSV groups file, in file order (duplicates within a group dropped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"--groups {path}: no such file" if not p.exists() else f"--groups {path}: not a file")
    if p.suffix.lower() == ".json":
        try:
            raw = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"--groups {path}: not valid JSON ({exc})") from None
        if not isinstance(raw, list) or not raw or not all(isinstance(g, list) for g in raw):
            raise InputError(f"--groups {path}: expected a JSON list of groups, each a list of task names, "
                             'e.g. [["y_a", "y_b"], ["y_c"]]')
        for gi, g in enumerate(raw):
            bad = [t for t in g if not isinstance(t, str) or not t]
            if bad:
                raise InputError(f"--groups {path}: group {gi} has {bad[0]!r}, not a task name")
            if not g:
                raise InputError(f"--groups {path}: group {gi} is empty")
        return [list(dict.fromkeys(g)) for g in raw]
    if p.suffix.lower() == ".csv":
        from taskgrouping.data.load import read_table

        frame = read_table(str(p))
        cols = {c.strip().lower(): c for c in frame.columns}
        if "task" not in cols or "group" not in cols:
            raise InputError(f"--groups {path}: a CSV groups file needs the columns task and group, "
                             f"got {', '.join(frame.columns)}")
        order: dict[str, list[str]] = {}
        for task, group in zip(frame[cols["task"]].to_list(), frame[cols["group"]].to_list(), strict=True):
            if task is None or str(task).strip() == "" or group is None or str(group).strip() == "":
                raise InputError(f"--groups {path}: a row has an empty task or group ({task!r}, {group!r})")
            members = order.setdefault(str(group).strip(), [])
            if str(task).strip() not in members:
                members.append(str(task).strip())
        return list(order.values())
    raise InputError(f"--groups {path}: unsupported file type {p.suffix or '(none)'!r}; use .json or .csv")


def check_given(groups: list[list[str]] | tuple[tuple[str, ...], ...], tasks: list[str], overlap: bool,
                source: str = "--groups") -> None:
    """Refuse unknown tasks, tasks in no group, tasks in two groups (without overlap), repeated groups."""
    known = set(tasks)
    for gi, g in enumerate(groups):
        unknown = [t for t in g if t not in known]
        if unknown:
            raise InputError(f"{source}: group {gi} names {unknown[0]!r}, which is not a task of this run "
                             f"(tasks: {', '.join(tasks[:8])}{' ...' if len(tasks) > 8 else ''})")
    seen: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for t in g:
            if t in seen and not overlap:
                raise InputError(f"{source}: task {t!r} is in group {seen[t]} and group {gi}; a task belongs to "
                                 "one group unless --overlap is given")
            seen.setdefault(t, gi)
    missing = [t for t in tasks if t not in seen]
    if missing:
        raise InputError(f"{source}: task {missing[0]!r} is in no group"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                         + "; add it to a group, or leave it out with --tasks '!" + missing[0] + "'")
    keys = [frozenset(g) for g in groups]
    for gi, k in enumerate(keys):
        if k in keys[:gi]:
            raise InputError(f"{source}: group {gi} repeats group {keys.index(k)}")


def given_grouping(groups: list[list[str]] | tuple[tuple[str, ...], ...], tasks: list[str]) -> Grouping:
    """The grouping as the flow uses it: members in task order, each task served by the first group listing it."""
    ordered = [sorted(g, key=tasks.index) for g in groups]
    served: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for t in g:
            served.setdefault(t, gi)
    info: dict[str, Any] = {"given": True, "overlap": any(served[t] != gi for gi, g in enumerate(groups) for t in g)}
    return Grouping(groups=ordered, served={t: served[t] for t in tasks}, info=info, objective=None)
