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


def evaluation_jobs(tasks: list[str], grouped: list[list[str]], served: dict[str, int], seed: int,
                    weights: list[list[float]] | None = None) -> dict[str, list[GroupJob]]:
    """The models to train for each setting; every task is served by exactly one job per setting.

    ``grouped`` jobs serve the tasks ``served`` maps to them (helpers train but are not
    counted). ``weights`` (one row per group, aligned with ``tasks``) turns each
    grouped job into a model on every task with those loss weights. ``random``
    partitions the tasks at random with the sizes of the served sets.
    """
    serves = [[t for t in tasks if served[t] == gi] for gi in range(len(grouped))]
    if weights is None:
        grouped_jobs = [GroupJob(tuple(g), tuple(s)) for g, s in zip(grouped, serves, strict=True)]
    else:
        grouped_jobs = [GroupJob(tuple(tasks), tuple(s), tuple(round(float(w), 6) for w in row))
                        for s, row in zip(serves, weights, strict=True)]
    groupings = evaluation_groupings(tasks, serves, seed)
    return {"grouped": [j for j in grouped_jobs if j.serves]} | {
        setting: [GroupJob(tuple(g), tuple(g)) for g in groups]
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
    """Total validation and test loss per setting (summed over tasks)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        tot = out.setdefault(r["setting"], {"val_loss": 0.0, "test_loss": 0.0})
        tot["val_loss"] += r["val_loss"]
        tot["test_loss"] += r["test_loss"]
    return out


CONTROLS = ("random",)
"""Settings that are controls: reported beside the others, never recommended."""


def recommend(totals: dict[str, dict[str, float]]) -> str | None:
    """The setting with the lowest total validation loss (never chosen on test loss, never a control).

    ``None`` when only controls were evaluated.
    """
    candidates = [s for s in totals if s not in CONTROLS]
    return min(candidates, key=lambda s: totals[s]["val_loss"]) if candidates else None
