"""The grouping type and the selector protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from taskgrouping.methods.base import AffinityMatrix


@dataclass
class Grouping:
    """A list of groups of task ids; each task is served (evaluated) by exactly one group.

    Attributes:
        groups: groups in canonical order (by their first task in the affinity's order).
        served: task id -> index of the group that serves it.
        objective: the selector's objective value, where it has one.
        info: selector diagnostics (chosen k, silhouettes, eigengaps, ...).
    """

    groups: list[list[str]]
    served: dict[str, int]
    objective: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_labels(cls, tasks: list[str], labels: np.ndarray, **kw: Any) -> Grouping:
        """Build a partition from one cluster label per task, canonically ordered."""
        order: dict[int, int] = {}
        for lab in labels.tolist():
            order.setdefault(int(lab), len(order))
        groups: list[list[str]] = [[] for _ in order]
        for t, lab in zip(tasks, labels.tolist(), strict=True):
            groups[order[int(lab)]].append(t)
        served = {t: order[int(lab)] for t, lab in zip(tasks, labels.tolist(), strict=True)}
        return cls(groups=groups, served=served, **kw)

    def labels(self, tasks: list[str]) -> np.ndarray:
        """One label (the serving group) per task, in the given order."""
        return np.array([self.served[t] for t in tasks])


@dataclass(frozen=True)
class SelectSettings:
    """Constraints for the subset selectors (``network``, ``mip``).

    Attributes:
        overlap: allow a task in several groups (served by one); ``None`` means the
            selector's default (``network``: on, ``mip``: off).
        max_group_size: at most this many tasks per group.
        max_group_cost: per-group cost budget; a group costs ``group_base_cost`` plus
            the sum of its tasks' costs.
        task_costs: ``(task, cost)`` pairs; tasks not listed cost 1.
        group_base_cost: the fixed cost of any group (e.g. its shared trunk).
        exact_max_tasks: up to this many tasks every subset is a candidate (exact).
        objective: what ``mip`` maximises: ``network`` (each task's served score, as the
            ``network`` selector) or ``wang`` (Wang, Pan and Yu's programme: exactly B
            distinct groups, each worth its size-normalised within-group gain sum).
    """

    overlap: bool | None = None
    max_group_size: int | None = None
    max_group_cost: float | None = None
    task_costs: tuple[tuple[str, float], ...] = ()
    group_base_cost: float = 0.0
    exact_max_tasks: int = 12
    objective: str = "network"

    def __post_init__(self) -> None:
        """Validate the limits."""
        from taskgrouping.errors import InputError

        if self.objective not in ("network", "wang"):
            raise InputError(f"--objective must be network or wang, got {self.objective!r}")
        if self.max_group_size is not None and self.max_group_size < 1:
            raise InputError(f"--max-group-size must be at least 1, got {self.max_group_size}")
        if self.max_group_cost is not None and not self.max_group_cost > 0:
            raise InputError(f"--max-group-cost must be positive, got {self.max_group_cost}")
        for task, cost in self.task_costs:
            if not (np.isfinite(cost) and cost >= 0):
                raise InputError(f"task cost of {task!r} must be a finite non-negative number, got {cost}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectSettings:
        """Inverse of ``dataclasses.asdict`` (JSON turns the cost pairs into lists)."""
        return cls(**d | {"task_costs": tuple((str(t), float(c)) for t, c in d.get("task_costs", ()))})

    def is_default(self) -> bool:
        """True when no constraint is set."""
        return self == SelectSettings()

    def costs_for(self, tasks: list[str]) -> np.ndarray:
        """(T,) cost of each task (1 where not listed)."""
        given = dict(self.task_costs)
        return np.array([float(given.get(t, 1.0)) for t in tasks])


class Selector(Protocol):
    """Chooses groups from an affinity matrix.

    ``n_groups`` is the budget (``None``: choose automatically). Same inputs and
    seed give the same grouping.
    """

    def __call__(self, affinity: AffinityMatrix, n_groups: int | None, seed: int) -> Grouping:
        """Choose groups."""
        ...


def trivial_grouping(affinity: AffinityMatrix, k: int) -> Grouping | None:
    """The grouping when k leaves no choice (one group, or every task alone); else None."""
    t = len(affinity.tasks)
    if k == 1:
        return Grouping.from_labels(affinity.tasks, np.zeros(t, int), info={"k": 1})
    if k >= t:
        return Grouping.from_labels(affinity.tasks, np.arange(t), info={"k": t})
    return None


def silhouette(affinity: AffinityMatrix, labels: np.ndarray) -> float:
    """Silhouette of a labelling on the affinity's distances (``1 - S`` for gains)."""
    k = len(set(labels.tolist()))
    if k < 2 or k >= len(labels):
        return float("nan")
    if affinity.kind == "distance":
        d = 0.5 * (affinity.values + affinity.values.T)
    else:
        d = 1.0 - affinity.similarity()
    d = np.clip(d, 0.0, None)
    np.fill_diagonal(d, 0.0)
    return silhouette_precomputed(d, labels)


def silhouette_precomputed(d: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of ``labels`` on the distance matrix ``d`` (zero diagonal), as scikit-learn defines it.

    a(i): mean distance to the rest of i's cluster; b(i): the smallest mean distance to
    another cluster; s(i) = (b - a) / max(a, b), 0 for a task alone in its cluster (and
    where a = b = 0). Written out (one matrix product) so that a run that only selects
    does not import scikit-learn (0.65 s of an identical rerun).
    """
    _, codes = np.unique(labels, return_inverse=True)
    n, k = len(codes), int(codes.max()) + 1
    members = np.zeros((n, k))
    members[np.arange(n), codes] = 1.0
    sums = np.asarray(d, np.float64) @ members  # (n, k): total distance from i to each cluster
    return silhouette_from_sums(sums, members.sum(axis=0), codes)


def silhouette_from_sums(sums: np.ndarray, sizes: np.ndarray, codes: np.ndarray) -> float:
    """:func:`silhouette_precomputed` from ``sums`` (n, k), each item's summed distance to each cluster.

    ``sizes`` (k,) cluster sizes, ``codes`` (n,) each item's cluster. Clusters of size 0
    are ignored. A caller that merges clusters one pair at a time keeps ``sums`` up to
    date by adding two columns (the graph selector's average-linkage chains).
    """
    return float(np.mean(np.nan_to_num(silhouette_values(sums, sizes, codes))))


def silhouette_values(sums: np.ndarray, sizes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each item's silhouette (NaN where undefined) from its row of ``sums``: rows may be any block of items."""
    n = len(codes)
    own = sizes[codes]
    a = sums[np.arange(n), codes] / np.maximum(own - 1.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(sizes > 0, sums / np.where(sizes > 0, sizes, 1.0), np.inf)
    means[np.arange(n), codes] = np.inf
    b = means.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b - a) / np.maximum(a, b)
    s[own == 1] = 0.0
    return s


def adjusted_rand(truth: Sequence[object] | np.ndarray, found: Sequence[object] | np.ndarray) -> float:
    """Adjusted Rand index of two labelings of the same items (Hubert and Arabie, 1985), as scikit-learn defines it.

    ``(index - expected) / (max - expected)`` over the pair counts of the contingency
    table; 1.0 when both labelings put every item in one cluster, or every item alone
    (no pair to disagree on). Written out so that a run's report does not import
    scikit-learn (1.1 s of adding one task to a grouping).
    """
    if len(truth) != len(found):
        raise ValueError(f"labelings of different lengths: {len(truth)} and {len(found)}")
    _, a = np.unique(np.asarray([str(v) for v in truth]), return_inverse=True)
    _, b = np.unique(np.asarray([str(v) for v in found]), return_inverse=True)
    n = len(a)
    table = np.zeros((int(a.max(initial=-1)) + 1, int(b.max(initial=-1)) + 1), np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(counts: np.ndarray) -> float:
        c = counts.astype(np.float64)
        return float((c * (c - 1) / 2).sum())

    index, rows, cols, total = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0)), n * (n - 1) / 2
    if rows == cols == 0 or rows == cols == total:  # (n <= 1 included): the labelings cannot disagree
        return 1.0
    expected = rows * cols / total
    return (index - expected) / ((rows + cols) / 2 - expected)
