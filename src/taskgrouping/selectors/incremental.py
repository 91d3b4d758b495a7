"""Incremental regrouping: tasks added since the last version join their nearest group, unless drift says not to.

Rule (docs/methods.md section 6, "Incremental regrouping"): with a previous grouping
version of the lineage, the old tasks keep their groups (removed tasks are dropped) and
each new task joins the group it is closest to: the lowest mean distance to the group's
served members, or for a gain matrix the highest mean of the gains both ways. The full
selection runs instead when *drift* says the old groups no longer describe the tasks:

* ``share``: more than :data:`MAX_NEW_SHARE` of the tasks are new (the groups were
  chosen without most of them);
* ``fit``: a new task fits no group: for distances, its mean distance to its nearest
  group exceeds the loosest old member's mean distance to the rest of that group (it
  would be that group's worst member); for gains, its best mean gain is below 0
  (every group hurts it or is hurt by it);
* ``groups``: a group lost every task, or ``--groups N`` asks for another count;
* ``affinity``: the old tasks' affinity is not what the previous version was chosen on
  (other data, settings or method: TAG's and data maps' joint training changes every
  value when a task is added, so they always regroup in full).

With the ``graph`` selector a new task is placed by the same task graph the groups came
from (:func:`taskgrouping.selectors.graph.place_by_graph`): it joins the group its kept
edges weigh most towards, and ``fit`` drift is the graph leaving it alone (no partner
near on both tasks' scales), where a full selection will make it a group of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from taskgrouping.methods.base import AffinityMatrix, positions
from taskgrouping.selectors.base import Grouping, silhouette

MAX_NEW_SHARE = 0.10
"""Above this share of new tasks the groups are chosen again from scratch."""


def _closeness(affinity: AffinityMatrix, task: str, members: list[str], where: dict[str, int]) -> float:
    """How close ``task`` is to ``members``: the negated mean distance, or the mean gain both ways.

    ``where``: each task's row in ``affinity`` (a dict: ``list.index`` over 1,000 tasks per member was slow).
    """
    i = where[task]
    idx = [where[m] for m in members if m != task]
    if not idx:
        return float("-inf")
    v = affinity.values
    if affinity.kind == "distance":
        return -float(0.5 * (v[i, idx] + v[idx, i]).mean())
    return float(0.5 * (v[i, idx] + v[idx, i]).mean())


def _nearest_group(affinity: AffinityMatrix, task: str, serving: list[list[str]],
                   where: dict[str, int]) -> tuple[int | None, str]:
    """The group ``task`` is closest to, or ``None`` and the reason when it fits no group (``fit`` drift)."""
    scores = [_closeness(affinity, task, s, where) for s in serving]
    best = int(np.argmax(scores))
    members = serving[best]
    if affinity.kind == "distance":
        loosest = max((-_closeness(affinity, m, members, where) for m in members if len(members) > 1),
                      default=None)
        if loosest is not None and -scores[best] > loosest:
            return None, (f"drift (fit): new task {task!r} is farther from its nearest group "
                          f"({-scores[best]:.3g}) than that group's loosest member ({loosest:.3g})")
    elif scores[best] < 0.0:
        return None, f"drift (fit): new task {task!r} has a negative mean gain with every group"
    return best, "nearest group"


def _shared_pairs(now: Any, then: Any, old: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The distances of the old tasks' pairs stored in both neighbour affinities (now, then)."""
    keep = np.zeros(len(now.tasks), bool)
    keep[positions(now.tasks, old)] = True
    a, b, d = now.pairs()
    sel = keep[a] & keep[b]
    names = np.asarray(now.tasks, dtype=object)
    at = {t: i for i, t in enumerate(then.tasks)}
    ia = np.array([at[t] for t in names[a[sel]]], np.int64)
    ib = np.array([at[t] for t in names[b[sel]]], np.int64)
    prev, hit = then.pair_values(ia, ib)
    return d[sel][hit], prev[hit]


def _graph_placer(affinity: Any, serving: list[list[str]],
                  where: dict[str, int]) -> Callable[[str], tuple[int | None, str]]:
    """Places tasks by one task graph of ``affinity`` (built once for all new tasks)."""
    from taskgrouping.selectors.graph import build_graph, place_by_graph

    graph = build_graph(affinity)
    return lambda task: place_by_graph(affinity, task, serving, where, graph)


