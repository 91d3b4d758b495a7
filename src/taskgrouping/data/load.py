"""Load a Parquet or CSV table (or a built-in), select features and tasks, and validate.

Every rejection raises :class:`~taskgrouping.errors.InputError` with one line naming
the file, column or value at fault. Nothing here writes anything.
"""

from __future__ import annotations

import csv
import fnmatch
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskgrouping.data.builtins import load_builtin
from taskgrouping.data.dataset import Dataset, TaskKind, TaskSpec
from taskgrouping.data.images import (
    ImageCache,
    ImageSpec,
    check_images,
    content_key,
    decode_images,
    image_paths,
)
from taskgrouping.errors import InputError
from taskgrouping.methods.base import positions

if TYPE_CHECKING:  # polars is imported where a table is read: built-in data never needs it
    import polars as pl

MIN_LABELLED = 20
"""A task needs at least this many labelled samples."""

MAX_INFERRED_CLASSES = 10
"""An integer label column with at most this many distinct values is inferred multi-class, else regression
(``--task-kind NAME=multiclass`` overrides)."""

MIN_PER_CLASS = 5
"""A multi-class task needs at least this many labelled samples per class on average."""

TASK_PATTERN = "y_*"
"""Columns matching this are labels: the default tasks, and never features unless named exactly."""

TASK_KINDS = ("binary", "multiclass", "regression")


def _numeric_types() -> tuple[type[pl.DataType], ...]:
    import polars as pl

    return (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64,
            pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64, pl.Boolean)


_HANDOFF: dict[tuple[object, ...], Dataset] = {}
"""A table loaded to check a run, kept for that run's sample step to take (:func:`load_dataset`)."""


def _handoff_key(source: str, *args: object) -> tuple[object, ...] | None:
    """What makes two loads of ``source`` the same: the arguments, and for a file its status (None: no file)."""
    if source.startswith("builtin:"):
        return (source, *args)
    try:
        st = os.stat(source)
    except OSError:
        return None
    return (source, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, *args)


def release_kept() -> None:
    """Drop a table kept by ``load_dataset(..., keep=True)`` that no sample step took (a run that reused its data)."""
    _HANDOFF.clear()


def load_dataset(source: str, tasks: str | None = None, features: str | None = None,
                 task_kinds: tuple[tuple[str, str], ...] = (), input_shape: tuple[int, ...] | None = None,
                 images: ImageSpec | None = None, image_cache: ImageCache | None = None,
                 decode: bool = True, keep: bool = False, impute: str = "none",
                 skip_unusable: bool = False) -> Dataset:
    """Load and validate a dataset.

    Args:
        source: a ``.parquet``/``.pq`` or ``.csv`` path, or ``builtin:NAME[:k=v,...]``.
        tasks: comma list or globs of label columns, ``!NAME`` or ``!GLOB`` to leave
            some out; default all columns named ``y_*`` (for a built-in: its own tasks).
        features: comma list or globs of feature columns; default every other numeric
            column (and numeric list columns, expanded) that is not a label: a column
            matching ``y_*`` or named by ``tasks`` is a feature only when ``features``
            names it exactly (a glob never picks it).
        task_kinds: ``(pattern, kind)`` pairs overriding the inferred kind of the tasks
            the pattern (name or glob) matches; a later pair wins.
        input_shape: the shape of one input (``--input-shape C,H,W``): the features, in
            order, must hold exactly that many values. A Parquet column of the Arrow type
            ``fixed_shape_tensor`` brings its own shape (and is then the only feature; with
            no ``features`` given, the table's one tensor column is used).
        images: image files named in a column (:mod:`taskgrouping.data.images`): the input.
        image_cache: where decoded images are kept by content key (the store); None decodes.
        decode: False checks the images' headers only (features are then an empty (n, 0)
            array): for validating a run before it starts.
        keep: keep the loaded table (no images) for the next identical call to take instead
            of loading it again: the check before a run hands its table to the run's sample
            step (0.16 s of a 1,001-task table). The file's status is part of "identical".
        impute: ``none`` (a missing feature value is an error naming the column), ``median``
            or ``mean``: missing (null or NaN) values of a numeric feature column are filled
            with the column's median or mean over its present values; every filled column
            is a warning (kind ``imputed``) and the fill values travel with exported models.
        skip_unusable: leave out, with a warning (kind ``skipped``), every task column whose
            labels cannot be used (too few values, classes or labelled rows); without it
            they are all named in one error.

    Returns:
        A validated :class:`Dataset`.
    """
    if impute not in IMPUTE:
        raise InputError(f"--impute {impute!r}: use one of {', '.join(IMPUTE)}")
    key = None if images is not None else _handoff_key(source, tasks, features, task_kinds, input_shape, impute,
                                                        skip_unusable)
    if key is not None:
        kept = _HANDOFF.pop(key, None)
        if kept is not None:
            return kept
    ds = _load(source, tasks, features, task_kinds, input_shape, images, image_cache, decode, impute,
               skip_unusable)
    if keep and key is not None:
        _HANDOFF.clear()
        _HANDOFF[key] = ds
    return ds


