"""Command line: ``taskgrouping run`` (the regroup flow) and ``taskgrouping select`` (groups from a matrix).

Exit status: 0 success; 2 bad input or arguments (one line on stderr naming the file,
column or value); 1 an internal failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from taskgrouping import __version__
from taskgrouping.errors import InputError


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --trunk must not silently mean --trunks
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse's own errors are bad arguments: exit 2, one line
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except empty ones (None, off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _groups(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--groups must be an integer or 'auto', got {value!r}") from None


def _absolute_factory(trunk: str) -> str:
    """``PATH.py:FUNCTION`` with PATH made absolute (workers and schedules run elsewhere)."""
    target, sep, func = trunk.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{func}"
    return trunk


def _shape(value: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape must be sizes like 3,32,32, got {value!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"--input-shape sizes must be positive, got {value!r}")
    return shape


def _size(value: str) -> tuple[int, int]:
    shape = _shape(value.replace("x", ","))
    if len(shape) != 2:
        raise argparse.ArgumentTypeError(f"--image-size must be H,W, got {value!r}")
    return (shape[0], shape[1])


def _repeats(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return n


def _add_run_options(parser: argparse.ArgumentParser, given: bool = False) -> None:
    """The options ``run``, ``serve`` and ``evaluate`` share: what to group, how, and where to keep it.

    With ``given`` (``evaluate``) the grouping comes from ``--groups FILE``: no selector options.
    """
    parser.add_argument("--data", default="builtin:digits", help="Parquet/CSV file or builtin:NAME")
    parser.add_argument("--tasks", default=None,
                        help="comma list or globs of label columns, !NAME or !GLOB leaves some out "
                             "('y_*,!y_coin'); all columns named y_* when not given")
    parser.add_argument("--features", default=None,
                        help="comma list or globs of feature columns; every other numeric column that is not "
                             "a label (y_* or named by --tasks) when not given. A label column is a feature "
                             "only when named here exactly")
    parser.add_argument("--task-kind", action="append", default=None, metavar="NAME=KIND", dest="task_kind",
                        help="binary, multiclass or regression for the tasks NAME (a name or glob) matches, "
                             "instead of the inferred kind; repeatable")
    parser.add_argument("--impute", default="none", choices=["none", "median", "mean"],
                        help="missing feature values: an error naming the column (none), or filled with the "
                             "column's median or mean (a warning in the report; exported models fill the same)")
    parser.add_argument("--skip-unusable-tasks", action="store_true", dest="skip_unusable_tasks",
                        help="leave out, with a warning, task columns whose labels cannot be used (too few values, "
                             "classes or labelled rows) instead of stopping")
    parser.add_argument("--method", default="swola",
                        help="affinity method: swola, swola-meta (tasks that share no samples: each task probed on "
                             "its own samples), tag, datamaps, hoa, principled")
    parser.add_argument("--meta-probe", default="signature",
                        help="swola-meta's probe: the sample-wise convergence signature (default), per-sample "
                             "gradients at theta0, or TSA-style adapted parameters")
    parser.add_argument("--training", default="joint",
                        help="joint: one multi-task model per group (and the baselines); meta: one first-order "
                             "MAML initialisation per group, evaluated K-shot on held-out tasks")
    parser.add_argument("--held-out-tasks", default=None, metavar="NAMES",
                        help="with --training meta: comma list or globs of label columns kept out of the grouping "
                             "and used as unseen tasks (builtin:mmaml has its own)")
    parser.add_argument("--meta-outer-steps", type=int, default=1000, metavar="N",
                        help="with --training meta: outer (Adam) steps of each initialisation")
    if given:
        parser.add_argument("--groups", required=True, metavar="FILE", dest="groups_file",
                            help="the grouping to evaluate: JSON list of lists of task names, or CSV with columns "
                                 "task, group")
        parser.add_argument("--overlap", action="store_true",
                            help="allow a task in several groups (served by the first, a helper in the others)")
    else:
        parser.add_argument("--selector", default="graph",
                            help="group selector: graph (the kNN task graph and its communities), spectral, gat, network, mip")
        parser.add_argument("--groups", type=_groups, default="auto", help="number of groups, or auto")
        parser.add_argument("--regroup", default="incremental", choices=["incremental", "full"],
                            help="incremental: tasks added since the last version join their nearest groups, "
                                 "unless drift (many new tasks, a task that fits no group, a changed affinity) "
                                 "calls for a full selection; full: always select from scratch")
    parser.add_argument("--samples", type=int, default=512, help="probe samples")
    parser.add_argument("--seed", type=int, default=0, help="every random choice derives from it")
    parser.add_argument("--store", default="./taskgrouping-store", help="where everything is kept")
    parser.add_argument("--lineage", default=None, metavar="NAME",
                        help="the name of this grouping's history of versions (default: the data source)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers")
    parser.add_argument("--dask-address", default=None, help="an existing Dask scheduler")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where probes and training run")
    parser.add_argument("--evaluate", default="all",
                        help="models trained after selection: the groups and the three baselines (all), "
                             "only the groups (grouped), or none")
    parser.add_argument("--repeats", type=_repeats, default=1, metavar="R",
                        help="train every evaluated setting R times (derived seeds, the grouping fixed): "
                             "means and 95%% intervals, and the verdict from them")
    parser.add_argument("--trunk", default="auto", metavar="NAME",
                        help="the trunk every probe and model uses: auto (mlp for vectors, cnn for images), mlp, "
                             "cnn, resnet, PATH.py:FUNCTION or package.module:FUNCTION (FUNCTION(input_shape) "
                             "returns an nn.Module mapping (N, *input_shape) to (N, F))")
    parser.add_argument("--checkpoint", default=None, metavar="FILE",
                        help="trunk state dict (.safetensors, or a torch file read with weights_only=True): "
                             "theta0 of every probe and the start of every trained model")
    parser.add_argument("--sketch", default="auto", metavar="auto|none|K",
                        help="SWOLA on a trunk other than mlp: exact per-sample gradients while they fit "
                             "(auto), always exact (none), or a Cauchy sketch of width K")
    parser.add_argument("--pairs", default="auto", choices=["auto", "dense", "sparse"],
                        help="SWOLA's pairwise step: every pair (dense), or each task's nearest partners found "
                             "from sketches with exact distances for them (sparse); auto: dense below 1,000 "
                             "tasks, sparse from 1,000 on with the graph selector")
    parser.add_argument("--input-shape", default=None, type=_shape, metavar="C,H,W",
                        help="the shape of one input: the feature values of a row, in order (e.g. a "
                             "fixed-size list column of images)")
    parser.add_argument("--images", default=None, metavar="COLUMN",
                        help="the column of the table naming image files: decoded with Pillow to RGB in [0, 1], "
                             "the input of every probe and model (every other column is a task unless --tasks)")
    parser.add_argument("--image-root", default=None, metavar="DIR",
                        help="folder relative image paths resolve against (default: the table's folder)")
    parser.add_argument("--image-size", default=None, type=_size, metavar="H,W",
                        help="resize every image to H,W (default: the first image's size; others must match)")
    parser.add_argument("--head", default="fitted", choices=["fitted", "shared"], help="SWOLA head mode")
    parser.add_argument("--head-fit", default="joint", choices=["joint", "per-task"],
                        help="fitted heads: one C for every task from a shared CV, fitted in one batched solve "
                             "(joint, default), or scikit-learn's CV per task (per-task)")
    parser.add_argument("--normalise", default="task", choices=["none", "task", "sample"],
                        help="SWOLA gradient normalisation")
    parser.add_argument("--trunks", type=int, default=1, help="SWOLA trunks averaged over")
    parser.add_argument("--hidden", type=int, default=64, help="trunk width (probe and models)")
    parser.add_argument("--max-epochs", type=int, default=200, help="training epochs at most (early stopping)")
    if not given:
        parser.add_argument("--no-overlap", action="store_true", help="network/mip: every task in exactly one group")
        parser.add_argument("--objective", default="network", choices=["network", "wang"],
                            help="mip: network (each task's served score) or wang (Wang et al.: exactly B groups, size-normalised within-group gain)")
        parser.add_argument("--max-group-size", type=int, default=None, metavar="S",
                            help="network/mip: at most S tasks per group")
        parser.add_argument("--max-group-cost", type=float, default=None, metavar="C",
                            help="mip/network: per-group cost budget (a group costs the sum of its tasks' costs)")
        parser.add_argument("--task-costs", default=None, metavar="FILE",
                            help="CSV with columns task, cost (default 1 each)")
    parser.add_argument("--tag-every", type=int, default=10, help="TAG: measure the lookahead every this many steps")
    parser.add_argument("--principled-every", type=int, default=10,
                        help="principled: measure the transfer gains every this many steps")
    parser.add_argument("--principled-optimizer", default="sgd", choices=["sgd", "adam"],
                        help="principled: the collection training's and lookahead's optimiser (sgd: momentum 0.9, as "
                             "the paper's code; adam: the models' Adam)")
    parser.add_argument("--principled-control", default="single", choices=["single", "doubled"],
                        help="principled: the pair step {i, j} is compared with j's own step {j} or the doubled {j, j}")
    parser.add_argument("--membership-weighted", action="store_true",
                        help="datamaps: train each group on every task, losses weighted by fuzzy membership")
    if not given:
        parser.add_argument("--exhaustive", action="store_true",
                            help="hoa: train every subset (at most 6 tasks) and select exactly on measured losses")
    parser.add_argument("--verbose", action="store_true", help="show Prefect and Dask logs")


def build_parser() -> argparse.ArgumentParser:
    """The ``taskgrouping`` argument parser."""
    parser = _Parser(prog="taskgrouping", description="Decide which ML tasks to train together.")
    parser.add_argument("--version", action="version", version=f"taskgrouping {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="sample, probe, affinity, select, train per group, report",
                         description="Run the regroup flow: sample -> probe every task -> affinity -> "
                                     "select groups -> train one model per group (+ baselines) -> report.",
                         formatter_class=_Help)
    _add_run_options(run)
    run.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")

    srv = sub.add_parser("serve", help="serve the regroup flow on a cron schedule in this process",
                         description="Serve the regroup-scheduled flow on a cron schedule in this one process "
                                     "(no work pool needed). Starts a local Prefect server with the UI unless "
                                     "PREFECT_API_URL is set. Ctrl-C, SIGINT or SIGTERM stops it.",
                         formatter_class=_Help)
    srv.add_argument("--cron", default="0 3 * * 1", help="when to run (cron, UTC)")
    srv.add_argument("--name", default="taskgrouping-serve", help="the deployment's name")
    _add_run_options(srv)
    ev = sub.add_parser("evaluate", help="train and report a grouping you already have beside the baselines",
                        description="Evaluate a given grouping: the same splits, repeats, baselines (one model for "
                                    "all tasks, one per task, random groups of the same sizes) and verdict as "
                                    "`run`, with the groups read from --groups FILE instead of selected. The "
                                    "affinity (--method) is still measured, for the report's heatmap.",
                        formatter_class=_Help)
    _add_run_options(ev, given=True)
    ev.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    sel = sub.add_parser("select", help="groups from a given affinity matrix, no training",
                         description="Choose groups from an affinity or pair-gain matrix measured elsewhere. "
                                     "FILE: Parquet long form (task_a, task_b, value[, kind]) or a CSV square "
                                     "matrix (row = receiver, column = source, diagonal = the task alone).",
                         formatter_class=_Help)
    sel.add_argument("--affinity", required=True, metavar="FILE", help="the matrix (.parquet or .csv)")
    sel.add_argument("--groups", type=_groups, default="auto", help="at most this many groups (B), or auto")
    sel.add_argument("--selector", default="network", help="network, mip, graph, spectral or gat")
    sel.add_argument("--kind", default=None, choices=["gain", "distance"],
                     help="what the values mean; default the file's kind column, else gain")
    sel.add_argument("--no-overlap", action="store_true", help="every task in exactly one group (network allows helpers)")
    sel.add_argument("--objective", default="network", choices=["network", "wang"], help="mip: network (each task's served score) or wang (Wang et al.: exactly B groups, size-normalised within-group gain)")
    sel.add_argument("--max-group-size", type=int, default=None, metavar="S", help="at most S tasks per group")
    sel.add_argument("--max-group-cost", type=float, default=None, metavar="C",
                     help="per-group cost budget (a group costs the sum of its tasks' costs)")
    sel.add_argument("--task-costs", default=None, metavar="FILE",
                     help="CSV with columns task, cost (tasks not listed cost 1)")
    sel.add_argument("--seed", type=int, default=0, help="seed of randomised selectors")
    sel.add_argument("--json", action="store_true", help="print {groups, served, objective} as JSON")

    exp = sub.add_parser("export", help="write a run's models (the recommended setting) for use outside the tool",
                         description="Write one folder per model of a run's setting: safetensors weights, model.json "
                                     "(setting, trunk, feature columns and scaling, tasks and kinds), a README, and "
                                     "a file factory trunk's source; export.json says which folder serves which task. "
                                     "Load one with taskgrouping.load_group_model(FOLDER).",
                         formatter_class=_Help)
    exp.add_argument("--run", required=True, metavar="ID", help="the run id (runs/<ID>/ in the store)")
    exp.add_argument("--store", default="./taskgrouping-store", help="the store folder")
    exp.add_argument("--out", required=True, metavar="DIR", help="a new folder for the export")
    exp.add_argument("--setting", default="recommended",
                     choices=["recommended", "grouped", "all_together", "single_task"],
                     help="which models: the run's recommendation, one per group (group-<i>/), one for all tasks "
                          "(all-together/) or one per task (task-<name>/)")

    his = sub.add_parser("history", help="the store's groupings: every lineage, its versions and what changed",
                         description="List every lineage (a grouping's history) of a store with its readable name, "
                                     "and each version's date, run, task and group counts and changes.",
                         formatter_class=_Help)
    his.add_argument("--store", default="./taskgrouping-store", help="the store folder")
    his.add_argument("--lineage", default=None, metavar="NAME",
                     help="only this lineage: its --lineage name, its data (path or file name), or its key")
    his.add_argument("--json", action="store_true", help="print [{lineage, name, data, method, selector, "
                                                         "versions: [...]}] as JSON")

    ver = sub.add_parser("verify", help="check every store file against its recorded checksum",
                         description="Check every file of a store against the SHA-256 recorded when it was "
                                     "written. Prints one line per damaged file; exit status 2 if any.",
                         formatter_class=_Help)
    ver.add_argument("--store", default="./taskgrouping-store", help="the store folder")
    ver.add_argument("--json", action="store_true", help="print {checked, damaged: [{path, problem}]} as JSON")
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    """Build the :class:`RunConfig` (validation of everything that needs no data)."""
    from taskgrouping.config import RunConfig
    from taskgrouping.methods.datamaps import DatamapSettings
    from taskgrouping.methods.hoa import HoaSettings
    from taskgrouping.methods.meta import MetaSettings, MetaTrainSettings
    from taskgrouping.methods.principled import PrincipledSettings
    from taskgrouping.methods.swola import SwolaSettings
    from taskgrouping.methods.tag import TagSettings
    from taskgrouping.models.train import TrainSettings
    from taskgrouping.selectors import SelectSettings

    if args.trunks < 1:
        raise InputError(f"--trunks must be at least 1, got {args.trunks}")
    if args.hidden < 1:
        raise InputError(f"--hidden must be at least 1, got {args.hidden}")
    if args.max_epochs < 1:
        raise InputError(f"--max-epochs must be at least 1, got {args.max_epochs}")
    if args.tag_every < 1:
        raise InputError(f"--tag-every must be at least 1, got {args.tag_every}")
    if args.meta_outer_steps < 1:
        raise InputError(f"--meta-outer-steps must be at least 1, got {args.meta_outer_steps}")
    try:
        meta = MetaSettings(probe=args.meta_probe)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.principled_every < 1:
        raise InputError(f"--principled-every must be at least 1, got {args.principled_every}")
    if getattr(args, "objective", "network") == "wang" and getattr(args, "selector", "mip") != "mip":
        raise InputError(f"--objective wang is a mip objective; --selector {args.selector} does not take it")
    from taskgrouping.config import check_store
    from taskgrouping.data.load import parse_task_kinds

    check_store(args.store)  # named as the user wrote it
    given = None
    if getattr(args, "groups_file", None) is not None:
        from taskgrouping.selectors.given import read_groups_file

        given = read_groups_file(args.groups_file)
    data = args.data
    if not data.startswith("builtin:"):
        data = str(Path(data).expanduser().resolve())
    return RunConfig(
        data=data, tasks=args.tasks, features=args.features, task_kinds=parse_task_kinds(args.task_kind),
        impute=args.impute, skip_unusable_tasks=args.skip_unusable_tasks,
        lineage=args.lineage, method=args.method, selector=getattr(args, "selector", "graph"),
        input_shape=args.input_shape, given_groups=None if given is None else tuple(tuple(g) for g in given),
        trunk=_absolute_factory(args.trunk), checkpoint=None if args.checkpoint is None else str(Path(args.checkpoint).expanduser().resolve()),
        sketch=args.sketch, pairs=args.pairs, images=args.images, image_size=args.image_size,
        image_root=None if args.image_root is None else str(Path(args.image_root).expanduser().resolve()),
        groups=getattr(args, "groups", None), samples=args.samples, seed=args.seed, repeats=args.repeats,
        regroup=getattr(args, "regroup", "incremental"),
        store=str(Path(args.store).expanduser().resolve()), workers=args.workers,
        dask_address=args.dask_address, device=args.device, evaluate=args.evaluate,
        training=args.training, held_out_tasks=args.held_out_tasks,
        meta=meta,
        meta_train=MetaTrainSettings(outer_steps=args.meta_outer_steps),
        swola=SwolaSettings(head=args.head, normalise=args.normalise, trunks=args.trunks, hidden=args.hidden,
                            head_fit=args.head_fit),
        train=TrainSettings(hidden=args.hidden, max_epochs=args.max_epochs),
        tag=TagSettings(every=args.tag_every),
        principled=PrincipledSettings(every=args.principled_every, optimizer=args.principled_optimizer,
                                      control=args.principled_control),
        datamaps=DatamapSettings(weighted=args.membership_weighted),
        hoa=HoaSettings(exhaustive=getattr(args, "exhaustive", False)),
        select=SelectSettings(overlap=True if getattr(args, "overlap", False) else
                              False if getattr(args, "no_overlap", False) else None,
                              max_group_size=getattr(args, "max_group_size", None),
                              max_group_cost=getattr(args, "max_group_cost", None),
                              task_costs=_task_costs(getattr(args, "task_costs", None), None),
                              objective=getattr(args, "objective", "network")),
    )


def preflight(cfg: Any) -> int:
    """Load and validate the data (and a fault-injection setting) before anything starts or is written.

    Returns the task count.
    """
    from taskgrouping import faults

    if os.environ.get(faults.ENV):
        try:
            faults.parse(os.environ[faults.ENV])
        except ValueError as exc:
            raise InputError(str(exc)) from None
    return int(cfg.check_data())


def _quiet_logs(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[taskgrouping] %(message)s"))
    tg = logging.getLogger("taskgrouping")
    tg.handlers[:] = [handler]
    tg.setLevel(logging.INFO)
    tg.propagate = False
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        for name in ("distributed", "prefect"):
            logging.getLogger(name).setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    """``taskgrouping run``: :func:`run_config` and the report (or ``--json``) on stdout.

    The store's Prefect server, if it is down, starts first (:func:`~taskgrouping.flows.keeper.start_ahead`),
    so that its start overlaps the imports and the data checks; bad input stops it and
    leaves nothing behind.
    """
    from taskgrouping.flows.keeper import start_ahead
    from taskgrouping.interrupt import end_on_signals

    end_on_signals()
    store = Path(args.store).expanduser().resolve()
    ahead = start_ahead(store / "prefect" / "home")
    try:
        summary = run_config(config_from_args(args), args.verbose, keeper=ahead)
    finally:
        if ahead is not None:
            ahead.abandon()  # nothing to do once the run used it
    if args.json:
        print(json.dumps(summary))
    else:
        print(Path(summary["artifacts"]["report"]).read_text())
    return 0


def run_settings(own_server: bool) -> dict[Any, Any]:
    """Prefect settings for a run's flow: on the store's own server, no flow-run heartbeats.

    Prefect's engine joins its heartbeat thread when a flow ends, and that thread sleeps
    in 1 s steps: 0.55-0.6 s of every run (a fifth of an identical rerun). Heartbeats are
    only read by a "zombie flow" automation, which a store's own server does not have
    (no server service reads them); on your server (``PREFECT_API_URL``) they are sent.
    """
    if not own_server:
        return {}
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


def _import_flow_start() -> None:
    """Import now what starting the flow imports on first use, while the server is still starting.

    Prefect imports its Dask task runner and FastAPI's JSON encoder (to serialise the
    flow's parameters) only when the first flow run starts: 0.2 s that would otherwise
    come after the server is up, on every fresh store's critical path.
    """
    import prefect_dask.task_runners  # noqa: F401

    with contextlib.suppress(ImportError):  # Prefect's own dependency; its import path is Prefect's choice
        import fastapi.encoders  # noqa: F401


def run_config(cfg: Any, verbose: bool = False, keeper: Any = None) -> dict[str, Any]:
    """Check the data, then run the ``regroup`` flow under a Prefect API; the run summary (CLI and API).

    ``keeper``: the store's server keeper, started before the checks (:func:`cmd_run`).
    """
    n_tasks = preflight(cfg)
    _quiet_logs(verbose)
    log = logging.getLogger("taskgrouping")
    log.info("data %s: %d tasks; store %s", cfg.data, n_tasks, cfg.store)
    from taskgrouping.flows.server import drain_prefect_queues, prefect_api

    t0 = time.perf_counter()
    clusters: list[Any] = []

    def while_server_starts(url: str) -> None:
        # a store's first run has probes and models to compute: start the workers (and their
        # torch import) now, in parallel with the server; later runs start them only if a step
        # needs one (an identical rerun starts none)
        if cluster_ahead:
            from taskgrouping.flows.regroup import start_cluster

            t1 = time.perf_counter()
            clusters.append(start_cluster(cfg))
            log.info("Dask workers starting while the server starts (scheduler up in %.1f s)", time.perf_counter() - t1)
        _import_flow_start()

    cluster_ahead = cfg.dask_address is None and not any((Path(cfg.store) / "runs").glob("*"))
    own_server = not os.environ.get("PREFECT_API_URL")
    try:
        with prefect_api(Path(cfg.store) / "prefect" / "home", while_starting=while_server_starts,
                         ahead=keeper) as url:
            log.info("Prefect API %s (%.1f s)", url, time.perf_counter() - t0)
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from taskgrouping.flows.regroup import run_regroup

            run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
            with temporary_settings(updates={PREFECT_API_URL: url, **run_settings(own_server)}):
                try:
                    summary = run_regroup(cfg, run_id, clusters[0].scheduler_address if clusters else None)
                finally:
                    drain_prefect_queues()
                    while clusters:  # before the server stops, so no worker reports to a dead API
                        clusters.pop().close()
    finally:
        while clusters:
            clusters.pop().close()
    log.info("done in %.1f s; report %s", time.perf_counter() - t0, summary["artifacts"]["report"])
    return summary


def _task_costs(path: str | None, tasks: list[str] | None) -> tuple[tuple[str, float], ...]:
    """``(task, cost)`` pairs from a CSV with columns ``task, cost`` (names checked against ``tasks`` if given)."""
    if path is None:
        return ()
    from taskgrouping.data.load import read_table

    frame = read_table(path)
    for column in ("task", "cost"):
        if column not in frame.columns:
            raise InputError(f"{path}: missing column {column!r} (need task, cost)")
    pairs = []
    for task, cost in zip(frame.get_column("task").to_list(), frame.get_column("cost").to_list(), strict=True):
        if tasks is not None and str(task) not in tasks:
            raise InputError(f"{path}: task {task!r} is not in the affinity matrix")
        try:
            pairs.append((str(task), float(cost)))
        except (TypeError, ValueError):
            raise InputError(f"{path}: cost of task {task!r} is {cost!r}, not a number") from None
    return tuple(pairs)


def cmd_select(args: argparse.Namespace) -> int:
    """``taskgrouping select``: groups from a given matrix."""
    from taskgrouping.data.affinity_file import load_affinity_file
    from taskgrouping.selectors import SelectSettings, get_selector, select_groups

    get_selector(args.selector)  # an unknown name fails before the file is read
    affinity = load_affinity_file(args.affinity, args.kind)
    t = len(affinity.tasks)
    if getattr(affinity, "sparse", False) and args.selector != "graph":
        k = getattr(affinity, "k", 0)
        raise InputError(f"{args.affinity}: a neighbour affinity (each task's {k} nearest partners) "
                         f"needs --selector graph; --selector {args.selector} needs every pair")
    if args.groups is not None and not 1 <= args.groups <= t:
        raise InputError(f"--groups {args.groups} is outside 1..{t} (the number of tasks in {args.affinity})")
    if args.objective == "wang" and args.selector != "mip":
        raise InputError(f"--objective wang is a mip objective; --selector {args.selector} does not take it")
    settings = SelectSettings(overlap=False if args.no_overlap else None, max_group_size=args.max_group_size,
                              objective=args.objective,
                              max_group_cost=args.max_group_cost,
                              task_costs=_task_costs(args.task_costs, affinity.tasks))
    chosen: dict[str, Any] = select_groups(affinity, args.groups, args.selector, settings, args.seed)
    if args.json:
        print(json.dumps(chosen))
        return 0
    groups, served = chosen["groups"], chosen["served"]
    print(f"{len(groups)} groups of {t} tasks ({args.selector}, {affinity.kind}, {chosen['seconds']:.2f} s)")
    for gi, members in enumerate(groups):
        shown = [m if served[m] == gi else f"({m})" for m in members]
        print(f"  group {gi}: {', '.join(shown)}")
    if any(served[m] != gi for gi, g in enumerate(groups) for m in g):
        print("  (a task in parentheses helps that group but is served by another)")
    if chosen["objective"] is not None:
        exact = "" if chosen["exact"] in (True, None) else " (approximate: candidates from clustering + local search)"
        print(f"objective (sum of served scores): {chosen['objective']:.6g}{exact}")
    return 0


def check_cron(expr: str) -> str:
    """Return ``expr`` if Prefect accepts it as a cron schedule, else raise naming it."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr, timezone="UTC")
    except Exception:
        raise InputError(f"--cron {expr!r} is not a valid cron expression (e.g. '0 3 * * 1')") from None
    return expr


