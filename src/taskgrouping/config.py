"""The run configuration: one typed object that the CLI, the flow and the tests all build."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from taskgrouping.data.load import parse_task_kinds
from taskgrouping.errors import InputError
from taskgrouping.methods import check_method
from taskgrouping.methods.datamaps import DatamapSettings
from taskgrouping.methods.hoa import HoaSettings
from taskgrouping.methods.meta import MetaSettings, MetaTrainSettings
from taskgrouping.methods.principled import PrincipledSettings
from taskgrouping.methods.swola import SwolaSettings
from taskgrouping.methods.tag import TagSettings
from taskgrouping.models.train import TrainSettings
from taskgrouping.selectors import SelectSettings, get_selector


def check_store(store: str) -> None:
    """Refuse a store path that is a file, or lies under a file (exit 2 naming it, before anything starts)."""
    from pathlib import Path

    path = Path(store).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under {p}, which is a file"
                raise InputError(f"--store {store}: {what}, not a folder")
            return


TRAINING = ("joint", "meta")
"""``joint``: one multi-task model per group (and the baselines); ``meta``: one meta-initialisation per group,
evaluated on held-out tasks (:mod:`taskgrouping.methods.meta`)."""

EVALUATE = ("all", "grouped", "none")
"""``all``: the groups and the three baselines; ``grouped``: only the groups' models; ``none``: no training."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``regroup`` run needs. Flow parameters are this object's dict form.

    ``groups`` is ``None`` for automatic choice of the number of groups. ``task_kinds``
    are ``(pattern, kind)`` overrides of the inferred task kinds (``--task-kind``).
    ``lineage`` names the history of grouping versions (default: the data source).
    ``pairs`` (``auto``, ``dense``, ``sparse``): SWOLA's pairwise step over every pair, or
    each task's nearest partners (:mod:`taskgrouping.methods.sparse`).
    ``trunk``, ``checkpoint`` and ``sketch`` choose the trunk every probe and model uses
    (:mod:`taskgrouping.models.trunks`); they are copied, with the trunk's content hash,
    into the SWOLA and training settings. ``input_shape`` shapes the feature rows.
    ``images`` names a column of image files (``image_root``, ``image_size``: see
    :mod:`taskgrouping.data.images`).
    ``evaluate``
    says which models are trained after selection (:data:`EVALUATE`): with thousands of
    tasks the single-task baseline alone is thousands of trainings. ``repeats`` trains every
    evaluated setting that many times with derived seeds (intervals and the verdict).
    ``regroup``: ``incremental`` lets tasks added since the lineage's last version join
    their nearest groups unless drift says otherwise (:mod:`taskgrouping.selectors.incremental`);
    ``full`` always selects from scratch.
    ``given_groups`` replaces selection with a grouping the user already has
    (``taskgrouping evaluate``; the selector is then ``given``).
    ``training``: ``joint`` trains multi-task models; ``meta`` meta-trains one
    initialisation per group and evaluates it on ``held_out_tasks`` (names or globs kept
    out of the grouping; ``builtin:mmaml`` declares its own).
    ``impute`` (``none``, ``median``, ``mean``) fills missing feature values;
    ``skip_unusable_tasks`` leaves out task columns whose labels cannot be used, with a
    warning (:func:`~taskgrouping.data.load.load_dataset`).
    """

    data: str = "builtin:digits"
    tasks: str | None = None
    features: str | None = None
    task_kinds: tuple[tuple[str, str], ...] = ()
    impute: str = "none"
    skip_unusable_tasks: bool = False
    lineage: str | None = None
    input_shape: tuple[int, ...] | None = None
    trunk: str = "auto"
    checkpoint: str | None = None
    sketch: str = "auto"
    pairs: str = "auto"
    images: str | None = None
    image_root: str | None = None
    image_size: tuple[int, int] | None = None
    method: str = "swola"
    selector: str = "graph"
    groups: int | None = None
    samples: int = 512
    seed: int = 0
    store: str = "./taskgrouping-store"
    workers: int = 2
    dask_address: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    evaluate: Literal["all", "grouped", "none"] = "all"
    repeats: int = 1
    regroup: Literal["full", "incremental"] = "incremental"
    given_groups: tuple[tuple[str, ...], ...] | None = None
    training: Literal["joint", "meta"] = "joint"
    held_out_tasks: str | None = None
    swola: SwolaSettings = field(default_factory=SwolaSettings)
    meta: MetaSettings = field(default_factory=MetaSettings)
    meta_train: MetaTrainSettings = field(default_factory=MetaTrainSettings)
    tag: TagSettings = field(default_factory=TagSettings)
    principled: PrincipledSettings = field(default_factory=PrincipledSettings)
    datamaps: DatamapSettings = field(default_factory=DatamapSettings)
    hoa: HoaSettings = field(default_factory=HoaSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        """Check what can be checked without the data."""
        check_method(self.method)
        if self.given_groups is not None:
            object.__setattr__(self, "given_groups", tuple(tuple(str(t) for t in g) for g in self.given_groups))
            object.__setattr__(self, "selector", "given")
        else:
            get_selector(self.selector, self.select)
        if self.regroup not in ("full", "incremental"):
            raise InputError(f"--regroup must be 'full' or 'incremental', got {self.regroup!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise InputError(f"--repeats must be a positive integer, got {self.repeats!r}")
        if self.hoa.exhaustive and (self.method != "hoa" or self.selector != "network"):
            raise InputError("--exhaustive trains every subset and selects exactly on the measured losses: "
                             "use it with --method hoa --selector network")
        if self.datamaps.weighted and self.method != "datamaps":
            raise InputError("--membership-weighted applies to --method datamaps only")
        if self.samples <= 0:
            raise InputError(f"--samples must be a positive integer, got {self.samples}")
        if self.groups is not None and self.groups < 1:
            raise InputError(f"--groups must be at least 1 or 'auto', got {self.groups}")
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.evaluate not in EVALUATE:
            raise InputError(f"--evaluate must be one of {', '.join(EVALUATE)}, got {self.evaluate!r}")
        if self.training not in TRAINING:
            raise InputError(f"--training must be one of {', '.join(TRAINING)}, got {self.training!r}")
        if self.held_out_tasks is not None and not self.held_out_tasks.strip():
            raise InputError("--held-out-tasks is empty")
        if self.held_out_tasks is not None and self.training != "meta":
            raise InputError("--held-out-tasks names the tasks meta-learning is evaluated on: use it with "
                             "--training meta")
        if self.pairs not in ("auto", "dense", "sparse"):
            raise InputError(f"--pairs must be auto, dense or sparse, got {self.pairs!r}")
        if self.pairs == "sparse" and (self.method != "swola" or self.selector not in ("graph", "given")):
            raise InputError(f"--pairs sparse keeps each task's nearest partners only: it needs --method swola and "
                             f"--selector graph (got --method {self.method} --selector {self.selector})")
        from taskgrouping.data.load import IMPUTE

        if self.impute not in IMPUTE:
            raise InputError(f"--impute must be one of {', '.join(IMPUTE)}, got {self.impute!r}")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"--device must be 'cpu' or 'cuda', got {self.device!r}")
        object.__setattr__(self, "task_kinds", parse_task_kinds([f"{p}={k}" for p, k in self.task_kinds]))
        if self.images is None and (self.image_root is not None or self.image_size is not None):
            raise InputError("--image-root and --image-size apply with --images COLUMN")
        if self.images is not None and (self.features is not None or self.input_shape is not None):
            raise InputError("--images is the input: leave out --features and --input-shape")
        self._set_trunk()
        if self.lineage is not None and not self.lineage.strip():
            raise InputError("--lineage must not be empty")
        check_store(self.store)

    @property
    def grouped_tasks(self) -> str | None:
        """``--tasks`` less the held-out tasks (each ``--held-out-tasks`` item as a ``!`` exclusion)."""
        if self.held_out_tasks is None or self.data.startswith("builtin:"):
            return self.tasks  # a built-in drops its own held-out tasks (and names given are resolved there)
        out = [i.strip() for i in self.held_out_tasks.split(",") if i.strip()]
        return ",".join(([self.tasks] if self.tasks else []) + [f"!{i}" for i in out])

    def _set_trunk(self) -> None:
        """Copy the trunk choice and its content hash into the SWOLA and training settings."""
        from dataclasses import replace

        from taskgrouping.models.trunks import trunk_fingerprint

        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        try:
            swola = replace(self.swola, trunk=self.trunk, checkpoint=self.checkpoint, sketch=self.sketch)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        custom = self.trunk not in ("auto", "mlp") or self.checkpoint is not None
        fp = trunk_fingerprint(self.trunk, self.checkpoint) if custom else ""
        if custom and self.method == "swola" and self.swola.trunks != 1:
            raise InputError("--trunks averages seeded MLP trunks; with --trunk or --checkpoint use --trunks 1")
        object.__setattr__(self, "swola", replace(swola, trunk_fp=fp))
        object.__setattr__(self, "meta", replace(self.meta, trunk=self.trunk, checkpoint=self.checkpoint,
                                                 trunk_fp=fp))
        object.__setattr__(self, "train", replace(self.train, trunk=self.trunk, checkpoint=self.checkpoint,
                                                  trunk_fp=fp))

    def check_trunk(self, input_shape: tuple[int, ...]) -> int:
        """Build the trunk for ``input_shape`` and run it once (bad factories and checkpoints fail here); F."""
        from taskgrouping.models.trunks import build_any_trunk, feature_width

        trunk = build_any_trunk(self.trunk, input_shape, self.train.hidden, self.train.layers, self.seed,
                                self.checkpoint)
        return feature_width(trunk, input_shape, self.trunk)

    def image_spec(self) -> Any:
        """The :class:`~taskgrouping.data.images.ImageSpec` of ``--images``, or None."""
        from taskgrouping.data.images import ImageSpec

        if self.images is None:
            return None
        return ImageSpec(self.images, self.image_root,
                         None if self.image_size is None else (int(self.image_size[0]), int(self.image_size[1])))

    def check_device(self) -> None:
        """Refuse ``cuda`` where torch sees no CUDA device (before anything starts)."""
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InputError("--device cuda: torch sees no CUDA device on this machine "
                                 f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                                 "use --device cpu")

    def check_data(self) -> int:
        """Load and validate the data against this configuration; returns the task count.

        Called before anything starts or is written (the CLI and the scheduled flow).
        """
        from taskgrouping.data.load import load_dataset
        from taskgrouping.methods.hoa import check_exhaustive

        self.check_device()
        if self.training == "meta":  # first: a bad --held-out-tasks is named as such
            from taskgrouping.data.load import load_held_out

            held = load_held_out(self.data, self.held_out_tasks, self.features, self.task_kinds, self.input_shape)
        ds = load_dataset(self.data, self.grouped_tasks, self.features, self.task_kinds, self.input_shape,
                          self.image_spec(), decode=False, keep=True, impute=self.impute,
                          skip_unusable=self.skip_unusable_tasks)  # the run's sample step takes it
        shape = tuple(ds.input_shape) if ds.input_shape is not None else (ds.features.shape[1],)
        self.check_trunk(shape)
        n_tasks = len(ds.tasks)
        if self.given_groups is not None:
            from taskgrouping.selectors.given import check_given

            check_given(self.given_groups, ds.task_names, overlap=self.select.overlap is True)
        if self.groups is not None and not 1 <= self.groups <= n_tasks:
            raise InputError(f"--groups {self.groups} is outside 1..{n_tasks} (the number of tasks)")
        unknown = [t for t, _ in self.select.task_costs if t not in ds.task_names]
        if unknown:
            raise InputError(f"--task-costs: task {unknown[0]!r} is not a task of {self.data}")
        if self.hoa.exhaustive:
            check_exhaustive(n_tasks)
        if self.training == "meta":
            kinds = sorted({(t.kind, t.out_dim) for t in [*ds.tasks, *held.tasks]})
            if len(kinds) != 1:
                raise InputError("--training meta adapts one model to every task: the tasks and held-out tasks "
                                 f"must be of one kind and width, got {kinds}")

        if self.method == "swola":
            from taskgrouping.methods.probe_engine import sketch_width
            from taskgrouping.models.trunks import build_any_trunk, resolve_trunk_name
            from taskgrouping.resources import check_swola_fits

            n = min(self.samples, ds.features.shape[0])
            width = None
            if resolve_trunk_name(self.trunk, shape) != "mlp" or self.checkpoint is not None:
                p = sum(v.numel() for v in build_any_trunk(self.trunk, shape, self.train.hidden, self.train.layers,
                                                           self.seed, self.checkpoint).parameters() if v.requires_grad)
                width = sketch_width(self.sketch, n, p) or p
            import numpy as np

            from taskgrouping.methods.sparse import use_sparse

            check_swola_fits(n_tasks, n, self.swola, width=width,
                             sparse=use_sparse(self.pairs, n_tasks, self.selector),
                             masked=bool(ds.labels.size) and bool(np.isnan(ds.labels).any()))
        return n_tasks

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the flow's parameters)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["task_kinds"] = tuple((str(p), str(k)) for p, k in d.get("task_kinds", ()))
        for key in ("input_shape", "image_size"):
            if d.get(key) is not None:
                d[key] = tuple(int(s) for s in d[key])
        select = SelectSettings.from_dict(d.pop("select", {}))
        swola = dict(d.pop("swola", {}))
        if "head_cs" in swola:
            swola["head_cs"] = tuple(swola["head_cs"])
        tag, datamaps = TagSettings(**d.pop("tag", {})), DatamapSettings(**d.pop("datamaps", {}))
        hoa, train = HoaSettings(**d.pop("hoa", {})), TrainSettings(**d.pop("train", {}))
        principled = PrincipledSettings(**d.pop("principled", {}))
        meta, meta_train = MetaSettings(**d.pop("meta", {})), MetaTrainSettings.from_dict(d.pop("meta_train", {}))
        return cls(**d, swola=SwolaSettings(**swola), tag=tag, datamaps=datamaps, hoa=hoa, principled=principled,
                   select=select, train=train, meta=meta, meta_train=meta_train)