def _load(source: str, tasks: str | None, features: str | None, task_kinds: tuple[tuple[str, str], ...],
          input_shape: tuple[int, ...] | None, images: ImageSpec | None, image_cache: ImageCache | None,
          decode: bool, impute: str = "none", skip_unusable: bool = False) -> Dataset:
    """:func:`load_dataset` without the hand-off."""
    if source.startswith("builtin:"):
        if images is not None:
            raise InputError(f"--images names files in a table; {source} has no image column")
        ds = load_builtin(source)
        if task_kinds:
            raise InputError(f"--task-kind applies to files; the tasks of {source} have fixed kinds")
        if tasks is not None or ds.held_out:  # a built-in's held-out tasks are never grouped
            held = set(ds.held_out)
            keep = [k for k in (_resolve(tasks, ds.task_names, "--tasks", source) if tasks is not None
                                else ds.task_names) if k not in held]
            if not keep:
                raise InputError(f"{source}: --tasks {tasks!r} leaves only held-out tasks")
            ds = _subset_tasks(ds, keep)
        if features is not None:
            keep_f = _resolve(features, ds.feature_names, "--features", source)
            idx = [ds.feature_names.index(k) for k in keep_f]
            ds = Dataset(ds.features[:, idx], ds.labels, ds.tasks, keep_f, ds.source, ds.ground_truth,
                         ds.input_shape if len(idx) == ds.features.shape[1] else None)
        if input_shape is not None:
            ds.input_shape = _check_shape(input_shape, ds.features.shape[1], source, None)
        return ds
    frame = read_table(source)
    if images is not None:
        return _image_dataset(frame, source, tasks, task_kinds, images, image_cache, decode, skip_unusable)
    return dataset_from_frame(frame, source, tasks, features, task_kinds, input_shape, tensor_shapes(source),
                              impute=impute, skip_unusable=skip_unusable)


def _subset_tasks(ds: Dataset, keep: list[str]) -> Dataset:
    """``ds`` with only the tasks ``keep``, in that order (ground truth kept for them)."""
    idx = positions(ds.task_names, keep)
    gt = {k: v for k, v in ds.ground_truth.items() if k in keep} if ds.ground_truth else None
    return Dataset(ds.features, ds.labels[:, idx], [ds.tasks[i] for i in idx], ds.feature_names, ds.source, gt,
                   ds.input_shape, tuple(k for k in ds.held_out if k in keep))


def load_held_out(source: str, held_out: str | None, features: str | None = None,
                  task_kinds: tuple[tuple[str, str], ...] = (), input_shape: tuple[int, ...] | None = None) -> Dataset:
    """The held-out tasks meta-learning is evaluated on: ``held_out`` (names or globs), or a built-in's own."""
    if source.startswith("builtin:"):
        ds = load_builtin(source)
        names = list(ds.held_out) if held_out is None else _resolve(held_out, ds.task_names, "--held-out-tasks",
                                                                      source)
        if not names:
            raise InputError(f"--training meta evaluates on held-out tasks: {source} declares none; name them "
                             "with --held-out-tasks NAMES")
        ds = _subset_tasks(ds, names)
        if features is not None:
            keep_f = _resolve(features, ds.feature_names, "--features", source)
            idx = [ds.feature_names.index(k) for k in keep_f]
            ds = Dataset(ds.features[:, idx], ds.labels, ds.tasks, keep_f, ds.source, ds.ground_truth)
        return ds
    if held_out is None:
        raise InputError(f"--training meta evaluates on held-out tasks: name the columns of {source} to keep out "
                         "of the grouping with --held-out-tasks NAMES")
    names = _resolve(held_out, read_table(source).columns, "--held-out-tasks", source, base=TASK_PATTERN)
    return load_dataset(source, ",".join(names), features, task_kinds, input_shape)


