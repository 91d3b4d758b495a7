"""The Python door: :class:`TaskGrouper` (a scikit-learn style estimator), :func:`run` and :func:`select`.

``TaskGrouper.fit`` runs the affinity and selection stages in this process (no Prefect
server, no Dask cluster) by calling the bodies of the same steps the ``regroup`` flow
runs, with the same cache keys, so a ``store`` is shared with the CLI both ways.
:func:`run` is the flow exactly as ``taskgrouping run`` runs it; :func:`select` is
``taskgrouping select`` on an in-memory matrix.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from taskgrouping.errors import InputError
from taskgrouping.methods.base import positions


def _labels_frame(Y: Any) -> Any:
    """Y (polars/pandas DataFrame, pyarrow Table or dict of 1-d arrays) as a polars frame, NaN -> null."""
    import polars as pl

    frame: Any
    if isinstance(Y, pl.DataFrame):
        frame = Y
    elif isinstance(Y, Mapping):
        try:
            frame = pl.DataFrame({str(k): np.asarray(v) for k, v in Y.items()})
        except Exception as exc:
            raise InputError(f"Y: the label arrays cannot form a table ({exc})") from None
    elif type(Y).__module__.startswith("pyarrow"):
        frame = pl.from_arrow(Y)
    elif type(Y).__module__.startswith("pandas"):
        frame = pl.from_pandas(Y)
    else:
        raise InputError(f"Y must be a polars or pandas DataFrame, a pyarrow Table or a dict of arrays, "
                         f"got {type(Y).__name__}")
    assert isinstance(frame, pl.DataFrame)
    floats = [c for c, dt in frame.schema.items() if dt in (pl.Float32, pl.Float64)]
    return frame.with_columns([pl.col(c).fill_nan(None) for c in floats]) if floats else frame


def dataset_from_arrays(X: Any, Y: Any, task_kinds: tuple[tuple[str, str], ...] = (), source: str = "arrays",
                        impute: str = "none", skip_unusable: bool = False) -> Any:
    """A validated :class:`~taskgrouping.data.dataset.Dataset` from features ``X`` and labels ``Y``.

    ``X``: numpy or torch, ``(n, d)`` (features ``x_0`` .. ``x_{d-1}``) or ``(n, C, H, W)`` (one
    image input ``x``); or a polars/pandas DataFrame or pyarrow Table, whose columns are
    chosen, named and checked exactly as the CLI does for a table (every numeric column;
    ID-like, constant and text columns are warnings), so the API and the CLI share a
    store's data, probes and pairs on the same table. Every column of ``Y`` is a task;
    labels are validated and their kinds inferred exactly as for a file.
    """
    from taskgrouping.data.dataset import Dataset
    from taskgrouping.data.load import dataset_from_frame, is_table, labels_dataset

    frame = _labels_frame(Y)
    if frame.width == 0:
        raise InputError("Y has no task columns")
    if is_table(X):
        import polars as pl

        fx = _labels_frame(X)
        if fx.height != frame.height:
            raise InputError(f"X has {fx.height} rows but Y has {frame.height}")
        clash = [c for c in fx.columns if c in frame.columns]
        if clash:
            raise InputError(f"X and Y both have the column {clash[0]!r}; a column is a feature or a task")
        both = pl.concat([fx, frame], how="horizontal")
        return dataset_from_frame(both, "X, Y" if source == "arrays" else source, ",".join(frame.columns), None,
                                  task_kinds, impute=impute, skip_unusable=skip_unusable, python=True)
    if type(X).__module__.startswith("torch"):
        X = X.detach().cpu().numpy()
    x = np.asarray(X, dtype=np.float32)
    if x.ndim < 2:
        raise InputError(f"X must be (n, d) or (n, C, H, W), got shape {x.shape}")
    if frame.height != x.shape[0]:
        raise InputError(f"X has {x.shape[0]} rows but Y has {frame.height}")
    if not np.isfinite(x).all():
        col = int(np.flatnonzero((~np.isfinite(x.reshape(len(x), -1))).any(axis=0))[0])
        raise InputError(f"X has NaN or inf values (first at flat feature {col})")
    base = labels_dataset(frame, "Y" if source == "arrays" else source, ",".join(frame.columns), task_kinds,
                          skip_unusable, python=True)
    flat = x.reshape(x.shape[0], -1)
    shape = tuple(int(s) for s in x.shape[1:]) if x.ndim > 2 else None
    names = ["x"] if shape is not None else [f"x_{i}" for i in range(flat.shape[1])]
    return Dataset(features=flat, labels=base.labels, tasks=base.tasks, feature_names=names, source=source,
                   input_shape=shape, warnings=base.warnings)


def _neighbour_schema() -> Any:
    """The neighbour affinity's columns with plain strings (what a frame shows)."""
    from taskgrouping.storage.store import NEIGHBOUR_AFFINITY_SCHEMA

    return NEIGHBOUR_AFFINITY_SCHEMA


