"""Load a Parquet or CSV table (or a built-in), select features and tasks, and validate.

Every rejection raises :class:`~taskgrouping.errors.InputError` with one line naming
the file, column or value at fault. Nothing here writes anything.
"""

from __future__ import annotations

import csv
import fnmatch
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskgrouping.data.builtins import load_builtin
from taskgrouping.data.dataset import Dataset, TaskKind, TaskSpec
from taskgrouping.errors import InputError

if TYPE_CHECKING:  # polars is imported where a table is read: built-in data never needs it
    import polars as pl

MIN_LABELLED = 20
"""A task needs at least this many labelled samples."""

MAX_CLASSES = 50
"""An integer label column with at most this many distinct values is multi-class, else regression."""


def _numeric_types() -> tuple[type[pl.DataType], ...]:
    import polars as pl

    return (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64,
            pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64, pl.Boolean)


def load_dataset(source: str, tasks: str | None = None, features: str | None = None) -> Dataset:
    """Load and validate a dataset.

    Args:
        source: a ``.parquet``/``.pq`` or ``.csv`` path, or ``builtin:NAME[:k=v,...]``.
        tasks: comma list or globs of label columns; default all columns named ``y_*``
            (for a built-in: its own tasks).
        features: comma list or globs of feature columns; default every other numeric
            column (and numeric list columns, expanded).

    Returns:
        A validated :class:`Dataset`.
    """
    if source.startswith("builtin:"):
        ds = load_builtin(source)
        if tasks is not None:
            keep = _resolve(tasks, ds.task_names, "--tasks", source)
            idx = [ds.task_names.index(k) for k in keep]
            gt = {k: v for k, v in ds.ground_truth.items() if k in keep} if ds.ground_truth else None
            ds = Dataset(ds.features, ds.labels[:, idx], [ds.tasks[i] for i in idx],
                         ds.feature_names, ds.source, gt)
        if features is not None:
            keep_f = _resolve(features, ds.feature_names, "--features", source)
            idx = [ds.feature_names.index(k) for k in keep_f]
            ds = Dataset(ds.features[:, idx], ds.labels, ds.tasks, keep_f, ds.source, ds.ground_truth)
        return ds
    frame = read_table(source)
    return dataset_from_frame(frame, source, tasks, features)