def _image_dataset(frame: pl.DataFrame, source: str, tasks: str | None, task_kinds: tuple[tuple[str, str], ...],
                   spec: ImageSpec, cache: ImageCache | None, decode: bool,
                   skip_unusable: bool = False) -> Dataset:
    """A table whose input is the image files one column names; every other selected column is a task."""
    if spec.column not in frame.columns:
        raise InputError(f"{source}: --images names column {spec.column!r}, which is not in the table")
    paths = image_paths(frame[spec.column].to_list(), spec, source)
    shape = check_images(paths, spec)
    labels_only = frame.drop(spec.column)
    if tasks is None and not any(c.startswith("y_") for c in labels_only.columns):
        tasks = ",".join(c for c in labels_only.columns)  # an attribute table: every other column is a task
    base = labels_dataset(labels_only, source, tasks, task_kinds, skip_unusable)
    if not decode:
        x = np.zeros((frame.height, 0), np.float32)
    elif cache is None:
        x = decode_images(paths, shape)
    else:
        x = cache(content_key(paths, shape), lambda: decode_images(paths, shape))
    return Dataset(features=x, labels=base.labels, tasks=base.tasks, feature_names=[spec.column], source=source,
                   input_shape=shape, warnings=base.warnings)


def labels_dataset(frame: pl.DataFrame, source: str, tasks: str | None,
                   task_kinds: tuple[tuple[str, str], ...], skip_unusable: bool = False,
                   python: bool = False) -> Dataset:
    """The label columns of ``frame``, validated and encoded exactly as for a table.

    For an input that comes from elsewhere (image files, arrays): the returned features
    are a placeholder the caller replaces.
    """
    import polars as pl

    return dataset_from_frame(frame.with_columns(pl.lit(0.0).alias("__tg_zero__")), source, tasks, "__tg_zero__",
                              task_kinds, skip_unusable=skip_unusable, column_checks=False, python=python)


def tensor_shapes(source: str) -> dict[str, tuple[int, ...]]:
    """``{column: shape}`` of the Parquet columns of Arrow type ``fixed_shape_tensor`` (none for CSV)."""
    path = Path(source).expanduser()
    if path.suffix.lower() not in (".parquet", ".pq"):
        return {}
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, tuple[int, ...]] = {}
    for f in pq.read_schema(path):
        if isinstance(f.type, pa.FixedShapeTensorType):
            perm = f.type.permutation
            if perm is not None and list(perm) != sorted(perm):
                raise InputError(f"{source}: tensor column {f.name!r} has a non-default dimension order "
                                 f"(permutation {list(perm)}); write it in C order")
            out[f.name] = tuple(int(s) for s in f.type.shape)
    return out


def _check_shape(shape: tuple[int, ...], width: int, source: str, column: str | None) -> tuple[int, ...]:
    """An input shape whose size matches ``width`` feature values (else one clear line)."""
    if not shape or any(s < 1 for s in shape):
        raise InputError(f"--input-shape {','.join(map(str, shape))}: every size must be a positive integer")
    size = 1
    for s in shape:
        size *= s
    if size != width:
        what = f"column {column!r} holds" if column else "the features hold"
        raise InputError(f"{source}: --input-shape {','.join(map(str, shape))} multiplies to {size}, but {what} "
                         f"{width} values per row")
    return tuple(shape)


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
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            for i, f in enumerate(table.schema):  # tensor columns as plain fixed-size lists (shape kept aside)
                if isinstance(f.type, pa.FixedShapeTensorType):
                    storage = pa.chunked_array([c.storage for c in table.column(i).chunks], type=f.type.storage_type)
                    table = table.set_column(i, f.name, storage)
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
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


