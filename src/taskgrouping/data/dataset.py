"""In-memory dataset types, the seeded split and probe sample, and content fingerprints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from taskgrouping.hashing import derive_seed, stable_hash

TaskKind = Literal["binary", "regression", "multiclass"]


@dataclass(frozen=True)
class TaskSpec:
    """One prediction target (a label column).

    Attributes:
        name: the column name (``task_id``).
        kind: ``binary`` (labels 0/1), ``regression`` (float) or ``multiclass``
            (labels are class indices 0..n_classes-1).
        n_classes: number of classes (2 for binary, 1 for regression).
        classes: the original label values, as strings, in index order.
        reason: why it has this kind (``inferred: ...`` or ``set by --task-kind ...``); shown in
            the report, not part of any cache key.
    """

    name: str
    kind: TaskKind
    n_classes: int
    classes: tuple[str, ...] = ()
    reason: str = ""

    @property
    def out_dim(self) -> int:
        """Width of this task's head."""
        return self.n_classes if self.kind == "multiclass" else 1


@dataclass
class Dataset:
    """A validated multi-task table.

    Attributes:
        features: (n_samples, n_features) float32, finite.
        labels: (n_samples, n_tasks) float32; NaN marks a missing label. Binary
            labels are 0/1, multiclass labels class indices, regression raw values.
        tasks: one spec per label column, in column order.
        feature_names: one name per feature column.
        source: where it came from (a path or ``builtin:NAME``).
        ground_truth: planted group of each task, for synthetic data.
        input_shape: the shape of one input, e.g. ``(3, 32, 32)`` for images; ``None`` for a
            plain vector of ``n_features``. Rows are the inputs flattened in C order.
        held_out: tasks kept out of the grouping, for meta-learning's evaluation on unseen
            tasks (``builtin:mmaml`` declares its own; ``--held-out-tasks`` names them in a file).
        warnings: what the user should know about the table's columns, ``{"column", "kind",
            "message"}`` (:func:`~taskgrouping.data.load.column_warnings`, imputed and skipped columns).
        imputed: ``{feature column: "median" | "mean"}``: the columns whose missing values
            (NaN in ``features``) :func:`prepare` fills from the training rows.
    """

    features: np.ndarray
    labels: np.ndarray
    tasks: list[TaskSpec]
    feature_names: list[str]
    source: str
    ground_truth: dict[str, int] | None = None
    input_shape: tuple[int, ...] | None = None
    held_out: tuple[str, ...] = ()
    warnings: tuple[dict[str, str], ...] = ()
    imputed: dict[str, str] = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        """The task ids in column order."""
        return [t.name for t in self.tasks]

    def features_fingerprint(self) -> str:
        """Content hash of the feature matrix and its column names."""
        if self.imputed:  # how missing values are filled is part of the inputs (NaN hashes as itself)
            return stable_hash("features", self.feature_names, sorted(self.imputed.items()),
                               self.features.astype(np.float32))
        if self.input_shape is None:  # vector inputs keep the keys they always had
            return stable_hash("features", self.feature_names, self.features.astype(np.float32))
        return stable_hash("features", self.feature_names, list(self.input_shape), self.features.astype(np.float32))

    def label_fingerprint(self, j: int) -> str:
        """Content hash of task ``j``'s labels (missing labels included) and spec."""
        t = self.tasks[j]
        return stable_hash("labels", t.name, t.kind, list(t.classes), self.labels[:, j])


@dataclass
class PreparedData:
    """A dataset after the seeded split and standardisation (what every step reads).

    Attributes:
        x: (n, d) float32 standardised with the training split's mean and std.
        y: (n, T) float32; regression targets standardised with the training split.
        split: (n,) int8; 0 = train (every task), 1 = held out. Each task divides the held-out
            rows it has labels for into its own validation, selection and test parts
            (:meth:`parts`, :func:`task_parts`).
        probe_idx: (n_probe,) int64 rows of the training split used by probes.
        y_scale: (T,) the standard deviation used to standardise each task (1 if not regression).
        x_mean, x_std: (d,) the training split's feature mean and scale (raw = x * x_std + x_mean).
        y_mean: (T,) the mean used to standardise each task (0 if not regression).
        imputed: ``{feature column: fill value}``: what a missing value of that column was
            filled with (``--impute``; the training rows' median or mean).
    """

    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    probe_idx: np.ndarray
    tasks: list[TaskSpec]
    feature_names: list[str]
    y_scale: np.ndarray
    features_fp: str
    label_fps: list[str]
    seed: int
    ground_truth: dict[str, int] | None = field(default=None)
    input_shape: tuple[int, ...] | None = field(default=None)
    x_mean: np.ndarray | None = field(default=None)
    x_std: np.ndarray | None = field(default=None)
    y_mean: np.ndarray | None = field(default=None)
    imputed: dict[str, float] = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        """The task ids in column order."""
        return [t.name for t in self.tasks]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one input (``(d,)`` for vectors)."""
        return tuple(self.input_shape) if self.input_shape is not None else (int(self.x.shape[1]),)

    def parts(self, j: int) -> np.ndarray:
        """Task ``j``'s part of every row (:func:`task_parts`)."""
        t = self.tasks[j]
        return task_parts(self.y[:, j], self.split, t.kind, self.seed, t.name)

    def data_key(self) -> str:
        """Identity of the rows a model sees: features, split and probe sample."""
        return stable_hash("data", self.features_fp, self.split, self.probe_idx)