def _trunk_name(trunk: Any) -> str:
    """``trunk`` as a name: a string as given; a callable registered as an importable in-process factory.

    A callable (say, defined in a notebook) becomes ``taskgrouping_fn_<hash>:make`` in
    ``sys.modules``, the hash taken over its source, so its cache keys follow its code.
    """
    if trunk is None:
        return "auto"
    if isinstance(trunk, str):
        return trunk
    if callable(trunk):
        import inspect
        import sys
        import types

        from taskgrouping.hashing import stable_hash

        try:
            source = inspect.getsource(trunk)
        except (OSError, TypeError):
            source = repr(trunk)  # no source to hash: keyed on the object's description
        name = f"taskgrouping_fn_{stable_hash(source, length=12)}"
        module = sys.modules.get(name) or types.ModuleType(name)
        module.make = trunk  # type: ignore[attr-defined]
        module.__tg_source__ = source.encode()  # type: ignore[attr-defined]
        sys.modules[name] = module
        return f"{name}:make"
    raise InputError(f"trunk must be a name (mlp, cnn, resnet, PATH.py:FUNCTION, package.module:FUNCTION) or a "
                     f"callable input_shape -> nn.Module, got {type(trunk).__name__}")


class TaskGrouper:
    """Group tasks from features and labels in this process (scikit-learn estimator conventions).

    Parameters
    ----------
    method : {"swola", "swola-meta", "tag", "datamaps", "principled"}
        The affinity. ``swola`` probes each task on its own (incremental with ``store``);
        ``swola-meta`` probes each task on its own samples (tasks that share none; ``swola``
        switches to it by itself when some pair shares fewer than 30 labelled probe samples);
        ``tag``, ``datamaps`` and ``principled`` train one joint model.
    selector : {"graph", "spectral", "gat", "network", "mip"}
    n_groups : int or "auto"
    n_samples : int
        Probe samples (training rows).
    trunk : str, callable or None
        What ``--trunk`` takes, or a callable ``input_shape -> nn.Module``; None is ``auto``.
    checkpoint : str or None
        A trunk state dict (``.safetensors`` or a torch file read with ``weights_only=True``).
    device : {"cpu", "cuda"}
    store : str or None
        A store folder shared with the CLI (probes, pairs and prepared data are reused both
        ways); None keeps everything in a temporary folder for the call.
    random_state : int
        The seed of every random choice.
    head, normalise, sketch, hidden, task_kinds
        SWOLA's head mode, normalisation and sketch, the trunk width, and kind overrides
        (``{"NAME or glob": "binary|multiclass|regression"}``).
    impute : {"none", "median", "mean"}
        Missing feature values of a frame ``X``: an error naming the column, or filled.
    pairs : {"auto", "dense", "sparse"}
        As ``--pairs``: every pair, or each task's nearest partners (``auto``: sparse from
        1,000 tasks on with the graph selector; then ``affinity_`` is None and
        ``affinity_frame()`` holds the neighbour lists).
    skip_unusable_tasks : bool
        Leave out (with a warning in ``warnings_``) the columns of ``Y`` whose labels cannot be
        used, instead of raising one error that names them all.

    Attributes
    ----------
    tasks_ : list of str
    features_ : list of str, the feature names (a frame's columns; ``x_0`` .. for arrays)
    warnings_ : list of dict, ``{"column", "kind", "message"}`` as in the CLI summary
    groups_ : list of list of str
    served_ : dict, task -> index of the group that serves it
    affinity_ : ndarray of shape (n_tasks, n_tasks), rows and columns in ``tasks_`` order
    affinity_kind_ : {"distance", "gain"}
    counts_, seconds_ : dict, the keys of the CLI summary
    selection_ : dict, the selector's diagnostics

    Examples
    --------
    >>> from taskgrouping import TaskGrouper
    >>> from taskgrouping.data.builtins import synthetic
    >>> ds = synthetic(tasks=8, groups=2, samples=400, seed=0)
    >>> Y = {t: ds.labels[:, j] for j, t in enumerate(ds.task_names)}
    >>> tg = TaskGrouper(n_groups=2, n_samples=128, hidden=16).fit(ds.features, Y)
    >>> len(tg.groups_)
    2
    """

    def __init__(self, method: str = "swola", selector: str = "graph", n_groups: int | str = "auto",
                 n_samples: int = 512, trunk: Any = None, checkpoint: str | None = None, device: str = "cpu",
                 store: str | None = None, random_state: int = 0, head: str = "fitted", normalise: str = "task",
                 sketch: str = "auto", hidden: int = 64, task_kinds: dict[str, str] | None = None,
                 impute: str = "none", skip_unusable_tasks: bool = False, pairs: str = "auto") -> None:
        """Store every argument unchanged (scikit-learn's rule); nothing is checked before ``fit``."""
        self.pairs = pairs
        self.method = method
        self.selector = selector
        self.n_groups = n_groups
        self.n_samples = n_samples
        self.trunk = trunk
        self.checkpoint = checkpoint
        self.device = device
        self.store = store
        self.random_state = random_state
        self.head = head
        self.normalise = normalise
        self.sketch = sketch
        self.hidden = hidden
        self.task_kinds = task_kinds
        self.impute = impute
        self.skip_unusable_tasks = skip_unusable_tasks

    # --- scikit-learn's parameter protocol --------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        import inspect

        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as given."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> TaskGrouper:
        """Set constructor arguments; an unknown name raises ``ValueError``."""
        names = self._param_names()
        for k, v in params.items():
            if k not in names:
                raise ValueError(f"invalid parameter {k!r} for TaskGrouper; valid: {', '.join(names)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        """Only the arguments that differ from their defaults, as scikit-learn prints estimators."""
        import inspect

        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k))
        return f"TaskGrouper({shown})"

    # --- fitting -----------------------------------------------------------------------------------
    def _config(self, store: Path, data: str) -> Any:
        from taskgrouping.config import RunConfig
        from taskgrouping.methods.swola import SwolaSettings
        from taskgrouping.models.train import TrainSettings

        if self.method not in ("swola", "tag", "datamaps", "principled"):
            if self.method == "hoa":
                raise InputError("method 'hoa' trains T + T(T-1)/2 models: use taskgrouping.run(method='hoa')")
            from taskgrouping.methods import check_method

            check_method(self.method)
        if self.n_groups != "auto" and not isinstance(self.n_groups, int | np.integer):
            raise InputError(f"n_groups must be an integer or 'auto', got {self.n_groups!r}")
        try:
            swola = SwolaSettings(head=self.head, normalise=self.normalise, hidden=self.hidden)  # type: ignore[arg-type]
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return RunConfig(data=data, method=self.method, selector=self.selector,
                         groups=None if self.n_groups == "auto" else int(self.n_groups),
                         samples=self.n_samples, seed=self.random_state, store=str(store), workers=1,
                         device=self.device, evaluate="none", trunk=_trunk_name(self.trunk),  # type: ignore[arg-type]
                         checkpoint=self.checkpoint, sketch=self.sketch, pairs=self.pairs, swola=swola,
                         train=TrainSettings(hidden=self.hidden),
                         task_kinds=tuple((self.task_kinds or {}).items()))

    def fit(self, X: Any, Y: Any) -> TaskGrouper:
        """Probe (or jointly train), build the affinity and select groups for every column of ``Y``.

        Parameters
        ----------
        X : array-like of shape (n, d) or (n, C, H, W), numpy or torch
        Y : polars/pandas DataFrame, pyarrow Table or dict of 1-d arrays, one column per task;
            null or NaN marks a missing label.

        Returns
        -------
        self
        """
        if self.store is None:
            with tempfile.TemporaryDirectory(prefix="taskgrouping-") as tmp:
                return self._fit(X, Y, Path(tmp))
        return self._fit(X, Y, Path(self.store).expanduser().resolve())

    def _fit(self, X: Any, Y: Any, root: Path) -> TaskGrouper:
        from taskgrouping.config import check_store
        from taskgrouping.flows.regroup import AFFINITY_STAGES, make_run, select_stage
        from taskgrouping.storage import Store
        from taskgrouping.tasks.steps import store_prepared

        check_store(str(root))
        t_start = time.perf_counter()
        cfg = self._config(root, "arrays")
        from taskgrouping.data.load import IMPUTE

        if self.impute not in IMPUTE:
            raise InputError(f"impute must be one of {', '.join(IMPUTE)}, got {self.impute!r}")
        ds = dataset_from_arrays(X, Y, cfg.task_kinds, impute=self.impute, skip_unusable=bool(self.skip_unusable_tasks))
        if cfg.groups is not None and not 1 <= cfg.groups <= len(ds.tasks):
            raise InputError(f"--groups {cfg.groups} is outside 1..{len(ds.tasks)} (the number of tasks)")
        cfg.check_device()
        cfg.check_trunk(ds.input_shape or (ds.features.shape[1],))
        run_id = "api-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        st = Store(root)
        from taskgrouping.data.dataset import prepare

        key = store_prepared(st, prepare(ds, cfg.seed, cfg.samples), cfg.samples)
        stage, _, _ = make_run(cfg, run_id, st, st.results_dir(), key, inline=True)
        seconds["sample"] = time.perf_counter() - t0
        aff = AFFINITY_STAGES[cfg.method](stage)
        seconds["probe"], seconds["affinity"] = aff.probe_seconds, aff.affinity_seconds
        t0 = time.perf_counter()
        sel = select_stage(stage, aff)
        seconds["select"] = time.perf_counter() - t0
        seconds["total"] = time.perf_counter() - t_start
        affinity = st.read_affinity(Path(aff.path))
        self.tasks_ = list(stage.names)
        self.features_ = list(ds.feature_names)
        self.warnings_ = [dict(w) for w in ds.warnings]
        self.neighbours_ = affinity if getattr(affinity, "sparse", False) else None
        if self.neighbours_ is None:
            order = positions(affinity.tasks, self.tasks_)
            self.affinity_ = affinity.values[np.ix_(order, order)]
        else:  # no T x T matrix past the sparse threshold
            self.affinity_ = None
        self.affinity_kind_ = affinity.kind
        self.groups_ = sel["groups"]
        self.served_ = sel["served"]
        self.selection_ = sel["info"]
        self.counts_ = {"probes_computed": aff.probes_computed, "probes_reused": len(stage.names) - aff.probes_computed,
                        "pairs_computed": aff.pairs_computed, "pairs_reused": aff.pairs_total - aff.pairs_computed,
                        "groups_trained": 0, "groups_reused": 0}
        self.seconds_ = {k: round(v, 3) for k, v in seconds.items()}
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "affinity_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this TaskGrouper is not fitted yet: call fit(X, Y) first")

    def affinity_frame(self) -> Any:
        """The affinity in long form (``task_a, task_b, value, kind``) as a polars DataFrame."""
        import polars as pl

        self._check_fitted()
        if self.neighbours_ is not None:
            return pl.from_arrow(self.neighbours_.to_table().cast(_neighbour_schema()))
        t = len(self.tasks_)
        a, b = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
        return pl.DataFrame({"task_a": [self.tasks_[i] for i in a.ravel()], "task_b": [self.tasks_[j] for j in b.ravel()],
                             "value": self.affinity_.ravel(), "kind": [self.affinity_kind_] * (t * t)})

    def plot_affinity(self, ax: Any = None, colorbar: bool = True) -> Any:
        """Draw the report's heatmap (ordered by group, off-diagonal colour scale, a colour bar) on ``ax``; return ``ax``."""
        import matplotlib.pyplot as plt

        from taskgrouping.methods.base import AffinityMatrix
        from taskgrouping.report import colour_limits, serving_order

        self._check_fitted()
        if self.affinity_ is None:
            raise ValueError(f"the affinity of these {len(self.tasks_)} tasks is sparse (each task's nearest "
                             "partners): draw affinity_frame(), or read the run's heatmap.png")
        aff = AffinityMatrix(self.tasks_, self.affinity_, self.affinity_kind_)
        order, bounds = serving_order(aff, self.groups_, self.served_)
        idx = positions(self.tasks_, order)
        m = self.affinity_[np.ix_(idx, idx)]
        ax = ax or plt.gca()
        vmin, vmax = colour_limits(m, self.affinity_kind_)
        image = ax.imshow(m, cmap="viridis_r" if self.affinity_kind_ == "distance" else "viridis", vmin=vmin,
                          vmax=vmax)
        if colorbar:
            ax.figure.colorbar(image, ax=ax, label=f"{self.method} {self.affinity_kind_}", fraction=0.046, pad=0.04)
        ax.set_xticks(range(len(order)), labels=order, rotation=90, fontsize=7)
        ax.set_yticks(range(len(order)), labels=order, fontsize=7)
        for pos in bounds:
            ax.axhline(pos - 0.5, color="red", lw=1)
            ax.axvline(pos - 0.5, color="red", lw=1)
        return ax


def select(matrix: Any, n_groups: int | None = None, tasks: Sequence[str] | None = None, selector: str = "network",
           kind: str = "gain", overlap: bool | None = None, max_group_size: int | None = None,
           max_group_cost: float | None = None, task_costs: Mapping[str, float] | None = None,
           random_state: int = 0) -> dict[str, Any]:
    """Groups from a matrix you already have: ``taskgrouping select --json`` in Python.

    Parameters
    ----------
    matrix : ndarray (T, T) with ``tasks``, or a polars/pandas frame (square with a first column of task
        names, or long form ``task_a, task_b, value``). Row = receiver, column = source.
    n_groups : int or None (auto)
    kind : {"gain", "distance"}

    Returns
    -------
    dict with ``groups``, ``served``, ``objective``, ``selector``, ``kind``, ``exact`` and ``seconds``.
    """
    from taskgrouping.methods.base import AffinityMatrix
    from taskgrouping.selectors import SelectSettings, get_selector, select_groups

    get_selector(selector)
    if kind not in ("gain", "distance"):
        raise InputError(f"kind must be 'gain' or 'distance', got {kind!r}")
    names, values = _matrix(matrix, tasks)
    if n_groups is not None and not 1 <= n_groups <= len(names):
        raise InputError(f"--groups {n_groups} is outside 1..{len(names)} (the number of tasks in the matrix)")
    unknown = [t for t in (task_costs or {}) if t not in names]
    if unknown:
        raise InputError(f"task_costs: task {unknown[0]!r} is not in the affinity matrix")
    settings = SelectSettings(overlap=overlap, max_group_size=max_group_size, max_group_cost=max_group_cost,
                              task_costs=tuple((str(k), float(v)) for k, v in (task_costs or {}).items()))
    return select_groups(AffinityMatrix(names, values, kind), n_groups, selector, settings,  # type: ignore[arg-type]
                         random_state)


def _matrix(matrix: Any, tasks: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    import polars as pl

    if type(matrix).__module__.startswith("pandas"):
        matrix = pl.from_pandas(matrix.reset_index() if matrix.index.name else matrix)
    if isinstance(matrix, pl.DataFrame):
        if {"task_a", "task_b", "value"} <= set(matrix.columns):
            names = list(dict.fromkeys(matrix["task_a"].to_list() + matrix["task_b"].to_list()))
            pos = {t: i for i, t in enumerate(names)}
            values = np.zeros((len(names), len(names)))
            for a, b, v in matrix.select("task_a", "task_b", "value").iter_rows():
                values[pos[a], pos[b]] = v
            return names, values
        names = [str(v) for v in matrix[:, 0].to_list()]
        values = matrix[:, 1:].to_numpy().astype(np.float64)
    else:
        values = np.asarray(matrix, dtype=np.float64)
        if tasks is None:
            raise InputError("select: pass tasks=[names] with a numpy matrix")
        names = [str(t) for t in tasks]
    if values.shape != (len(names), len(names)):
        raise InputError(f"select: the matrix is {values.shape[0]}x{values.shape[1]} for {len(names)} tasks")
    if not np.isfinite(values).all():
        raise InputError("select: the matrix has NaN or inf values")
    return names, values


def swola_affinity(X: Any, Y: Any, trunk: Any = None, checkpoint: str | None = None, n_samples: int = 512,
                   sketch: str = "auto", random_state: int = 0, device: str = "cpu",
                   normalise: str = "task", head: str = "fitted", hidden: int = 64) -> tuple[list[str], np.ndarray]:
    """SWOLA's distance matrix on its own (no store, no selection): for a matrix inside a training loop.

    Parameters
    ----------
    X, Y : as for :meth:`TaskGrouper.fit`.
    trunk, checkpoint, sketch, head, normalise, hidden : as for :class:`TaskGrouper`.

    Returns
    -------
    tasks : list of str
    distances : ndarray (T, T), symmetric, zero diagonal, in ``tasks`` order

    Examples
    --------
    >>> from taskgrouping import swola_affinity
    >>> from taskgrouping.data.builtins import synthetic
    >>> ds = synthetic(tasks=4, groups=2, samples=300, seed=0)
    >>> tasks, d = swola_affinity(ds.features, {t: ds.labels[:, j] for j, t in enumerate(ds.task_names)},
    ...                           n_samples=128, hidden=16)
    >>> d.shape
    (4, 4)
    """
    from taskgrouping.data.dataset import prepare
    from taskgrouping.methods.swola import SwolaSettings
    from taskgrouping.methods.swola import swola_affinity as affinity
    from taskgrouping.resources import check_shared_samples

    try:
        settings = SwolaSettings(trunk=_trunk_name(trunk), checkpoint=checkpoint, sketch=sketch, head=head,  # type: ignore[arg-type]
                                 normalise=normalise, hidden=hidden)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if n_samples < 1:
        raise InputError(f"--samples must be a positive integer, got {n_samples}")
    ds = dataset_from_arrays(X, Y)
    check_shared_samples(ds, random_state, n_samples)
    data = prepare(ds, random_state, n_samples)
    rows = data.probe_idx
    aff = affinity(data.x[rows], data.y[rows], data.tasks, settings, random_state, device, data.shape)
    return list(aff.tasks), aff.values


@dataclass
class RunSummary:
    """The summary of one ``regroup`` run (:func:`run`); attributes are the keys of ``taskgrouping run --json``.

    ``to_dict()`` returns exactly what ``--json`` prints. Keys: ``run_id``, ``store``,
    ``method``, ``selector``, ``tasks``, ``groups``, ``served`` (task -> group index),
    ``artifacts`` (paths of the affinity, groups, metrics, report, heatmap), ``counts``,
    ``seconds``, ``metrics`` (total test loss per setting), and the additions documented
    in the README (``data``, ``seed``, ``settings``, ``features``, ``task_kinds``,
    ``models``, ``version``, ``changes``, ...), in ``extra`` when not a field here.
    """

    run_id: str
    store: str
    method: str
    selector: str
    tasks: list[str]
    groups: list[list[str]]
    served: dict[str, int]
    artifacts: dict[str, str]
    counts: dict[str, int]
    seconds: dict[str, float]
    metrics: dict[str, float | None]
    extra: dict[str, Any] = field(default_factory=dict)
    _raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        """Wrap a summary dict (``to_dict`` gives it back unchanged)."""
        import json

        d = json.loads(json.dumps(d))  # as --json prints it: tuples are lists
        own = {f.name for f in fields(cls)} - {"extra", "_raw"}
        return cls(**{k: d[k] for k in own}, extra={k: v for k, v in d.items() if k not in own}, _raw=dict(d))

    def __getattr__(self, name: str) -> Any:
        """The other summary keys as attributes (``summary.version``, ``summary.task_kinds``, ...)."""
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"RunSummary has no key {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The summary as ``--json`` prints it."""
        return dict(self._raw) if self._raw else {k: v for k, v in asdict(self).items() if k not in ("extra", "_raw")} | self.extra


def run(**options: Any) -> RunSummary:
    """The ``regroup`` flow as ``taskgrouping run`` runs it (Prefect, Dask, training, report).

    Options are the CLI's long options with underscores (``data``, ``tasks``, ``method``,
    ``groups``, ``samples``, ``store``, ``evaluate``, ``repeats``, ``trunk``, ...);
    ``groups`` takes an int or ``"auto"``. Bad input raises :class:`InputError` with the
    CLI's message.
    """
    return _command("run", options)


def evaluate(groups: Sequence[Sequence[str]], **options: Any) -> RunSummary:
    """``taskgrouping evaluate``: train and judge a grouping you already have beside the baselines.

    ``groups`` is a list of lists of task names; every other option is ``run``'s
    (``data``, ``repeats``, ``overlap``, ``store``, ...), without the selector ones.
    """
    import json

    if isinstance(groups, str) or not all(isinstance(g, list | tuple) for g in groups):
        raise InputError("evaluate: groups must be a list of lists of task names")
    with tempfile.TemporaryDirectory(prefix="taskgrouping-groups-") as tmp:
        path = Path(tmp) / "groups.json"
        path.write_text(json.dumps([[str(t) for t in g] for g in groups]))
        return _command("evaluate", options | {"groups_file": str(path)})


def _command(command: str, options: dict[str, Any]) -> RunSummary:
    """Parse ``options`` as the CLI's ``command`` would, run the flow, return its summary."""
    from taskgrouping.cli import build_parser, config_from_args, run_config
    from taskgrouping.mainguard import check_main_guard

    if not options.get("dask_address"):  # local workers import the calling script again
        check_main_guard(f"taskgrouping.{command}")

    parser = build_parser()
    argv = [command]
    for key, value in options.items():
        flag = "--groups" if key == "groups_file" else "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple) and key == "task_kind":
            for item in value:
                argv += [flag, str(item)]
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    sub: Any = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    known = {a.dest for a in sub.choices[command]._actions}
    unknown = [k for k in options if k not in known]
    if unknown:
        raise InputError(f"{command}: unknown option {unknown[0]!r}")
    import argparse

    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise InputError(f"{command}: invalid options {options}") from None
    assert isinstance(args, argparse.Namespace)
    return RunSummary.from_dict(run_config(config_from_args(args), verbose=False))