def _resolve(spec: str, available: list[str], option: str, source: str,
             skip: frozenset[str] = frozenset(), base: str = "*") -> list[str]:
    """Resolve a comma list of names and globs against the available columns, in order.

    ``!NAME`` or ``!GLOB`` removes columns (``'y_*,!y_coin'``); a spec of exclusions only
    starts from ``base`` (every column, or ``y_*`` for tasks). Globs never pick a column in ``skip``; an exact
    name does.
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise InputError(f"{option} is empty")
    excluded: set[str] = set()
    for item in (i[1:].strip() for i in items if i.startswith("!")):
        hits = [c for c in available if fnmatch.fnmatchcase(c, item)] if _is_glob(item) else \
            [item] if item in available else []
        if not hits:
            raise InputError(f"{source}: {option} excludes {item!r}, which matches no column")
        excluded.update(hits)
    items = [i for i in items if not i.startswith("!")]
    if not items:
        items = [base]
    out: list[str] = []
    for item in items:
        if _is_glob(item):
            matched = [c for c in available if fnmatch.fnmatchcase(c, item)]
            if not matched:
                raise InputError(f"{source}: {option} pattern {item!r} matches no column")
            hits = [c for c in matched if c not in skip and c not in excluded]
            if not hits and any(c in skip for c in matched):
                raise InputError(f"{source}: {option} pattern {item!r} matches only label columns; a label is "
                                 "a feature only when named exactly")
            out.extend(h for h in hits if h not in out)
        else:
            if item not in available:
                raise InputError(f"{source}: {option} names column {item!r}, which is not in the table")
            if item in out:
                raise InputError(f"{option}: {item!r} is named twice")
            if item not in excluded:
                out.append(item)
    if not out:
        raise InputError(f"{source}: {option} {spec!r} leaves no column")
    return out


def label_columns(columns: list[str], tasks: str | None) -> frozenset[str]:
    """Columns that hold labels: every ``y_*`` column and every column ``tasks`` names or matches.

    These are never features unless ``--features`` names them exactly: a label
    left out of ``--tasks`` (or excluded with ``!``) must not leak into the inputs.
    """
    patterns = [TASK_PATTERN]
    if tasks is not None:
        patterns += [s.strip().lstrip("!").strip() for s in tasks.split(",") if s.strip()]
    return frozenset(c for c in columns if any(
        fnmatch.fnmatchcase(c, p) if _is_glob(p) else c == p for p in patterns))


def parse_task_kinds(items: list[str] | tuple[str, ...] | None) -> tuple[tuple[str, str], ...]:
    """``["NAME=kind", ...]`` (``--task-kind``) as ``((pattern, kind), ...)``, each checked."""
    out: list[tuple[str, str]] = []
    for item in items or ():
        name, sep, kind = item.partition("=")
        name, kind = name.strip(), kind.strip()
        if not sep or not name:
            raise InputError(f"--task-kind {item!r}: write NAME=KIND (KIND one of {', '.join(TASK_KINDS)})")
        if kind not in TASK_KINDS:
            raise InputError(f"--task-kind {item!r}: unknown kind {kind!r}; use one of {', '.join(TASK_KINDS)}")
        out.append((name, kind))
    return tuple(out)


def _kind_overrides(task_cols: list[str], task_kinds: tuple[tuple[str, str], ...],
                    source: str) -> dict[str, TaskKind]:
    """The kind each task is given by ``--task-kind`` (a later pattern wins); unmatched patterns fail."""
    out: dict[str, TaskKind] = {}
    for pattern, kind in task_kinds:
        hits = [c for c in task_cols if (fnmatch.fnmatchcase(c, pattern) if _is_glob(pattern) else c == pattern)]
        if not hits:
            raise InputError(f"{source}: --task-kind {pattern}={kind} matches no task")
        for h in hits:
            out[h] = kind  # type: ignore[assignment]  # checked in parse_task_kinds
    return out


def dataset_from_frame(frame: pl.DataFrame, source: str, tasks: str | None = None,
                       features: str | None = None, task_kinds: tuple[tuple[str, str], ...] = (),
                       input_shape: tuple[int, ...] | None = None,
                       tensors: dict[str, tuple[int, ...]] | None = None, impute: str = "none",
                       skip_unusable: bool = False, column_checks: bool = True, python: bool = False) -> Dataset:
    """Select and validate tasks and features from a frame (see :func:`load_dataset`).

    ``column_checks``: look for ID-like, constant and left-out text columns
    (:func:`column_warnings`); off where the frame's only feature is a placeholder.
    ``python``: hints name the Python API's arguments (``impute='median'``), not the CLI's options.
    """
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
        task_cols = _resolve(tasks, columns, "--tasks", source, base=TASK_PATTERN)

    others = [c for c in columns if c not in task_cols]
    labels = label_columns(columns, tasks)
    tensors = {c: s for c, s in (tensors or {}).items() if c in others and c not in labels}
    if features is None and len(tensors) > 1:
        raise InputError(f"{source}: several tensor columns ({', '.join(tensors)}); name the input with --features")
    if features is None and tensors:
        feat_cols = list(tensors)  # an image/tensor input is the input
    elif features is None:
        feat_cols = [c for c in others if c not in labels
                     and (_is_numeric(frame.schema[c]) or _is_numeric_list(frame.schema[c]))]
    else:
        feat_cols = _resolve(features, others, "--features", source, skip=labels)
        for c in feat_cols:
            dt = frame.schema[c]
            if not (_is_numeric(dt) or _is_numeric_list(dt)):
                raise InputError(f"{source}: feature column {c!r} is not numeric (dtype {dt})")
    if not feat_cols:
        raise InputError(f"{source}: no numeric feature columns besides the labels (columns named y_* or "
                         "named by --tasks); name the features with --features")

    x, names, filled = _feature_matrix(frame, feat_cols, source, impute, python)
    warnings = column_warnings(frame, task_cols, feat_cols, others if features is None else feat_cols,
                               labels) if column_checks else []
    warnings += [{"column": c, "kind": "imputed", "message": f"{n} missing values filled with the {impute} of the "
                  f"column's training rows ({_opt('impute', python, impute)}; the value is in the prepared data and "
                  "every exported model.json)"} for c, n in filled.items()]
    shape = input_shape
    tensor_cols = [c for c in feat_cols if c in tensors]
    if tensor_cols:
        if len(feat_cols) > 1:
            raise InputError(f"{source}: tensor column {tensor_cols[0]!r} must be the only feature (--features "
                             f"{tensor_cols[0]})")
        own = tensors[tensor_cols[0]]
        if shape is not None and tuple(shape) != own:
            raise InputError(f"{source}: --input-shape {','.join(map(str, shape))} does not match tensor column "
                             f"{tensor_cols[0]!r} of shape {','.join(map(str, own))}")
        shape = own
    if shape is not None:
        shape = _check_shape(tuple(shape), x.shape[1], source, feat_cols[0] if len(feat_cols) == 1 else None)
        names = list(feat_cols)  # a shaped input is named by its column(s), not by every value
    kinds = _kind_overrides(task_cols, task_kinds, source)
    specs: list[TaskSpec] = []
    columns_y: list[np.ndarray] = []
    unusable: list[tuple[str, str]] = []
    for c in task_cols:
        try:
            spec, y = _encode_labels(frame[c], source, kinds.get(c))
        except InputError as exc:
            unusable.append((c, str(exc).removeprefix(f"{source}: ")))
            continue
        specs.append(spec)
        columns_y.append(y)
    if unusable and not skip_unusable:
        leave = ",".join(f"!{c}" for c, _ in unusable)
        how = (f"leave {'it' if len(unusable) == 1 else 'them'} out of Y or pass skip_unusable_tasks=True" if python
               else f"leave {'it' if len(unusable) == 1 else 'them'} out (--tasks '{tasks or TASK_PATTERN},{leave}') "
                    "or pass --skip-unusable-tasks")
        if len(unusable) == 1:
            raise InputError(f"{source}: {unusable[0][1]} ({how})")
        raise InputError(f"{source}: {len(unusable)} task columns cannot be used: "
                         + "; ".join(why for _, why in unusable) + f". To go on, {how}")
    if not specs:
        raise InputError(f"{source}: no task column can be used: " + "; ".join(why for _, why in unusable))
    warnings += [{"column": c, "kind": "skipped", "message": f"{why}; left out ({_opt('skip', python)})"}
                 for c, why in unusable]
    ys = np.stack(columns_y, axis=1).astype(np.float32) if columns_y else np.empty((frame.height, 0), np.float32)
    return Dataset(features=x, labels=ys, tasks=specs, feature_names=names, source=source, input_shape=shape,
                   warnings=tuple(warnings), imputed={c: impute for c in filled})


def _looks_like_dates(s: pl.Series) -> bool:
    """Whether a text column's first values all parse as dates or timestamps (polars infers the format)."""
    import polars as pl

    head = s.drop_nulls().head(200).cast(pl.String)
    if head.len() == 0:
        return False
    try:
        parsed = head.str.to_datetime(strict=False)
    except Exception:  # no format polars can infer
        return False
    return bool(parsed.null_count() == 0)


