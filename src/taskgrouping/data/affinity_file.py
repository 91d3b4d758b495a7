"""Read a user's affinity matrix for ``taskgrouping select``: Parquet long form or a CSV square matrix.

Every rejection raises :class:`~taskgrouping.errors.InputError` with one line naming
the file, column, task or value at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from taskgrouping.data.load import read_table
from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix

LONG_COLUMNS = ("task_a", "task_b", "value")


def load_affinity_file(path: str, kind: Literal["gain", "distance"] | None = None) -> AffinityMatrix:
    """Load an affinity matrix.

    Args:
        path: ``.parquet`` long form (``task_a, task_b, value[, kind]``, row = receiver
            ``task_a``; a left-out diagonal entry is 0) or ``.csv`` square matrix (header row and first column are task
            names, row = receiver, column = source, diagonal = the task alone).
        kind: ``gain`` or ``distance``; default the file's ``kind`` column, else ``gain``.
    """
    frame = read_table(path)
    if Path(path).suffix.lower() != ".csv" and "rank" in frame.columns:
        return _neighbours(frame, path, kind)  # type: ignore[return-value]
    if Path(path).suffix.lower() == ".csv":
        names, values = _square(frame, path)
        file_kind = None
    else:
        names, values, file_kind = _long(frame, path)
    if kind is not None and file_kind is not None and kind != file_kind:
        raise InputError(f"{path}: --kind {kind} disagrees with the file's kind column ({file_kind})")
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(f"{path}: value for ({names[i]!r}, {names[j]!r}) is {values[i, j]}, not a finite number")
    final = kind or file_kind or "gain"
    if final == "distance" and (values < 0).any():
        i, j = np.argwhere(values < 0)[0]
        raise InputError(f"{path}: distance ({names[i]!r}, {names[j]!r}) is negative ({values[i, j]:g})")
    return AffinityMatrix(names, values, final)  # type: ignore[arg-type]


def _numeric(frame, column: str, path: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    import polars as pl

    series = frame.get_column(column)
    if not series.dtype.is_numeric():
        raise InputError(f"{path}: column {column!r} is {series.dtype}, not numeric")
    if series.null_count():
        row = int(series.is_null().arg_true()[0])
        raise InputError(f"{path}: column {column!r} has an empty value in row {row + 1}")
    return series.cast(pl.Float64).to_numpy()


def _square(frame, path: str) -> tuple[list[str], np.ndarray]:  # type: ignore[no-untyped-def]
    cols = frame.columns
    if len(cols) < 2:
        raise InputError(f"{path}: a square matrix needs a name column and at least one task column")
    names = [str(c) for c in cols[1:]]
    rows = [str(r) for r in frame.get_column(cols[0]).to_list()]
    if len(rows) != len(names):
        raise InputError(f"{path}: the matrix has {len(rows)} rows and {len(names)} task columns; it must be square")
    if len(set(rows)) != len(rows):
        dup = next(r for r in rows if rows.count(r) > 1)
        raise InputError(f"{path}: task {dup!r} names more than one row")
    if set(rows) != set(names):
        extra = sorted(set(rows) ^ set(names))[0]
        raise InputError(f"{path}: task {extra!r} is not both a row name and a column name")
    values = np.column_stack([_numeric(frame, c, path) for c in cols[1:]])
    order = [rows.index(n) for n in names]  # rows in column order
    return names, values[order]


def _long(frame, path: str) -> tuple[list[str], np.ndarray, str | None]:  # type: ignore[no-untyped-def]
    missing = [c for c in LONG_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column {missing[0]!r} (long form needs task_a, task_b, value[, kind])")
    a = [str(x) for x in frame.get_column("task_a").to_list()]
    b = [str(x) for x in frame.get_column("task_b").to_list()]
    v = _numeric(frame, "value", path)
    file_kind = None
    if "kind" in frame.columns:
        kinds = sorted({str(k) for k in frame.get_column("kind").to_list()})
        if len(kinds) != 1 or kinds[0] not in ("gain", "distance"):
            raise InputError(f"{path}: column 'kind' must hold one of 'gain' or 'distance' throughout, got {kinds}")
        file_kind = kinds[0]
    names = list(dict.fromkeys(a + b))
    pos = {t: i for i, t in enumerate(names)}
    values = np.full((len(names), len(names)), np.nan)
    seen = np.zeros_like(values, dtype=bool)
    for ta, tb, val in zip(a, b, v, strict=True):
        i, j = pos[ta], pos[tb]
        if seen[i, j]:
            raise InputError(f"{path}: pair ({ta!r}, {tb!r}) appears more than once")
        seen[i, j] = True
        values[i, j] = val
    diag = np.eye(len(names), dtype=bool)
    values[diag & ~seen] = 0.0  # a left-out diagonal is 0: no gain over itself, no distance to itself
    seen |= diag
    if not seen.all():
        i, j = np.argwhere(~seen)[0]
        raise InputError(f"{path}: no value for pair ({names[i]!r}, {names[j]!r})")
    return names, values, file_kind


def _neighbours(frame, path: str, kind: str | None):  # type: ignore[no-untyped-def]
    """A neighbour affinity (``task_a, task_b, value[, kind], rank``: each task's nearest partners, distances)."""
    from taskgrouping.methods.sparse import NeighbourAffinity

    if kind == "gain":
        raise InputError(f"{path}: a neighbour affinity (a 'rank' column) holds distances, not gains")
    missing = [c for c in LONG_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column {missing[0]!r} (a neighbour affinity needs task_a, task_b, value, "
                         "rank)")
    v = _numeric(frame, "value", path)
    bad = ~np.isfinite(v) | (v < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: value in row {row + 1} is {v[row]:g}, not a finite non-negative distance")
    _numeric(frame, "rank", path)
    try:
        return NeighbourAffinity.from_table(frame.select(["task_a", "task_b", "value", "rank"]).to_arrow())
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
