"""The four evaluation settings and their totals (methods.md section 7)."""

from __future__ import annotations

from typing import Any

import numpy as np

from taskgrouping.hashing import derive_seed

SETTINGS = ("grouped", "all_together", "single_task", "random")


def evaluation_groupings(tasks: list[str], grouped: list[list[str]], seed: int) -> dict[str, list[list[str]]]:
    """Groups to train for each setting.

    ``random`` uses random groups with the same sizes as ``grouped`` (seeded).
    Overlapping groupings are evaluated by their served groups only.
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


def recommend(totals: dict[str, dict[str, float]]) -> str:
    """The setting with the lowest total validation loss (never chosen on test loss)."""
    return min(totals, key=lambda s: totals[s]["val_loss"])