def is_table(x: object) -> bool:
    """Whether ``x`` is a polars or pandas DataFrame or a pyarrow Table (columns with names)."""
    module = type(x).__module__
    return (module.startswith(("polars", "pandas")) and hasattr(x, "columns")) or \
        (module.startswith("pyarrow") and hasattr(x, "column_names"))


def _opt(which: str, python: bool, value: str = "") -> str:
    """An option as the user spelled it: the CLI's flag, or the Python API's argument."""
    if which == "impute":
        return f"impute={value!r}" if python else f"--impute {value}"
    return "skip_unusable_tasks=True" if python else "--skip-unusable-tasks"


IMPUTE = ("none", "median", "mean")
"""What ``--impute`` takes: how missing feature values are filled (``none``: they are an error)."""

ID_MIN_ROWS = 20
"""A column is ID-like only on a table of at least this many rows (a distinct value per row)."""

TEXT_MANY = 50
"""A left-out text column with more distinct values than this is called high-cardinality."""


def column_warnings(frame: pl.DataFrame, task_cols: list[str], feat_cols: list[str], considered: list[str],
                    labels: frozenset[str]) -> list[dict[str, str]]:
    """What a user should know about the table's columns: ``[{"column", "kind", "message"}]``.

    ``kind`` is ``id`` (a distinct integer or string on every row: an identifier; used as a
    feature when numeric), ``constant`` (one value on every row: a feature that carries
    nothing) or ``dropped`` (a column of ``considered`` that is not a feature: text, dates
    and other non-numeric types). Which columns are used does not change: ``--features``
    chooses them.
    """
    import polars as pl

    out: list[dict[str, str]] = []
    n = frame.height
    used = set(feat_cols)
    for c in considered:
        if c in task_cols or (c in labels and c not in used):
            continue
        s = frame[c]
        dt = s.dtype
        textual = dt in (pl.String, pl.Categorical) or isinstance(dt, pl.Enum)
        try:
            distinct = int(s.drop_nulls().n_unique())
        except Exception:  # a type polars cannot hash (nested lists): no per-row identity to test
            distinct = -1
        unique_rows = distinct == n and n >= ID_MIN_ROWS
        if c in used:
            if unique_rows and dt.is_integer():
                out.append({"column": c, "kind": "id", "message": f"a distinct integer on each of the {n} rows "
                            "looks like an identifier, and it is used as a feature; leave it out with --features"})
            elif distinct == 1:
                out.append({"column": c, "kind": "constant", "message": f"the same value ({s.drop_nulls()[0]}) on "
                            "every row: a feature that carries no information"})
            continue
        if textual and unique_rows:
            out.append({"column": c, "kind": "id", "message": f"text with a distinct value on each of the {n} rows "
                        "(an identifier?), not a feature"})
            continue
        if textual and _looks_like_dates(s):
            what = f"dates as text ({distinct} distinct values)"
            why = "not numeric, so not a feature (encode them as numbers, e.g. days since a reference day, to use them)"
        elif textual:
            what = (f"high-cardinality text ({distinct} distinct values)" if distinct > TEXT_MANY
                    else f"text ({distinct} distinct values)")
            why = "not numeric, so not a feature (encode it as numbers to use it)"
        elif _is_numeric(dt) or _is_numeric_list(dt):
            what, why = "numeric", "not a feature (the input is " + ", ".join(feat_cols) + ")"
        else:
            what, why = f"dtype {dt}", "not numeric, so not a feature (encode it as numbers to use it)"
        out.append({"column": c, "kind": "dropped", "message": f"{what}: {why}"})
    return out