TRAIN_FRACTION = 0.6
"""Rows every task trains on (and probes draw from); the rest are held out."""

PARTS = ("train", "validation", "selection", "test")
"""A row's part for one task: 0 trains, 1 early-stops, 2 chooses the verdict, 3 is only reported."""

HELD_OUT_FRACTIONS = (0.25, 0.375, 0.375)
"""How a task's labelled held-out rows divide into validation, selection and test: 10 / 15 / 15 % of
all rows (with :data:`TRAIN_FRACTION` 60 % training)."""


def split_rows(n: int, seed: int, train_fraction: float = TRAIN_FRACTION) -> np.ndarray:
    """Seeded shared split: 0 = train, 1 = held out, per row (60 / 40 by default).

    It depends on the row count and seed only, never on labels, so adding a task leaves
    every probe and every other task's evaluation rows as they were.
    """
    rng = np.random.default_rng(derive_seed(seed, "split"))
    order = rng.permutation(n)
    split = np.ones(n, dtype=np.int8)
    split[order[: int(round(train_fraction * n))]] = 0
    return split


def _interleaved(n: int, fractions: tuple[float, ...]) -> np.ndarray:
    """``n`` part indices in proportion to ``fractions``, interleaved so every prefix is in proportion.

    Item ``j`` of part ``k`` ideally sits at ``(j + 0.5) / f_k``; the sequence is all items
    sorted by that position, so any run of consecutive positions holds each part within
    one of its share.
    """
    f = np.asarray(fractions, dtype=np.float64) / float(sum(fractions))
    pos = np.concatenate([(np.arange(int(np.ceil(n * fk)) + 1) + 0.5) / fk for fk in f])
    part = np.concatenate([np.full(int(np.ceil(n * fk)) + 1, k) for k, fk in enumerate(f)])
    return part[np.argsort(pos, kind="stable")][:n]


def task_parts(y: np.ndarray, split: np.ndarray, kind: str, seed: int, name: str) -> np.ndarray:
    """One task's part of every row: 0 train, 1 validation, 2 selection, 3 test, -1 unlabelled.

    Training rows are the shared ones (``split == 0``). The task's labelled held-out rows
    are divided by :data:`HELD_OUT_FRACTIONS`; for a classification task within each
    class (stratified: the classes are laid end to end, each shuffled, and dealt an
    interleaved sequence of parts), so a rare class lands in every part in proportion.
    Seeded by ``seed`` and the task's name only: other tasks never move a task's rows.
    """
    labelled = ~np.isnan(y)
    parts = np.where(labelled & (split == 0), 0, -1).astype(np.int8)
    held = np.flatnonzero(labelled & (split != 0))
    rng = np.random.default_rng(derive_seed(seed, "parts", name))
    if kind == "regression":
        order = held[rng.permutation(held.size)]
    else:
        classes = np.unique(y[held])
        strata = [held[y[held] == c] for c in classes[rng.permutation(classes.size)]]
        order = np.concatenate([r[rng.permutation(r.size)] for r in strata]) if strata else held
    parts[order] = 1 + _interleaved(order.size, HELD_OUT_FRACTIONS).astype(np.int8)
    return parts


MIN_SHARED = 30
"""A pair of tasks whose labels share fewer probe samples than this gets no paired SWOLA distance.

The paired distance is a mean over the shared samples of per-sample gradient distances,
whose spread is of the order of their mean (coefficient of variation about 1 on the
built-in sets), so with n shared samples its relative standard error is about 1 / sqrt(n):
18% at 30, already larger than the gaps between planted groups on the harder sets.
Below it the run measures every pair with the distribution-level probe of
``swola-meta`` instead (:mod:`taskgrouping.methods.meta`), which needs no shared sample.
"""


def shared_labels(labels: np.ndarray) -> np.ndarray:
    """(T, T) how many rows of ``labels`` (n, T; NaN = missing) each pair of tasks both has labelled."""
    m = (~np.isnan(labels)).astype(np.float64)
    return m.T @ m