def read_table(source: str) -> pl.DataFrame:
    """Read a Parquet or CSV file into a polars frame, rejecting unreadable, ragged or empty input."""
    import polars as pl

    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"{source}: no such file")
    if not path.is_file():
        raise InputError(f"{source}: not a file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pl.read_parquet(path)
        elif suffix == ".csv":
            _check_csv_shape(path)
            frame = pl.read_csv(path, infer_schema_length=10000, null_values=["", "NA", "null"])
        else:
            raise InputError(f"{source}: unsupported file type {suffix or '(none)'!r}; use .parquet or .csv")
    except InputError:
        raise
    except Exception as exc:  # polars/pyarrow raise many kinds; all mean "unreadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{source}: unreadable file ({first})") from None
    if frame.height == 0:
        raise InputError(f"{source}: the table is empty (0 rows)")
    return frame


def _check_csv_shape(path: Path) -> None:
    """Reject duplicate header names and rows whose field count differs from the header's."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: the table is empty (no header row)")
        dup = [name for name, c in Counter(header).items() if c > 1]
        if dup:
            raise InputError(f"{path}: column {dup[0]!r} appears {Counter(header)[dup[0]]} times in the header")
        width = len(header)
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != width:
                raise InputError(
                    f"{path}: ragged CSV: line {lineno} has {len(row)} fields, the header has {width}"
                )


def _is_glob(item: str) -> bool:
    return any(ch in item for ch in "*?[")


def _resolve(spec: str, available: list[str], option: str, source: str) -> list[str]:
    """Resolve a comma list of names and globs against the available columns, in order."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise InputError(f"{option} is empty")
    out: list[str] = []
    for item in items:
        if _is_glob(item):
            hits = [c for c in available if fnmatch.fnmatchcase(c, item)]
            if not hits:
                raise InputError(f"{source}: {option} pattern {item!r} matches no column")
            out.extend(h for h in hits if h not in out)
        else:
            if item not in available:
                raise InputError(f"{source}: {option} names column {item!r}, which is not in the table")
            if item in out:
                raise InputError(f"{option}: {item!r} is named twice")
            out.append(item)
    return out


def dataset_from_frame(frame: pl.DataFrame, source: str, tasks: str | None = None,
                       features: str | None = None) -> Dataset:
    """Select and validate tasks and features from a frame."""
    if frame.height == 0:
        raise InputError(f"{source}: the table is empty (0 rows)")
    columns = frame.columns
    if tasks is None:
        task_cols = [c for c in columns if c.startswith("y_")]
        if not task_cols:
            raise InputError(
                f"{source}: no task columns (name label columns y_* or pass --tasks); columns are "
                + ", ".join(columns[:10]) + (" ..." if len(columns) > 10 else "")
            )
    else:
        task_cols = _resolve(tasks, columns, "--tasks", source)

    others = [c for c in columns if c not in task_cols]
    if features is None:
        feat_cols = [c for c in others if _is_numeric(frame.schema[c]) or _is_numeric_list(frame.schema[c])]
    else:
        feat_cols = _resolve(features, others, "--features", source)
        for c in feat_cols:
            dt = frame.schema[c]
            if not (_is_numeric(dt) or _is_numeric_list(dt)):
                raise InputError(f"{source}: feature column {c!r} is not numeric (dtype {dt})")
    if not feat_cols:
        raise InputError(f"{source}: no numeric feature columns besides the tasks")

    x, names = _feature_matrix(frame, feat_cols, source)
    specs: list[TaskSpec] = []
    ys = np.empty((frame.height, len(task_cols)), dtype=np.float32)
    for j, c in enumerate(task_cols):
        spec, y = _encode_labels(frame[c], source)
        specs.append(spec)
        ys[:, j] = y
    return Dataset(features=x, labels=ys, tasks=specs, feature_names=names, source=source)


def _is_numeric(dt: pl.DataType) -> bool:
    return any(dt == t for t in _numeric_types())


def _is_numeric_list(dt: pl.DataType) -> bool:

    import polars as pl
    inner = getattr(dt, "inner", None)
    return isinstance(dt, pl.List | pl.Array) and inner is not None and _is_numeric(inner)


def _feature_matrix(frame: pl.DataFrame, cols: list[str], source: str) -> tuple[np.ndarray, list[str]]:

    import polars as pl
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for c in cols:
        s = frame[c]
        if _is_numeric_list(s.dtype):
            lengths = s.list.len() if isinstance(s.dtype, pl.List) else None
            if s.null_count():
                raise InputError(f"{source}: feature column {c!r} has {s.null_count()} missing rows")
            if lengths is not None and lengths.n_unique() != 1:
                raise InputError(f"{source}: feature list column {c!r} has rows of different lengths")
            arr = np.asarray(s.to_list(), dtype=np.float64)
            blocks.append(arr)
            names.extend(f"{c}[{k}]" for k in range(arr.shape[1]))
        else:
            arr = s.cast(pl.Float64).to_numpy()
            blocks.append(arr.reshape(-1, 1))
            names.append(c)
    x = np.concatenate(blocks, axis=1)
    bad = ~np.isfinite(x)
    if bad.any():
        col = int(np.flatnonzero(bad.any(axis=0))[0])
        row = int(np.flatnonzero(bad[:, col])[0])
        raise InputError(
            f"{source}: feature column {names[col]!r} has {int(bad[:, col].sum())} missing, NaN or inf "
            f"values (first at row {row})"
        )
    huge = np.abs(x) > FLOAT32_MAX
    if huge.any():
        col = int(np.flatnonzero(huge.any(axis=0))[0])
        raise InputError(f"{source}: feature column {names[col]!r} has {int(huge[:, col].sum())} values beyond "
                         f"±{FLOAT32_MAX:.1e} (the float32 range features are kept in); rescale it")
    return x.astype(np.float32), names


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _encode_labels(s: pl.Series, source: str) -> tuple[TaskSpec, np.ndarray]:
    """Infer the task kind and encode labels as float32 with NaN for missing."""
    import polars as pl

    name = s.name
    dt = s.dtype
    if dt == pl.Boolean:
        y = s.cast(pl.Float64).to_numpy().astype(np.float64)
        spec = TaskSpec(name, "binary", 2, ("False", "True"))
    elif dt in (pl.String, pl.Categorical) or isinstance(dt, pl.Enum):
        vals = s.cast(pl.String)
        classes = sorted(v for v in vals.drop_nulls().unique().to_list())
        index = {v: i for i, v in enumerate(classes)}
        y = np.array([np.nan if v is None else index[v] for v in vals.to_list()], dtype=np.float64)
        kind: TaskKind = "binary" if len(classes) == 2 else "multiclass"
        spec = TaskSpec(name, kind, len(classes), tuple(classes))
    elif _is_numeric(dt):
        y = s.cast(pl.Float64).to_numpy().astype(np.float64)
        if np.isinf(y).any():
            raise InputError(f"{source}: task column {name!r} has inf values")
        if (np.abs(y[~np.isnan(y)]) > FLOAT32_MAX).any():
            raise InputError(f"{source}: task column {name!r} has values beyond ±{FLOAT32_MAX:.1e} "
                             "(the float32 range labels are kept in); rescale it")
        present = y[~np.isnan(y)]
        uniq = np.unique(present)
        if uniq.size and np.isin(uniq, [0.0, 1.0]).all():
            spec = TaskSpec(name, "binary", 2, ("0", "1"))
        elif dt.is_integer() and uniq.size <= MAX_CLASSES:
            index = {v: i for i, v in enumerate(uniq.tolist())}
            y = np.array([np.nan if np.isnan(v) else index[v] for v in y], dtype=np.float64)
            spec = TaskSpec(name, "multiclass", int(uniq.size), tuple(str(int(u)) for u in uniq))
        else:
            spec = TaskSpec(name, "regression", 1, ())
    else:
        raise InputError(f"{source}: task column {name!r} has unsupported dtype {dt}")

    present = y[~np.isnan(y)]
    n_distinct = np.unique(present).size
    if n_distinct < 2:
        shown = "" if present.size == 0 else f" ({spec.classes[int(present[0])] if spec.classes else present[0]})"
        raise InputError(
            f"{source}: task {name!r} has {n_distinct} distinct label value{'' if n_distinct == 1 else 's'}"
            f"{shown}; at least 2 are needed"
        )
    if present.size < MIN_LABELLED:
        raise InputError(
            f"{source}: task {name!r} has {present.size} labelled samples; at least {MIN_LABELLED} are needed"
        )
    return spec, y.astype(np.float32)