def incremental_grouping(affinity: Any, previous: dict[str, Any], n_groups: int | None,
                         previous_affinity: Any,
                         selector: str | None = None) -> tuple[Grouping | None, dict[str, Any]]:
    """The previous grouping extended by the new tasks, or ``None`` when drift asks for a full selection.

    Returns ``(grouping or None, info)``; ``info`` has ``mode`` (``incremental`` or
    ``full``), ``reason``, ``new`` (the tasks placed) and, per placed task, its group.
    ``selector``: the one the previous version was chosen by (``graph`` places by the task graph).
    """
    tasks = list(affinity.tasks)
    present = set(tasks)  # once: a set built per element made this quadratic (5 s of a +1 run at 10,000 tasks)
    old_served: dict[str, int] = {t: int(g) for t, g in previous["served"].items() if t in present}
    new = [t for t in tasks if t not in old_served]
    removed = [t for t in previous["served"] if t not in present]
    full = {"mode": "full", "new": new, "removed": removed}
    if n_groups is not None and n_groups != len(previous["groups"]):
        return None, full | {"reason": f"--groups {n_groups} differs from the previous {len(previous['groups'])} groups"}
    if len(new) > MAX_NEW_SHARE * len(tasks):
        return None, full | {"reason": f"drift (share): {len(new)} of {len(tasks)} tasks are new "
                                       f"(more than {MAX_NEW_SHARE:.0%})"}
    keep = set(old_served)
    if previous_affinity is None or previous_affinity.kind != affinity.kind:
        return None, full | {"reason": "the previous version's affinity is not in the store"}
    old = [t for t in tasks if t in keep]
    then_tasks = set(previous_affinity.tasks)
    if any(t not in then_tasks for t in old):
        return None, full | {"reason": "the previous version's affinity lacks some of its tasks"}
    sparse = getattr(affinity, "sparse", False)
    if sparse != getattr(previous_affinity, "sparse", False):
        return None, full | {"reason": "the previous version's affinity is " + ("dense" if sparse else "sparse")
                                       + " and this one is not (the task count crossed --pairs auto's threshold)"}
    if sparse:
        now, then = _shared_pairs(affinity, previous_affinity, old)
    else:
        now = affinity.values[np.ix_(*[positions(affinity.tasks, old)] * 2)]
        then = previous_affinity.values[np.ix_(*[positions(previous_affinity.tasks, old)] * 2)]
    if not np.allclose(now, then, rtol=1e-6, atol=1e-12):
        return None, full | {"reason": "drift (affinity): the old tasks' affinity changed since the previous "
                                       "version (other data, settings, or a joint-training method)"}
    groups = [[t for t in g if t in keep] for g in previous["groups"]]
    serving = [[t for t in g if old_served.get(t) == gi] for gi, g in enumerate(groups)]
    if any(not s for s in serving):
        return None, full | {"reason": "drift (groups): a group lost every task it served"}
    placed: dict[str, int] = {}
    where = {t: i for i, t in enumerate(affinity.tasks)}
    place = _graph_placer(affinity, serving, where) if (selector == "graph" or sparse) and new else \
        (lambda t: _nearest_group(affinity, t, serving, where))
    for t in new:
        best_or_none, why = place(t)
        if best_or_none is None:
            return None, full | {"reason": why}
        placed[t] = best_or_none
    for t, gi in placed.items():  # placed against the old groups only, so the order of new tasks does not matter
        groups[gi].append(t)
    order = {t: i for i, t in enumerate(tasks)}
    groups = [sorted(g, key=order.__getitem__) for g in groups]
    served = {t: (placed[t] if t in placed else old_served[t]) for t in tasks}
    labels = np.array([served[t] for t in tasks])
    info: dict[str, Any] = {"mode": "incremental", "new": new, "removed": removed, "placed": placed,
                            "reason": ("1 new task joined its nearest group; no drift" if len(new) == 1 else
                                       f"{len(new)} new tasks joined their nearest groups; no drift" if new
                                       else "no new task; the groups are kept")}
    if sparse:
        from taskgrouping.methods.sparse import silhouette_sparse

        sil = silhouette_sparse(affinity, labels)
    else:
        sil = silhouette(affinity, labels)
    sel = {"k": len(groups), "silhouette": sil, "regroup": "incremental"}
    return Grouping(groups=groups, served=served, info=sel, objective=None), info