def _is_numeric(dt: pl.DataType) -> bool:
    return any(dt == t for t in _numeric_types())


def _is_numeric_list(dt: pl.DataType) -> bool:

    import polars as pl
    inner = getattr(dt, "inner", None)
    return isinstance(dt, pl.List | pl.Array) and inner is not None and _is_numeric(inner)


def _feature_matrix(frame: pl.DataFrame, cols: list[str], source: str, impute: str = "none",
                    python: bool = False) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """The features as float32 ``(n, d)``, their names, and ``{column: missing count}`` of the columns to impute.

    With ``impute``, a scalar column's missing values stay NaN here: :func:`~taskgrouping.data.dataset.prepare`
    fills them with the median or mean of the column's *training* rows, so no held-out row
    shapes the inputs. Every column with missing or non-finite values is named in one error.
    """
    import polars as pl
    blocks: list[np.ndarray] = []
    names: list[str] = []
    filled: dict[str, int] = {}
    holes: dict[str, np.ndarray] = {}  # the missing rows of each column to impute
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
            missing = np.isnan(arr)
            if impute != "none" and missing.any() and not np.isinf(arr).any():
                if missing.all():
                    raise InputError(f"{source}: feature column {c!r} has no values to impute from (all missing)")
                filled[c], holes[c] = int(missing.sum()), missing
                arr = np.where(missing, 0.0, arr)  # checked as finite below; NaN again once checked
            blocks.append(arr.reshape(-1, 1))
            names.append(c)
    x = np.concatenate(blocks, axis=1)
    bad = ~np.isfinite(x)
    if bad.any():
        cols_bad = np.flatnonzero(bad.any(axis=0))
        inf = any(bool(np.isinf(x[:, j]).any()) for j in cols_bad)
        hint = "" if inf or impute != "none" else (
            "; pass impute='median' (or 'mean') to fill missing values" if python
            else "; pass --impute median (or mean) to fill missing values")
        if len(cols_bad) == 1:
            col = int(cols_bad[0])
            row = int(np.flatnonzero(bad[:, col])[0])
            raise InputError(f"{source}: feature column {names[col]!r} has {int(bad[:, col].sum())} missing, NaN or "
                             f"inf values (first at row {row}){hint}")
        shown = ", ".join(f"{names[j]!r} ({int(bad[:, j].sum())})" for j in cols_bad[:8])
        more = f" and {len(cols_bad) - 8} more" if len(cols_bad) > 8 else ""
        raise InputError(f"{source}: {len(cols_bad)} feature columns have missing, NaN or inf values: {shown}{more}"
                         f"{hint}")
    huge = np.abs(x) > FLOAT32_MAX
    if huge.any():
        col = int(np.flatnonzero(huge.any(axis=0))[0])
        raise InputError(f"{source}: feature column {names[col]!r} has {int(huge[:, col].sum())} values beyond "
                         f"±{FLOAT32_MAX:.1e} (the float32 range features are kept in); rescale it")
    out = x.astype(np.float32)
    for c, missing in holes.items():  # missing again: prepare() fills them from the training rows
        out[missing, names.index(c)] = np.nan
    return out, names, filled


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _numeric_tokens(values: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Parse string labels as numbers: (floats with NaN where unparsable, unparsable token -> row count)."""
    out = np.full(len(values), np.nan)
    bad: dict[str, int] = {}
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except ValueError:
            bad[v] = bad.get(v, 0) + 1
        else:
            if not np.isfinite(out[i]):
                bad[v] = bad.get(v, 0) + 1
                out[i] = np.nan
    return out, bad


def _categorical(name: str, values: list[str | None], kind: TaskKind,
                 reason: str) -> tuple[TaskSpec, np.ndarray]:
    classes = sorted({v for v in values if v is not None})
    index = {v: i for i, v in enumerate(classes)}
    y = np.array([np.nan if v is None else index[v] for v in values], dtype=np.float64)
    return TaskSpec(name, kind, len(classes) if kind == "multiclass" else 2, tuple(classes), reason), y


def _number_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _encode_labels(s: pl.Series, source: str, kind: TaskKind | None = None) -> tuple[TaskSpec, np.ndarray]:
    """Infer (or apply ``kind``) the task kind and encode labels as float32 with NaN for missing.

    Inference: bool and two-valued columns are binary; strings are multi-class;
    integers with at most :data:`MAX_INFERRED_CLASSES` distinct values are multi-class,
    other numbers regression. A string column whose values are numbers except a few
    tokens is rejected naming the token (it is usually a spelling of "missing").
    """
    import polars as pl

    name = s.name
    dt = s.dtype
    given = f"set by --task-kind {name}={kind}" if kind else ""
    if dt in (pl.String, pl.Categorical) or isinstance(dt, pl.Enum):
        values: list[str | None] = s.cast(pl.String).to_list()
        present_text = [v for v in values if v is not None]
        parsed, bad = _numeric_tokens(present_text)
        n_numeric = len(present_text) - sum(bad.values())
        if bad and n_numeric >= len(present_text) / 2 and kind != "multiclass" and kind != "binary":
            token, rows = max(bad.items(), key=lambda kv: kv[1])
            raise InputError(
                f"{source}: task column {name!r} is numeric except the token {token!r} ({rows} rows"
                + (f"; {len(bad) - 1} other tokens" if len(bad) > 1 else "") + "): if it means missing, "
                f"leave those cells empty (or NA); if the column is categorical, pass --task-kind {name}=multiclass")
        if kind == "regression":
            if bad:
                token = next(iter(bad))
                raise InputError(f"{source}: --task-kind {name}=regression, but task column {name!r} has "
                                 f"the non-numeric value {token!r}")
            y = np.full(len(values), np.nan)
            y[[i for i, v in enumerate(values) if v is not None]] = parsed
            spec = TaskSpec(name, "regression", 1, (), given)
        elif not bad and kind is None:  # numbers stored as text: infer as for a numeric column
            y = np.full(len(values), np.nan)
            y[[i for i, v in enumerate(values) if v is not None]] = parsed
            spec, y = _infer_numeric(name, y, integer=bool(np.all(parsed == np.round(parsed))))
        else:
            n_classes = len(set(present_text))
            chosen: TaskKind = kind or ("binary" if n_classes == 2 else "multiclass")
            why = given or (f"inferred: text with {n_classes} distinct values")
            spec, y = _categorical(name, values, chosen, why)
    elif dt == pl.Boolean:
        y = s.cast(pl.Float64).to_numpy().astype(np.float64)
        spec = TaskSpec(name, kind or "binary", 2, ("False", "True"), given or "inferred: boolean")
    elif _is_numeric(dt):
        y = s.cast(pl.Float64).to_numpy().astype(np.float64)
        if np.isinf(y).any():
            raise InputError(f"{source}: task column {name!r} has inf values")
        if (np.abs(y[~np.isnan(y)]) > FLOAT32_MAX).any():
            raise InputError(f"{source}: task column {name!r} has values beyond ±{FLOAT32_MAX:.1e} "
                             "(the float32 range labels are kept in); rescale it")
        if kind is None:
            spec, y = _infer_numeric(name, y, integer=dt.is_integer())
        elif kind == "regression":
            spec = TaskSpec(name, "regression", 1, (), given)
        else:
            spec, y = _categorical(name, [None if np.isnan(v) else _number_text(v) for v in y], kind, given)
            if spec.classes and all(_is_number(c) for c in spec.classes):  # numeric order, not text order
                order = sorted(spec.classes, key=float)
                remap = np.array([order.index(c) for c in spec.classes], dtype=np.float64)
                y = np.where(np.isnan(y), np.nan, remap[np.nan_to_num(y).astype(int)])
                spec = TaskSpec(name, spec.kind, spec.n_classes, tuple(order), given)
    else:
        raise InputError(f"{source}: task column {name!r} has unsupported dtype {dt}")

    present = y[~np.isnan(y)]
    n_distinct = np.unique(present).size
    if present.size == 0:
        raise InputError(f"{source}: task {name!r} has no labels (every value is missing)")
    if n_distinct < 2:
        shown = "" if present.size == 0 else f" ({spec.classes[int(present[0])] if spec.classes else present[0]})"
        raise InputError(
            f"{source}: task {name!r} has {n_distinct} distinct label value{'' if n_distinct == 1 else 's'}"
            f"{shown}; at least 2 are needed"
        )
    if spec.kind == "binary" and n_distinct != 2:
        raise InputError(f"{source}: --task-kind {name}=binary, but task {name!r} has {n_distinct} distinct "
                         "values; a binary task has exactly 2")
    if present.size < MIN_LABELLED:
        raise InputError(
            f"{source}: task {name!r} has {present.size} labelled samples; at least {MIN_LABELLED} are needed"
        )
    if spec.kind == "multiclass" and spec.n_classes * MIN_PER_CLASS > present.size:
        hint = ("leave it out of --tasks if it is an identifier" if dt in (pl.String, pl.Categorical)
                else f"pass --task-kind {name}=regression if it is a quantity")
        raise InputError(
            f"{source}: task {name!r} has {spec.n_classes} classes among {present.size} labelled samples; a "
            f"multi-class task needs at least {MIN_PER_CLASS} labelled samples per class on average ({hint})")
    return spec, y.astype(np.float32)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _infer_numeric(name: str, y: np.ndarray, integer: bool) -> tuple[TaskSpec, np.ndarray]:
    """The kind of a numeric label column (NaN = missing), and its encoding."""
    uniq = np.unique(y[~np.isnan(y)])
    if uniq.size and np.isin(uniq, [0.0, 1.0]).all():
        return TaskSpec(name, "binary", 2, ("0", "1"), "inferred: values 0 and 1"), y
    if uniq.size == 2:  # e.g. CelebA's -1/1 attributes: the larger value is the positive class
        coded = np.where(np.isnan(y), np.nan, (y == uniq[1]).astype(np.float64))
        return TaskSpec(name, "binary", 2, (_number_text(uniq[0]), _number_text(uniq[1])),
                        f"inferred: two values, {_number_text(uniq[1])} positive"), coded
    if integer and uniq.size <= MAX_INFERRED_CLASSES:
        index = {v: i for i, v in enumerate(uniq.tolist())}
        coded = np.array([np.nan if np.isnan(v) else index[v] for v in y], dtype=np.float64)
        return TaskSpec(name, "multiclass", int(uniq.size), tuple(_number_text(u) for u in uniq),
                        f"inferred: integers with {uniq.size} distinct values"), coded
    why = (f"inferred: integers with {uniq.size} distinct values (more than {MAX_INFERRED_CLASSES})" if integer
           else "inferred: non-integer numbers")
    return TaskSpec(name, "regression", 1, (), why), y