def probe_overlap(labels: np.ndarray) -> dict[str, int | None]:
    """How many probe samples the tasks' labels share: the fewest over pairs, and pairs below :data:`MIN_SHARED`.

    ``labels``: (n_probe, T) with NaN for missing labels.
    """
    t = labels.shape[1]
    if t < 2:
        return {"min": None, "below": 0, "threshold": MIN_SHARED}
    m = ~np.isnan(labels)
    if m.all():  # every pair shares every row
        n = labels.shape[0]
        return {"min": n, "below": 0 if n >= MIN_SHARED else t * (t - 1) // 2, "threshold": MIN_SHARED}
    mf = m.astype(np.float32)  # counts up to 2^24 are exact in float32
    lo, below = np.inf, 0
    for r in range(0, t, OVERLAP_BLOCK):  # row blocks: no T x T matrix (800 MiB at 10,000 tasks)
        block = mf[:, r : r + OVERLAP_BLOCK].T @ mf
        block[np.arange(block.shape[0]), np.arange(r, r + block.shape[0])] = np.inf
        lo = min(lo, float(block.min()))
        below += int((block < MIN_SHARED).sum())
    return {"min": int(lo), "below": below // 2, "threshold": MIN_SHARED}


OVERLAP_BLOCK = 1024
"""Tasks per row block of :func:`probe_overlap`."""


def probe_rows(split: np.ndarray, seed: int, samples: int) -> np.ndarray:
    """The seeded probe sample: ``min(samples, n_train)`` training rows, sorted."""
    train_rows = np.flatnonzero(split == 0)
    rng = np.random.default_rng(derive_seed(seed, "probe-sample"))
    return np.sort(rng.permutation(train_rows)[: min(samples, train_rows.size)])


def prepare(ds: Dataset, seed: int, samples: int) -> PreparedData:
    """Split, standardise and draw the probe sample (all seeded).

    Vector features are standardised per column, images and other tensors per channel
    (the first axis of ``input_shape``), with the training split's statistics. The probe
    sample is ``min(samples, n_train)`` training rows.
    """
    n = ds.features.shape[0]
    split = split_rows(n, seed)
    train = split == 0
    x64 = ds.features.astype(np.float64)
    fills: dict[str, float] = {}
    for column, how in ds.imputed.items():  # --impute: from the training rows only, so no held-out row shapes x
        j = ds.feature_names.index(column)
        col = x64[:, j]
        present = col[train & ~np.isnan(col)]
        if present.size == 0:  # no training row has a value: the other rows' (the column is not all missing)
            present = col[~np.isnan(col)]
        fills[column] = float(np.median(present) if how == "median" else present.mean())
        x64[:, j] = np.where(np.isnan(col), fills[column], col)
    if ds.input_shape is not None and len(ds.input_shape) >= 2:
        c = ds.input_shape[0]
        per = x64[train].reshape(int(train.sum()), c, -1)
        cmu, csd = per.mean(axis=(0, 2)), per.std(axis=(0, 2))
        csd[~np.isfinite(csd) | (csd <= 1e-12 * np.abs(per).max(axis=(0, 2), initial=0.0))] = 1.0
        mu, sd = np.repeat(cmu, x64.shape[1] // c), np.repeat(csd, x64.shape[1] // c)
    else:
        mu = x64[train].mean(axis=0)
        sd = x64[train].std(axis=0)
        # constant relative to the column's own magnitude (a feature on a 1e-30 scale is not constant)
        sd[~np.isfinite(sd) | (sd <= 1e-12 * np.abs(x64[train]).max(axis=0, initial=0.0))] = 1.0
    x = ((x64 - mu) / sd).astype(np.float32)

    y = ds.labels.astype(np.float32).copy()
    y_scale = np.ones(len(ds.tasks), dtype=np.float64)
    y_mean = np.zeros(len(ds.tasks), dtype=np.float64)
    for j, t in enumerate(ds.tasks):
        if t.kind == "regression":
            col = y[:, j].astype(np.float64)
            tr = col[train & ~np.isnan(col)]
            m, s = (float(tr.mean()), float(tr.std())) if tr.size else (0.0, 1.0)
            s = s if s > 1e-12 * float(np.abs(tr).max(initial=0.0)) else 1.0
            y[:, j] = ((col - m) / s).astype(np.float32)
            y_scale[j] = s
            y_mean[j] = m

    probe_idx = probe_rows(split, seed, samples)
    return PreparedData(
        x=x,
        y=y,
        split=split,
        probe_idx=probe_idx.astype(np.int64),
        tasks=list(ds.tasks),
        feature_names=list(ds.feature_names),
        y_scale=y_scale,
        features_fp=ds.features_fingerprint(),
        label_fps=[ds.label_fingerprint(j) for j in range(len(ds.tasks))],
        seed=seed,
        ground_truth=ds.ground_truth,
        input_shape=None if ds.input_shape is None else tuple(ds.input_shape),
        x_mean=mu,
        x_std=sd,
        y_mean=y_mean,
        imputed=fills,
    )
