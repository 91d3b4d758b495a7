"""The affinity matrix type shared by every method and selector."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

AffinityKind = Literal["distance", "gain"]


def positions(items: Sequence[str], wanted: Iterable[str]) -> list[int]:
    """The index in ``items`` of each of ``wanted`` (first occurrence; ValueError naming a missing one).

    One dict lookup each: ``items.index`` in a loop is quadratic, 50-70 ms a call at 1,000 tasks.
    """
    at: dict[str, int] = {}
    for i, item in enumerate(items):
        at.setdefault(item, i)
    try:
        return [at[w] for w in wanted]
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not in the list") from None


@dataclass(frozen=True)
class AffinityMatrix:
    """A T x T matrix over tasks.

    Attributes:
        tasks: task ids, in row/column order.
        values: (T, T) float64. Row = receiver, column = source for directed measures.
        kind: ``distance`` (smaller = closer; symmetric, zero diagonal for SWOLA) or
            ``gain`` (larger = better to train together; diagonal = the task alone).
    """

    tasks: list[str]
    values: np.ndarray
    kind: AffinityKind

    def __post_init__(self) -> None:
        """Check shape and kind."""
        t = len(self.tasks)
        if self.values.shape != (t, t):
            raise ValueError(f"affinity values have shape {self.values.shape}, expected ({t}, {t})")
        if self.kind not in ("distance", "gain"):
            raise ValueError(f"affinity kind must be 'distance' or 'gain', got {self.kind!r}")
        if len(set(self.tasks)) != t:
            raise ValueError("affinity task names repeat")

    def copy(self) -> AffinityMatrix:
        """An independent copy (float64 values, as read from a file)."""
        return AffinityMatrix(list(self.tasks), np.array(self.values, np.float64), self.kind)

    def to_table(self, dictionary: bool = False) -> pa.Table:
        """Long form: ``task_a, task_b, value, kind`` (one row per ordered pair).

        ``dictionary``: the names as dictionary arrays (indices into the task list), as
        Parquet stores them; the same strings, without building a million of them.
        """
        t = len(self.tasks)
        names = pa.array(self.tasks, pa.string())
        a, b = pa.array(np.repeat(np.arange(t, dtype=np.int32), t)), pa.array(np.tile(np.arange(t, dtype=np.int32), t))
        kind = pa.array(np.zeros(t * t, np.int32))
        return pa.table(
            {
                "task_a": pa.DictionaryArray.from_arrays(a, names) if dictionary else names.take(a),
                "task_b": pa.DictionaryArray.from_arrays(b, names) if dictionary else names.take(b),
                "value": pa.array(self.values.reshape(-1).astype(np.float64)),
                "kind": pa.DictionaryArray.from_arrays(kind, pa.array([self.kind])) if dictionary
                else pa.repeat(pa.scalar(self.kind, pa.string()), t * t) if t else pa.array([], pa.string()),
            }
        )

    @classmethod
    def from_table(cls, table: pa.Table, kind: AffinityKind | None = None) -> AffinityMatrix:
        """Inverse of :meth:`to_table`; tasks in order of first appearance. Missing pairs raise.

        Vectorised (Arrow dictionary encoding), so a 1,000-task matrix (a million rows)
        reads in a fraction of a second; a pair given twice keeps its last value.
        """
        if kind is None:
            kinds = set(pc.unique(table.column("kind")).to_pylist()) if "kind" in table.column_names \
                else {"distance"}
            if len(kinds) != 1:
                raise ValueError(f"affinity table mixes kinds {sorted(kinds)}")
            kind = kinds.pop()  # type: ignore[assignment]
        n = table.num_rows
        both = pa.chunked_array(table.column("task_a").chunks + table.column("task_b").chunks,
                                pa.string()).combine_chunks().dictionary_encode()
        tasks = both.dictionary.to_pylist()
        idx = both.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        v = np.asarray(table.column("value").to_numpy(), dtype=np.float64)
        values = np.full((len(tasks), len(tasks)), np.nan)
        values[idx[:n], idx[n:]] = v
        if np.isnan(values).any():
            i, j = np.argwhere(np.isnan(values))[0]
            raise ValueError(f"affinity table has no value for pair ({tasks[i]!r}, {tasks[j]!r})")
        return cls(tasks, values, kind)  # type: ignore[arg-type]

    def similarity(self) -> np.ndarray:
        """(T, T) symmetric similarity in [0, 1], diagonal 1, for clustering.

        ``distance``: ``S = exp(-D / median(D_offdiag))`` (methods.md section 1).
        ``gain``: the symmetrised gain rescaled to [0, 1] over off-diagonal entries.
        """
        t = len(self.tasks)
        off = ~np.eye(t, dtype=bool)
        if self.kind == "distance":
            d = 0.5 * (self.values + self.values.T)
            scale = float(np.median(d[off])) if t > 1 else 1.0
            s = np.exp(-d / scale) if scale > 0 else np.ones_like(d)
        else:
            g = 0.5 * (self.values + self.values.T)
            lo, hi = (float(g[off].min()), float(g[off].max())) if t > 1 else (0.0, 1.0)
            s = (g - lo) / (hi - lo) if hi > lo else np.ones_like(g)
        np.fill_diagonal(s, 1.0)
        return s

    def cohesion(self, members: list[str]) -> float:
        """Mean within-group distance over mean off-diagonal distance (smaller = denser).

        Defined for ``distance`` matrices and groups of at least two tasks; NaN otherwise.
        """
        t = len(self.tasks)
        if self.kind != "distance" or len(members) < 2 or t < 2:
            return float("nan")
        idx = positions(self.tasks, members)
        sub = self.values[np.ix_(idx, idx)]
        within = sub[~np.eye(len(idx), dtype=bool)].mean()
        overall = self._off_diagonal_mean
        return float(within / overall) if overall > 0 else float("nan")

    @functools.cached_property
    def _off_diagonal_mean(self) -> float:
        """Mean off-diagonal value (computed once: the report asks for every group's cohesion)."""
        t = len(self.tasks)
        return float(self.values[~np.eye(t, dtype=bool)].mean())