def cmd_serve(args: argparse.Namespace) -> int:
    """``taskgrouping serve``: the scheduled flow, served from this process until SIGINT or SIGTERM."""
    check_cron(args.cron)
    cfg = config_from_args(args)
    preflight(cfg)  # bad input fails now, not at 3 a.m.
    _quiet_logs(args.verbose)
    log = logging.getLogger("taskgrouping")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from taskgrouping.flows.scheduled import scheduled_regroup, serve_until_signal
    from taskgrouping.flows.server import prefect_api

    with prefect_api(Path(cfg.store) / "prefect" / "home", ui=True) as url, \
            temporary_settings(updates={PREFECT_API_URL: url}):  # settings may have been read already
        log.info("Prefect API %s; UI %s", url, url.removesuffix("/api"))
        signame = serve_until_signal(
            scheduled_regroup, args.name, args.cron, {"config": cfg.to_dict()},
            ready=lambda: log.info("serving %r on cron %r (UTC); Ctrl-C, SIGINT or SIGTERM stops; one line "
                                   "per run follows", args.name, args.cron))
        log.info("%s received: stopped serving %r", signame, args.name)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``taskgrouping export``: a run's grouped models as self-describing folders."""
    from taskgrouping.storage import Store
    from taskgrouping.storage.integrity import is_store

    root = Path(args.store).expanduser().resolve()
    if not root.is_dir() or not is_store(root):
        raise InputError(f"--store {args.store}: not a taskgrouping store")
    setting, folders = Store(root).export_run(args.run, Path(args.out).expanduser().resolve(), args.setting)
    asked = "" if args.setting == setting else f" ({args.setting})"
    print(f"exported setting {setting}{asked} of run {args.run}: {len(folders)} model folder"
          f"{'' if len(folders) == 1 else 's'}", file=sys.stderr)
    for folder in folders:
        print(folder)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """``taskgrouping history``: every lineage of a store with its versions (or one, ``--lineage``)."""
    from taskgrouping.history import history, history_text
    from taskgrouping.storage.integrity import is_store

    root = Path(args.store).expanduser().resolve()
    if not root.is_dir() or not is_store(root):
        raise InputError(f"--store {args.store}: not a taskgrouping store")
    lineages = history(root, args.lineage)
    if args.json:
        print(json.dumps(lineages))
    else:
        print(history_text(lineages, root), end="")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``taskgrouping verify``: every store file against its checksum; exit 2 on damage."""
    from taskgrouping.storage.integrity import STORE_DIRS, is_store, verify_store

    root = Path(args.store).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"--store {args.store}: no such store folder")
    if not is_store(root):
        raise InputError(f"--store {args.store}: not a taskgrouping store (a store holds only the folders "
                         f"{', '.join(STORE_DIRS)}); nothing was checked")
    checked, damaged = verify_store(root)
    if args.json:
        print(json.dumps({"checked": checked, "damaged": [{"path": str(p), "problem": w} for p, w in damaged]}))
    else:
        for path, why in damaged:
            print(f"damaged: {path}: {why}")
        print(f"{checked} files checked in {root}, {len(damaged)} damaged", file=sys.stderr)
    return 2 if damaged else 0


def console_main() -> None:
    """The ``taskgrouping`` console script and ``python -m taskgrouping``: :func:`main`, then a quick exit.

    After a run everything is written and flushed, but tearing the interpreter down
    (torch, Prefect, pydantic and their modules) took another 0.8-0.9 s on 2 cores, a
    fifth of an identical rerun. So once ``main`` returns, the exit handlers run
    (Prefect's and everyone's ``atexit``), logging and the standard streams are flushed,
    and the process ends with ``main``'s status without the teardown. An exception out
    of ``main`` (``--verbose``) takes the ordinary way out.
    """
    rc = main()
    import atexit

    try:
        atexit._run_exitfuncs()  # what the interpreter would run first on exit
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe (| head) must not change the status
                stream.flush()
    finally:
        os._exit(rc)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taskgrouping`` command (returns the exit status; :func:`console_main` exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "evaluate"):
            return cmd_run(args)
        if args.command == "select":
            return cmd_select(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "history":
            return cmd_history(args)
        parser.error(f"unknown command {args.command!r}")
    except InputError as exc:
        print(f"taskgrouping: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from taskgrouping.interrupt import Terminated

        term = isinstance(exc, Terminated)
        print(f"taskgrouping: {'stopped by SIGTERM' if term else 'interrupted'}; the run did not finish "
              "(what it finished is in the store and is reused by the next run)", file=sys.stderr)
        return 143 if term else 130
    except Exception as exc:  # an internal failure: one line, exit 1 (--verbose for the traceback)
        if getattr(args, "verbose", False):
            raise
        print(f"taskgrouping: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
