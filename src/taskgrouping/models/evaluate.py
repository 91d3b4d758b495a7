"""The four evaluation settings and their totals (methods.md section 7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taskgrouping.hashing import derive_seed

SETTINGS = ("grouped", "all_together", "single_task", "random")


@dataclass(frozen=True)
class GroupJob:
    """One model to train: its member tasks, the tasks it is evaluated for, optional loss weights.

    With overlap a group trains with helper tasks it does not serve; with STG-MTL's
    membership weighting every group trains on every task, weighted.
    """

    members: tuple[str, ...]
    serves: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    repeat: int = 0


def repeat_seed(seed: int, repeat: int) -> int:
    """The training seed of repeat ``repeat`` (the run's own seed for the first, so one repeat is as before)."""
    return seed if repeat == 0 else derive_seed(seed, "repeat", repeat)


def evaluation_jobs(tasks: list[str], grouped: list[list[str]], served: dict[str, int], seed: int,
                    weights: list[list[float]] | None = None, repeat: int = 0) -> dict[str, list[GroupJob]]:
    """The models to train for each setting in one repeat; every task is served by exactly one job per setting.

    ``grouped`` jobs serve the tasks ``served`` maps to them (helpers train but are not
    counted). ``weights`` (one row per group, aligned with ``tasks``) turns each
    grouped job into a model on every task with those loss weights. ``random``
    partitions the tasks at random with the sizes of the served sets, a new partition
    per ``repeat`` (the control stands for random groupings, not for one of them).
    """
    serves: list[list[str]] = [[] for _ in grouped]
    for t in tasks:  # one pass (a scan per group was 1 s at 10,000 tasks in 1,000 groups)
        if 0 <= served[t] < len(serves):
            serves[served[t]].append(t)
    if weights is None:
        grouped_jobs = [GroupJob(tuple(g), tuple(s), repeat=repeat) for g, s in zip(grouped, serves, strict=True)]
    else:
        grouped_jobs = [GroupJob(tuple(tasks), tuple(s), tuple(round(float(w), 6) for w in row), repeat)
                        for s, row in zip(serves, weights, strict=True)]
    groupings = evaluation_groupings(tasks, serves, seed if repeat == 0 else derive_seed(seed, "random", repeat))
    return {"grouped": [j for j in grouped_jobs if j.serves]} | {
        setting: [GroupJob(tuple(g), tuple(g), repeat=repeat) for g in groups]
        for setting, groups in groupings.items() if setting != "grouped"}


def evaluation_groupings(tasks: list[str], grouped: list[list[str]], seed: int) -> dict[str, list[list[str]]]:
    """Groups to train for each setting, for a partition ``grouped``.

    ``random`` uses random groups with the same sizes as ``grouped`` (seeded).
    """
    sizes = [len(g) for g in grouped]
    perm = np.random.default_rng(derive_seed(seed, "random-groups")).permutation(len(tasks))
    shuffled = [tasks[i] for i in perm]
    random_groups, start = [], 0
    for s in sizes:
        random_groups.append(shuffled[start : start + s])
        start += s
    return {
        "grouped": [list(g) for g in grouped],
        "all_together": [list(tasks)],
        "single_task": [[t] for t in tasks],
        "random": random_groups,
    }


def setting_totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Total early-stopping validation, selection and test loss per setting (summed over tasks, mean over repeats)."""
    out: dict[str, dict[str, float]] = {}
    repeats: dict[str, set[int]] = {}
    for r in rows:
        tot = out.setdefault(r["setting"], {"val_loss": 0.0, "sel_loss": 0.0, "test_loss": 0.0})
        repeats.setdefault(r["setting"], set()).add(int(r.get("repeat", 0)))
        for k in tot:
            tot[k] += r[k]
    return {s: {k: v / len(repeats[s]) for k, v in tot.items()} for s, tot in out.items()}


CONTROLS = ("random",)
"""Settings that are controls: reported beside the others, never recommended."""
