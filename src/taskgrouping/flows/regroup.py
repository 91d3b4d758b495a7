"""The ``regroup`` flow: sample -> probe every task -> affinity -> select -> train per group -> report.

Only sequencing lives here; the math is in ``methods/``, ``selectors/`` and ``models/``,
the step wrappers in ``tasks/``, and every cache key in :mod:`taskgrouping.keys`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow
from prefect.futures import as_completed

from taskgrouping import keys
from taskgrouping.config import RunConfig
from taskgrouping.flows import orphans
from taskgrouping.hashing import stable_hash
from taskgrouping.methods.base import positions
from taskgrouping.methods.swola import SwolaSettings
from taskgrouping.models.evaluate import GroupJob, evaluation_jobs, repeat_seed
from taskgrouping.resources import (
    INLINE_PROBE_FLOATS,  # the memory estimate counts the probe steps too
)
from taskgrouping.storage import Store
from taskgrouping.storage.integrity import intact
from taskgrouping.tasks.report import report_step
from taskgrouping.tasks.steps import (
    affinity_step,
    gains_step,
    head_cv_step,
    joint_step,
    memberships_step,
    meta_affinity_step,
    meta_probe_step,
    meta_train_step,
    oracle_step,
    probe_step,
    sample_step,
    select_step,
    train_step,
    trunk_maps_step,
)

log = logging.getLogger("taskgrouping")


def file_hash(source: str) -> str | None:
    """sha256 of a data file's bytes (None for built-ins)."""
    if source.startswith("builtin:"):
        return None
    h = hashlib.sha256()
    with open(source, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


WORKER_PRELOAD = "taskgrouping.flows.worker"
"""Run by every worker of a run's local cluster as it starts and closes (:mod:`taskgrouping.flows.worker`)."""


WORKER_MALLOC = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
"""Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, so that long-lived workers hand memory
back; glibc then returns and re-faults every freed block above 64 KiB. A training loop that
allocates such tensors every step ran 3.3x slower under it (meta-training 10.4 s -> 34.6 s, most
of it in the kernel). A run's workers live for that run: glibc's own adaptive threshold
(the setting unset; a value in the environment still wins)."""

WORKER_START = "distributed.worker.multiprocessing-method"


def _forkserver() -> bool:
    """Fork the workers from one forkserver that imported the heavy modules once, where the OS allows it.

    On digits (2 cores) a new store's workers were ready 1.4 s sooner, beside the
    server's start, and closing the cluster took 0.05 s instead of 1.4 s
    (:mod:`taskgrouping.flows.worker`). The forkserver is started once per process.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    import dask
    from distributed.utils import get_mp_context

    from taskgrouping.flows.worker import FORKSERVER_PRELOAD

    dask.config.set({WORKER_START: "forkserver"})
    get_mp_context().set_forkserver_preload(list(FORKSERVER_PRELOAD))  # replaces Dask's own list
    return True


def cluster_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The local cluster of a run: ``workers`` processes x 1 thread (GPU resources on CUDA).

    Workers are forked from a forkserver (:func:`_forkserver`) and get this process's
    environment (:func:`~taskgrouping.flows.worker.worker_env`); Dask's malloc trim
    threshold is unset for them (:data:`WORKER_MALLOC`).
    """
    import dask

    from taskgrouping.flows.worker import worker_env

    dask.config.set({WORKER_MALLOC: None})
    _forkserver()
    kwargs: dict[str, Any] = {"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                              "dashboard_address": None, "silence_logs": logging.WARNING,
                              "preload": [WORKER_PRELOAD], "env": worker_env(),
                              # no dashboard, and the scheduler's health/metrics server on a free port: on 8787
                              # every run warned "Port 8787 is already in use" while another cluster was up
                              "scheduler_kwargs": {"dashboard_address": ":0"}}
    if cfg.device == "cuda":
        kwargs["resources"] = {"GPU": 1}
    return kwargs


def make_task_runner(cfg: RunConfig, address: str | None = None) -> Any:
    """A DaskTaskRunner: an existing scheduler (``--dask-address`` or ``address``), or a local cluster.

    The local cluster starts when the first step is submitted, so a run that submits
    nothing (everything in the store) starts no worker.
    """
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address or address:
        return DaskTaskRunner(address=cfg.dask_address or address)
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs(cfg))


def start_cluster(cfg: RunConfig) -> Any:
    """Start the run's local cluster ahead: its scheduler now, its workers in the background.

    The CLI calls this while the Prefect server boots (a first run on a store has probes
    and models to compute). The workers start (forked, :func:`_forkserver`) while the
    server finishes and the flow's first stages run; the first step sent to them waits
    for one (:func:`_await_workers`). The environment (``PREFECT_API_URL``) must already
    name the run's server.
    """
    from distributed import LocalCluster

    cluster = LocalCluster(**(cluster_kwargs(cfg) | {"n_workers": 0}))
    cluster.scale(cfg.workers)
    _STARTED_AHEAD.add(cluster.scheduler_address)
    return cluster


WORKER_WAIT = 180.0
"""Seconds a step sent to the workers of a cluster started ahead waits for the first of them."""

_STARTED_AHEAD: set[str] = set()
"""Scheduler addresses of the clusters :func:`start_cluster` started in this process."""


def _await_workers() -> None:
    """Before steps go to the workers of a cluster started ahead: wait until one has joined.

    Its workers may still be starting (:func:`start_cluster`); one that cannot start
    would otherwise leave the steps waiting for ever, so after :data:`WORKER_WAIT` s
    this is an error. Your own cluster (``--dask-address``, perhaps scaling up from
    none) is left to its own pace.
    """
    from prefect.context import get_run_context

    client = getattr(getattr(get_run_context(), "task_runner", None), "client", None)
    if client is None or client.scheduler.address not in _STARTED_AHEAD:
        return
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except TimeoutError:
        raise RuntimeError(f"no Dask worker joined the scheduler {client.scheduler.address} in "
                           f"{WORKER_WAIT:.0f} s; see the log above for why they did not start") from None


def _gpu_annotation(cfg: RunConfig) -> contextlib.AbstractContextManager[Any]:
    """Route probe and training steps to workers with a ``GPU`` resource when on CUDA."""
    if cfg.device != "cuda":
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources={"GPU": 1})


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    cfg = p.get("config", {})
    return f"regroup {cfg.get('data', '?')} {cfg.get('method', '?')}/{cfg.get('selector', '?')} {p.get('run_id', '')}"


@dataclass
class _Run:
    """What every stage of one flow run needs (references only, never data)."""

    cfg: RunConfig
    run_id: str
    store: Store
    results: Path
    dataset_key: str
    data_key: str
    names: list[str]
    label_fps: dict[str, str]
    inline: bool = False
    """Run step bodies in this process without Prefect (``TaskGrouper.fit``): same code, same keys."""

    def group_key(self, members: Sequence[str], weights: Sequence[float] | None = None, seed: int | None = None) -> str:
        return keys.group_key(self.data_key, [(m, self.label_fps[m]) for m in members], self.cfg.train,
                              self.cfg.seed if seed is None else seed, list(weights) if weights is not None else None)


@dataclass
class _Affinity:
    """The outcome of an affinity stage."""

    path: str
    key: str
    probes_computed: int
    pairs_computed: int
    pairs_total: int
    probe_seconds: float
    affinity_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    trained_keys: set[str] = field(default_factory=set)


class _Progress:
    """A progress artifact in the Prefect UI (and a log line every quarter) for one mapped stage."""

    def __init__(self, stage: str, total: int, what: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.stage, self.total, self.what, self.done = stage, total, what, 0
        self.artifact: Any = create_progress_artifact(0.0, description=f"{stage}: {what}")

    def step(self, n: int = 1) -> None:
        from prefect.artifacts import update_progress_artifact

        quarter = max(1, self.total // 4)
        crossed = (self.done + n) // quarter > self.done // quarter
        self.done += n
        if self.done == self.total or crossed:
            log.info("%s: %d/%d %s", self.stage, self.done, self.total, self.what)
            update_progress_artifact(self.artifact, 100.0 * self.done / max(1, self.total),
                                     description=f"{self.stage}: {self.done}/{self.total} {self.what}")


def _train_name(members: list[str]) -> str:
    """The UI name of a training step: its member tasks (abbreviated past 4)."""
    shown = ", ".join(members[:4]) + (f" +{len(members) - 4}" if len(members) > 4 else "")
    return f"train [{shown}]"


ModelJob = tuple[list[str], list[float] | None, int]
"""A model to train: member tasks (in task order), loss weights or None, training seed."""


def _train_models(run: _Run, jobs: dict[str, ModelJob], label: str) -> dict[str, dict[str, Any]]:
    """Train the models the store lacks, mapped on the Dask workers; read the others from the store.

    A model's files exist only once complete (written atomically, its metrics last) under
    its content key, so the store says what is done: a stored model costs a file read,
    not a step (and a run that trains nothing starts no worker). Models whose step
    finished but whose files are gone (removed behind the cache's back) are retrained.
    """
    from taskgrouping.tasks.steps import model_record

    cfg = run.cfg
    train_settings = asdict(cfg.train)

    def submit(group_keys: list[str]) -> list[Any]:
        # only models missing from the store are sent, so a step record would be stale (files removed
        # behind its back): always run the step (its body still skips a model a concurrent run wrote)
        with _gpu_annotation(cfg):
            return [train_step.with_options(result_storage=run.results, refresh_cache=True,
                                            task_run_name=_train_name(jobs[k][0])).submit(
                cfg.store, run.dataset_key, jobs[k][0], train_settings, jobs[k][2], cfg.device,
                cache_key=k, run_id=run.run_id, weights=jobs[k][1]) for k in group_keys]

    trained: dict[str, dict[str, Any]] = {}
    todo = []
    for k in jobs:
        if run.store.has_model(k):
            trained[k] = model_record(run.store, k, jobs[k][0], False, run.run_id)
        else:
            todo.append(k)
    if run.inline:
        for k in todo:
            trained[k] = train_step.fn(cfg.store, run.dataset_key, jobs[k][0], train_settings, jobs[k][2],
                                       cfg.device, cache_key=k, run_id=run.run_id, weights=jobs[k][1])
        return trained
    if not todo:
        log.info("%s: all %d models are in the store", label, len(jobs))
        return trained
    _await_workers()
    futures = submit(todo)
    progress = _Progress(label, len(futures), f"models trained ({len(jobs) - len(todo)} reused from the store)")
    for fut in as_completed(futures):
        res = fut.result()
        trained[res["key"]] = res
        progress.step()
    return trained


def _job_model(run: _Run, job: GroupJob) -> tuple[str, ModelJob]:
    """The model a job needs: its key, and its members in task order, loss weights (if any) and seed."""
    members = sorted(job.members, key=run.names.index)
    weights = None if job.weights is None else [job.weights[job.members.index(m)] for m in members]
    seed = repeat_seed(run.cfg.seed, job.repeat)
    return run.group_key(members, weights, seed), (members, weights, seed)


def opaque(args: Sequence[Any]) -> tuple[Any, ...]:
    """Step arguments with their collections quoted: Prefect then passes them as they are.

    Prefect walks every argument of a step twice (looking for futures to wait on, then
    to resolve them); none of ours holds one, and walking 10,000 ``[task, probe key]``
    pairs and a 10,000-task selection took 2-3 s of a +1 run at 10,000 tasks. For a step
    run here only: one submitted to Dask receives the quote itself.
    """
    from prefect.utilities.annotations import quote

    return tuple(quote(a) if isinstance(a, (list, dict, tuple)) else a for a in args)


def _run_step(step: Any, results: Path, present: Callable[[dict[str, Any]], bool], *args: Any,
              name: str | None = None, submit: bool = False, inline: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run one cached step; if its cached record names store files that are gone, run it again fresh.

    ``present`` says whether a result's files are in the store. ``submit`` sends the
    step to the task runner (a Dask worker) instead of running it in the flow process;
    ``inline`` runs the step's body here with no Prefect at all (its outputs are in the
    store under the same content keys, so nothing is lost but the step record).
    """
    if inline:
        out: dict[str, Any] = step.fn(*args, **kwargs)
        return out
    for refresh in (False, True):
        options: dict[str, Any] = {"result_storage": results, "refresh_cache": refresh}
        if name is not None:
            options["task_run_name"] = name
        bound = step.with_options(**options)
        if submit:
            _await_workers()
        res: dict[str, Any] = bound.submit(*args, **kwargs).result() if submit else bound(*opaque(args), **kwargs)
        if refresh or present(res):
            return res
    raise AssertionError("unreachable")


def _computed(run: _Run, result: dict[str, Any]) -> bool:
    return bool(result.get("computed", True)) and result["run_id"] == run.run_id


PROBE_BATCH_MAX = 64
"""At most this many ML tasks per probe step (bounds a step's memory and the work a retry repeats)."""

INLINE_PROBES = 2
"""Up to this many tasks to probe run in the flow's process (a local cluster only), not on a worker."""

def probes_here(n_tasks: int, samples: int, settings: SwolaSettings, input_shape: Sequence[int] | None,
                dask_address: str | None) -> bool:
    """Whether ``n_tasks`` probes run in the flow's process rather than on workers (:data:`INLINE_PROBE_FLOATS`).

    With the MLP trunk they always do (in steps of :func:`inline_chunk` tasks): at 10,000
    tasks the workers took 109 s for what the flow's process does in about 25 s (each
    batch of 64 read its labels from a 10,000-column table and sent its results back).
    """
    if dask_address:
        return False
    if n_tasks <= INLINE_PROBES:
        return True
    return settings.trunk in ("auto", "mlp") and settings.checkpoint is None and (not input_shape or len(input_shape) == 1)


def inline_chunk(samples: int, settings: SwolaSettings) -> int:
    """Tasks per in-process probe step: their probes hold at most :data:`INLINE_PROBE_FLOATS` float32 values."""
    return max(1, INLINE_PROBE_FLOATS // max(1, samples * settings.trunks * settings.layers * settings.hidden))


def probe_batches(tasks: list[str], workers: int) -> list[list[str]]:
    """Split the tasks to probe into steps: about four per worker, 1 to :data:`PROBE_BATCH_MAX` tasks each.

    A probe takes milliseconds of compute (shared head) to tens of milliseconds (fitted
    head), less than one step's orchestration, so thousands of tasks are probed in
    batches; a handful of tasks still get one step each (and their own name in the UI).
    """
    if not tasks:
        return []
    size = min(PROBE_BATCH_MAX, max(1, -(-len(tasks) // (4 * max(1, workers)))))
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


def _generic_trunk(run: _Run) -> bool:
    """Whether SWOLA probes this run on a trunk other than its MLP (the probe engine)."""
    from taskgrouping.methods.swola import generic_trunk

    meta = run.store.read_prepared_meta(run.dataset_key)
    shape = meta.get("input_shape") or [len(meta.get("x_mean") or meta["feature_names"])]
    return generic_trunk(run.cfg.swola, tuple(shape))


def _probe_name(batch: list[str]) -> str:
    return f"probe {batch[0]}" if len(batch) == 1 else f"probe {batch[0]} .. {batch[-1]} ({len(batch)} tasks)"


def _swola_affinity(run: _Run) -> _Affinity:
    """SWOLA: probe the tasks whose probes are not in the store (batched steps), then only the missing pairs.

    A probe file exists only once complete (atomic write) and its name is the content
    key of everything it depends on, so the store, not a step record, says what is done:
    reused probes cost a file check, not a step.
    """
    cfg, store = run.cfg, run.store
    overlap = store.read_prepared_meta(run.dataset_key).get("probe_overlap") or {}
    if overlap.get("below"):
        why = (f"{overlap['below']} task pairs share fewer than {overlap['threshold']} labelled probe samples "
               f"(fewest: {overlap['min']}): every pair is measured by the swola-meta signature instead")
        log.warning("affinity: %s", why)
        return _meta_affinity(run, why)
    t0 = time.perf_counter()
    head_c, scored = _head_c(run)
    settings = replace(cfg.swola, head_c=head_c)
    swola_settings = asdict(settings)
    probe_keys = keys.probe_keys(run.data_key, run.label_fps, run.names, settings, cfg.seed)
    todo = [t for t in run.names if not store.has_probe(probe_keys[t])]
    batches = probe_batches(todo, cfg.workers if not cfg.dask_address else 8)
    if todo and _generic_trunk(run):  # sketched probes share the trunk's maps: computed once, before the batches
        with _gpu_annotation(cfg):  # on a cluster, where the probes run (the flow's machine may have no GPU)
            _run_step(trunk_maps_step, run.results, lambda r: r["path"] is None or intact(Path(r["path"])),
                      cfg.store, run.dataset_key, swola_settings, cfg.seed, cfg.device, len(todo),
                      cache_key=stable_hash("trunk-maps", keys.trunk_maps_key(run.data_key, settings, cfg.seed),
                                            len(todo)),  # fewer tasks than features may need no maps
                      run_id=run.run_id, inline=run.inline, name="trunk maps",
                      submit=bool(cfg.dask_address) and not run.inline)

    def step(batch: list[str]) -> Any:
        # only tasks missing from the store are sent, so a cached step record would be stale:
        # always run the step (its body still skips a probe that a concurrent run has written)
        return probe_step.with_options(result_storage=run.results, task_run_name=_probe_name(batch),
                                       refresh_cache=True)

    def args(batch: list[str]) -> tuple[Any, ...]:
        return (cfg.store, run.dataset_key, [[t, probe_keys[t]] for t in batch], swola_settings, cfg.seed,
                cfg.device)

    def kwargs(batch: list[str]) -> dict[str, Any]:
        return {"cache_key": stable_hash("probe-batch", [probe_keys[t] for t in batch]), "run_id": run.run_id}

    if run.inline:  # one batch in this process, no Prefect
        done: Iterable[dict[str, Any]] = [probe_step.fn(*args(todo), **kwargs(todo))] if todo else []
    elif todo and probes_here(len(todo), cfg.samples, cfg.swola,
                              store.read_prepared_meta(run.dataset_key).get("input_shape"), cfg.dask_address):
        # little work: probing takes less than sending steps to workers costs, so do it here, a chunk a step
        size = inline_chunk(cfg.samples, cfg.swola)
        done = (step(c)(*opaque(args(c)), **kwargs(c)) for c in (todo[i : i + size] for i in range(0, len(todo), size)))
    elif not todo:
        done = []
    else:
        with _gpu_annotation(cfg):
            _await_workers()
            futures = [step(b).submit(*args(b), **kwargs(b)) for b in batches]
        done = (f.result() for f in as_completed(futures))
    computed = 0
    progress = _Progress("probe", len(todo), "ML tasks probed") if todo and not run.inline else None
    for res in done:
        if res["run_id"] == run.run_id:
            computed += len(res["computed"])
        if progress is not None:
            progress.step(len(res["tasks"]))
    lost = [t for t in todo if not store.has_probe(probe_keys[t])]
    if lost:
        raise RuntimeError(f"probe: {len(lost)} probe files are missing after their steps finished "
                           f"(first: ML task {lost[0]!r}); is the store on a file system every worker sees?")
    probe_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    ordered = [[t, probe_keys[t]] for t in run.names]
    from taskgrouping.methods.sparse import use_sparse

    sparse = use_sparse(cfg.pairs, len(run.names), cfg.selector)
    aff_key = keys.affinity_key([(t, k) for t, k in ordered], cfg.swola, cfg.seed, sparse=sparse)
    aff_args = (cfg.store, run.dataset_key, ordered, swola_settings, cfg.seed, cfg.device,
                keys.pairs_key(cfg.swola, cfg.seed))
    if sparse:
        log.info("affinity: each of %d tasks' nearest partners (sparse: sketch candidates, exact distances "
                 "for them)", len(run.names))
    if sparse and cfg.dask_address and not run.inline:
        tiles_run = _sparse_on_cluster(run, ordered, swola_settings, keys.pairs_key(cfg.swola, cfg.seed))
    sparse_arg: dict[str, Any] = {"sparse": True} if sparse else {}  # dense steps' records keep their parameters
    aff = _run_step(affinity_step, run.results, lambda r: intact(Path(r["path"])), *aff_args,
                    cache_key=aff_key, run_id=run.run_id, inline=run.inline, **sparse_arg)
    pairs_total = int(aff["pairs_exact"]) if sparse else len(run.names) * (len(run.names) - 1) // 2
    if sparse and cfg.dask_address and not run.inline:  # the pairs were computed by the tiles, then read
        aff = dict(aff) | {"pairs_computed": tiles_run["pairs"], "sparse": dict(aff["sparse"]) | {"cluster": tiles_run}}
    probe_bytes = [store.probe_path(probe_keys[t]).stat().st_size for t in run.names]
    return _Affinity(path=aff["path"], key=aff_key, probes_computed=computed,
                     pairs_computed=aff["pairs_computed"] if aff["run_id"] == run.run_id else 0,
                     pairs_total=pairs_total, probe_seconds=probe_seconds,
                     affinity_seconds=time.perf_counter() - t0,
                     extra={"probe_bytes_mean": sum(probe_bytes) / max(1, len(probe_bytes)),
                            "head_c": head_c, "heads_scored": scored,
                            "pairs": aff.get("sparse") if sparse else {"form": "dense"}})


SKETCH_BATCH = 512
"""Probes per sketch step on a cluster (512 x 256 KiB of rows at 512 samples x 128 errors)."""

ROW_BAND = 1024
"""Tasks per band of a pair tile on a cluster: a tile holds two bands' rows (512 MiB at 512 x 128)."""


def _sparse_on_cluster(run: _Run, ordered: list[list[str]], settings: dict[str, Any], pairs_key: str) -> dict[str, Any]:
    """The sparse step's work on the user's Dask cluster (``--dask-address``): sketch steps, then pair tiles.

    1. Probes without a stored sketch are sketched in steps of :data:`SKETCH_BATCH`.
    2. Here: every task's candidates from the sketches (the kept lists brought up to
       date, :func:`~taskgrouping.tasks.steps.candidate_lists`); the pairs not in the pair cache.
    3. Those pairs in tiles of two row bands (:data:`ROW_BAND` tasks each), one step per tile,
       each appending its pairs to the cache. A lost worker costs its tile: Dask sends it
       to another worker, and the tiles already done stay in the cache.
    4. Up to :data:`~taskgrouping.methods.sparse.REFINE_ROUNDS` neighbour-of-neighbour rounds
       (:func:`~taskgrouping.methods.sparse.refine_pairs`) on the pairs so far, read back
       from the cache; each round's new pairs go out in tiles the same way.

    The affinity step then finds every pair in the cache and only assembles the lists.
    On one machine this does not pay (the flow's process uses every core in one matrix
    product), so the local cluster leaves it to the affinity step.
    """
    from taskgrouping.methods.sparse import (
        REFINE_PARTNERS,
        REFINE_ROUNDS,
        canonical_rank,
        refine_pairs,
        unordered,
    )
    from taskgrouping.tasks.steps import candidate_lists, sketch_step, sketch_table

    cfg, store = run.cfg, run.store
    sk_key = keys.sketch_key(pairs_key)
    names = [t for t, _ in ordered]
    probe_keys = [k for _, k in ordered]
    _, _, _, missing = sketch_table(store, sk_key, probe_keys, 1)
    t0 = time.perf_counter()
    batches = [[ordered[i] for i in missing[j : j + SKETCH_BATCH]] for j in range(0, len(missing), SKETCH_BATCH)]
    with _gpu_annotation(cfg):
        _await_workers()
        futures = [sketch_step.with_options(result_storage=run.results, refresh_cache=True,
                                            task_run_name=f"sketch {len(b)} probes").submit(
            cfg.store, run.dataset_key, b, settings, cfg.seed, cfg.device, sk_key,
            cache_key=stable_hash("sketch-batch", sk_key, [k for _, k in b]), run_id=run.run_id) for b in batches]
    for f in as_completed(futures):
        f.result()
    sketch_seconds = time.perf_counter() - t0
    data = store.read_prepared(run.dataset_key, tasks=[])
    n = len(data.probe_idx)
    sketch, sq, masks, missing = sketch_table(store, sk_key, probe_keys, n)
    if len(missing):
        raise RuntimeError(f"sketch: {len(missing)} sketches are missing after their steps finished (first: ML task "
                           f"{names[missing[0]]!r}); is the store on a file system every worker sees?")
    lists, _, _ = candidate_lists(store, sk_key, names, probe_keys, sketch, sq, masks)  # kept lists brought up to date
    a, b = unordered(np.repeat(np.arange(len(names)), lists.shape[1]), lists.reshape(-1), len(names))
    rank = canonical_rank(names)
    t0 = time.perf_counter()
    todo_a, todo_b = a, b
    computed = tiles_done = 0
    for round_ in range(REFINE_ROUNDS + 1):
        cache = store.read_pairs(pairs_key)
        if round_:  # the pairs so far are all in the cache now: a neighbour-of-neighbour round on them
            d, _ = cache.lookup_pairs(probe_keys, a, b)
            todo_a, todo_b = refine_pairs(len(names), a, b, d, rank, REFINE_PARTNERS)
            if not len(todo_a):
                break
            a, b = np.concatenate([a, todo_a]), np.concatenate([b, todo_b])
        _, hit = cache.lookup_pairs(probe_keys, todo_a, todo_b)
        todo_a, todo_b = todo_a[~hit], todo_b[~hit]
        computed += len(todo_a)
        tiles_done += _pair_tiles(run, probe_keys, todo_a, todo_b, settings, pairs_key)
    return {"sketched": int(sum(len(x) for x in batches)), "sketch_steps": len(batches), "tiles": tiles_done,
            "pairs": int(computed), "seconds": {"sketch": round(sketch_seconds, 3),
                                              "tiles": round(time.perf_counter() - t0, 3)}}


def _pair_tiles(run: _Run, probe_keys: list[str], a: np.ndarray, b: np.ndarray, settings: dict[str, Any],
                pairs_key: str) -> int:
    """The pairs ``(a, b)`` in tiles of two row bands, one step each on the cluster; returns the tiles run."""
    from taskgrouping.methods.sparse import tiles
    from taskgrouping.tasks.steps import pair_tile_step

    cfg = run.cfg
    futures = []
    with _gpu_annotation(cfg):
        for group in tiles(a, b, ROW_BAND):
            rows = np.unique(np.concatenate([a[group], b[group]]))
            local = {int(r): i for i, r in enumerate(rows)}
            pk = [probe_keys[r] for r in rows]
            la, lb = [local[int(v)] for v in a[group]], [local[int(v)] for v in b[group]]
            futures.append(pair_tile_step.with_options(result_storage=run.results, refresh_cache=True,
                                                       task_run_name=f"pair tile ({len(group)} pairs)").submit(
                cfg.store, run.dataset_key, pk, la, lb, settings, cfg.seed, cfg.device, pairs_key,
                cache_key=stable_hash("pair-tile", pairs_key, pk, la, lb), run_id=run.run_id))
    progress = _Progress("pairs", len(futures), "pair tiles") if futures else None
    for f in as_completed(futures):
        f.result()
        if progress is not None:
            progress.step()
    return len(futures)


def _meta_affinity(run: _Run, why: str | None = None) -> _Affinity:
    """``swola-meta`` (or SWOLA on tasks that share too few samples): per-task probes, then missing pairs only.

    Each task is probed on its own labelled training rows (:mod:`taskgrouping.methods.meta`),
    in one step in the flow's process (milliseconds to a second a task); probes already
    in the store are not recomputed, and only pairs not in the pair cache are computed.
    """
    cfg, store = run.cfg, run.store
    t0 = time.perf_counter()
    settings = cfg.meta
    probe_keys = {t: keys.meta_probe_key(run.data_key, t, run.label_fps[t], settings, cfg.seed) for t in run.names}
    todo = [t for t in run.names if not store.has_probe(probe_keys[t])]
    computed = 0
    if todo:
        batch = [[t, probe_keys[t]] for t in todo]
        res = _run_step(meta_probe_step, run.results, lambda r: all(store.has_probe(k) for _, k in batch),
                        cfg.store, run.dataset_key, batch,
                        asdict(settings), cfg.seed, name=_probe_name(todo).replace("probe", "meta probe", 1),
                        cache_key=stable_hash("meta-probe-batch", [k for _, k in batch]), run_id=run.run_id,
                        inline=run.inline)
        computed = len(res["computed"]) if res["run_id"] == run.run_id else 0
        lost = [t for t in todo if not store.has_probe(probe_keys[t])]
        if lost:
            raise RuntimeError(f"meta probe: the probe of ML task {lost[0]!r} is missing after its step finished")
    probe_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ordered = [[t, probe_keys[t]] for t in run.names]
    aff_key = keys.meta_affinity_key([(t, k) for t, k in ordered], settings, cfg.seed)
    aff = _run_step(meta_affinity_step, run.results, lambda r: intact(Path(r["path"])), cfg.store, ordered,
                    keys.meta_pairs_key(settings, cfg.seed), cache_key=aff_key, run_id=run.run_id,
                    inline=run.inline)
    t = len(run.names)
    return _Affinity(path=aff["path"], key=aff_key, probes_computed=computed,
                     pairs_computed=aff["pairs_computed"] if aff["run_id"] == run.run_id else 0,
                     pairs_total=t * (t - 1) // 2, probe_seconds=probe_seconds,
                     affinity_seconds=time.perf_counter() - t0,
                     extra={"distance": {"probe": f"swola-meta {settings.probe}", "why": why}})


def _head_c(run: _Run) -> tuple[float | None, int]:
    """The C every fitted ``joint`` head of this run uses, and how many tasks were scored for it now.

    Chosen over all the run's tasks (:func:`taskgrouping.methods.heads.choose_c`) from
    each task's CV loss vector, stored per task: a vector missing from the store is
    computed by one ``head-cv`` step in this process (a batched solve, milliseconds a
    task), the rest are read. So a run with one more task scores one task, and the C
    changes only when the mean over tasks moves its argmin (then every probe is new).
    """
    s, store = run.cfg.swola, run.store
    if not s.joint_head or s.head_c is not None:
        return s.head_c, 0
    from taskgrouping.methods.heads import choose_c

    cv_keys = keys.head_cv_keys(run.data_key, run.label_fps, run.names, s, run.cfg.seed)
    stored = store.read_head_cv()
    todo = [t for t in run.names if cv_keys[t] not in stored]
    if todo:
        batch = [[t, cv_keys[t]] for t in todo]
        def present(_: dict[str, Any]) -> bool:
            have = store.read_head_cv()
            return all(k in have for _, k in batch)

        _run_step(head_cv_step, run.results, present, run.cfg.store, run.dataset_key, batch, asdict(s),
                  run.cfg.seed, run.cfg.device, name=f"head-cv ({len(todo)} ML tasks)",
                  cache_key=stable_hash("head-cv", [k for _, k in batch]), run_id=run.run_id, inline=run.inline)
        stored = store.read_head_cv()
        lost = [t for t in todo if cv_keys[t] not in stored]
        if lost:
            raise RuntimeError(f"head-cv: the losses of ML task {lost[0]!r} are missing after the step finished")
    return choose_c(np.stack([stored[cv_keys[t]] for t in run.names]), s.head_cs), len(todo)


def _joint_affinity(run: _Run) -> _Affinity:
    """TAG, principled gains or data maps: one cached step over the whole task set (adding a task recomputes it)."""
    cfg = run.cfg
    t0 = time.perf_counter()
    method_settings: Any = {"tag": cfg.tag, "principled": cfg.principled}.get(cfg.method, cfg.datamaps)
    key = keys.joint_key(cfg.method, run.data_key, [(t, run.label_fps[t]) for t in run.names],
                         method_settings, cfg.train, cfg.seed)
    args = (cfg.store, run.dataset_key, cfg.method, asdict(method_settings), asdict(cfg.train), cfg.seed,
            cfg.device)

    def present(res: dict[str, Any]) -> bool:
        return intact(Path(res["path"])) and (
            cfg.method != "datamaps" or intact(run.store.datamap_path(res["maps"])))

    with _gpu_annotation(cfg):  # submitted, so it runs on a (GPU) Dask worker
        res = _run_step(joint_step, run.results, present, *args, cache_key=key, run_id=run.run_id,
                        name=f"{cfg.method} joint training", submit=True, inline=run.inline)
    t = len(run.names)
    computed = _computed(run, res)
    log.info("%s: joint training over %d tasks %s", cfg.method, t, "computed" if computed else "reused")
    return _Affinity(path=res["path"], key=key, probes_computed=t if computed else 0,
                     pairs_computed=t * (t - 1) // 2 if computed else 0, pairs_total=t * (t - 1) // 2,
                     probe_seconds=time.perf_counter() - t0, affinity_seconds=0.0,
                     extra={"maps": res["maps"], "method_info": res["info"]})


def _hoa_affinity(run: _Run) -> _Affinity:
    """HOA: every task alone and every pair together (each a cached training step), then the gains.

    With ``exhaustive`` every subset is trained too, for the oracle's selection.
    """
    from taskgrouping.methods.hoa import all_task_subsets, check_exhaustive, pair_subsets

    cfg = run.cfg
    t0 = time.perf_counter()
    if cfg.hoa.exhaustive:
        check_exhaustive(len(run.names))
    singles = [[t] for t in run.names]
    pairs = pair_subsets(run.names)
    subsets = all_task_subsets(run.names) if cfg.hoa.exhaustive else singles + pairs
    jobs: dict[str, ModelJob] = {run.group_key(s): (s, None, cfg.seed) for s in subsets}
    trained = _train_models(run, jobs, "hoa")
    probe_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    model_keys = [(s, run.group_key(s)) for s in singles + pairs]
    models = [[s, k] for s, k in model_keys]
    gains_key = keys.gains_key([(",".join(s), k) for s, k in model_keys])
    res = _run_step(gains_step, run.results, lambda r: intact(Path(r["path"])), cfg.store, run.names, models,
                    cache_key=gains_key, run_id=run.run_id)
    single_keys = {run.group_key(s) for s in singles}
    computed = {k for k, r in trained.items() if _computed(run, r)}
    return _Affinity(path=res["path"], key=gains_key, probes_computed=len(computed & single_keys),
                     pairs_computed=len(computed - single_keys), pairs_total=len(jobs) - len(singles),
                     probe_seconds=probe_seconds, affinity_seconds=time.perf_counter() - t0,
                     extra={"subset_models": [[s, run.group_key(s)] for s in subsets]},
                     trained_keys=computed)


AFFINITY_STAGES = {"swola": _swola_affinity, "swola-meta": _meta_affinity, "tag": _joint_affinity, "datamaps": _joint_affinity,
                   "principled": _joint_affinity, "hoa": _hoa_affinity}
"""One stage per affinity method; each fills seconds.probe (probes or the method's trainings)."""


@flow(name="regroup", flow_run_name=_flow_run_name, log_prints=False)
def regroup(config: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Regroup the tasks of a dataset; returns the run summary (contracts.md)."""
    cfg = RunConfig.from_dict(config)
    orphans.sweep_at_start(cfg.store)
    orphans.claim_current(cfg.store)
    store = Store(cfg.store)
    results = store.results_dir()
    results.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()

    # 1. sample
    t0 = time.perf_counter()
    run, prepared, meta, names = _sample(cfg, run_id, store, results)
    seconds["sample"] = time.perf_counter() - t0
    log.info("sample: %d tasks, %d probe samples (%.1f s)", len(names), len(prepared.probe_idx), seconds["sample"])

    # 2-3. affinity: probes (or the method's trainings), then the matrix
    aff = AFFINITY_STAGES[cfg.method](run)
    seconds["probe"], seconds["affinity"] = aff.probe_seconds, aff.affinity_seconds
    log.info("affinity (%s): %d pairs computed, %d reused", cfg.method, aff.pairs_computed,
             aff.pairs_total - aff.pairs_computed)

    # 4. select groups
    t0 = time.perf_counter()
    sel = select_stage(run, aff)
    seconds["select"] = time.perf_counter() - t0
    log.info("select: %d groups", len(sel["groups"]))
    return _train_and_report(run, prepared, meta, aff, sel, seconds, t_start)


def make_run(cfg: RunConfig, run_id: str, store: Store, results: Path, dataset_key: str,
             inline: bool = False) -> tuple[_Run, Any, dict[str, Any]]:
    """The run's references once its prepared data is in the store: (run, prepared data without labels, meta)."""
    prepared = store.read_prepared(dataset_key, tasks=[])
    meta = store.read_prepared_meta(dataset_key)
    names = [t["name"] for t in meta["tasks"]]
    run = _Run(cfg=cfg, run_id=run_id, store=store, results=results, dataset_key=dataset_key,
               data_key=prepared.data_key(), names=names,
               label_fps=dict(zip(names, meta["label_fps"], strict=True)), inline=inline)
    return run, prepared, meta


def select_stage(run: _Run, aff: _Affinity) -> dict[str, Any]:
    """Groups from the affinity: the previous version extended (incremental), or a full selection.

    A full selection is HOA's exhaustive oracle on its measured subsets when asked, else the
    selector. The result's ``regroup`` says which happened and why.
    """
    from taskgrouping.tasks.steps import selection_result

    cfg = run.cfg
    if cfg.given_groups is not None:  # taskgrouping evaluate: the user's own grouping
        from taskgrouping.selectors.given import given_grouping

        return selection_result(given_grouping(cfg.given_groups, run.names), run.run_id) | {
            "regroup": {"mode": "given", "reason": "the groups of --groups FILE"}}
    why: dict[str, Any] = {"mode": "full", "reason": "--regroup full"}
    if cfg.regroup == "incremental" and not cfg.hoa.exhaustive:
        from taskgrouping.selectors.incremental import incremental_grouping
        from taskgrouping.versions import lineage_key

        previous = run.store.latest_version(lineage_key(cfg.data, cfg.method, cfg.selector, cfg.lineage))
        if previous is None:
            why = {"mode": "full", "reason": "first grouping of this lineage"}
        else:
            old = run.store.run_dir(previous["run_id"]) / "affinity.parquet"
            prev_aff = run.store.read_affinity(old) if intact(old) else None
            grouping, why = incremental_grouping(run.store.read_affinity(Path(aff.path)), previous, cfg.groups,
                                                 prev_aff, selector=cfg.selector)
            if grouping is not None:
                log.info("select: incremental (%s)", why["reason"])
                return selection_result(grouping, run.run_id) | {"regroup": why}
            log.info("select: full (%s)", why["reason"])
    return _full_selection(run, aff) | {"regroup": why}


def _full_selection(run: _Run, aff: _Affinity) -> dict[str, Any]:
    cfg = run.cfg
    step: Any
    args: tuple[Any, ...]
    if cfg.hoa.exhaustive:
        sel_key = keys.selection_key(aff.key, "hoa-oracle", cfg.groups, cfg.seed, cfg.select)
        overlap = cfg.select.overlap is not False
        step, args = oracle_step, (cfg.store, run.names, aff.extra["subset_models"], cfg.groups, overlap)
    else:
        sel_key = keys.selection_key(aff.key, cfg.selector, cfg.groups, cfg.seed, cfg.select)
        step, args = select_step, (cfg.store, aff.path, cfg.selector, cfg.groups, cfg.seed, asdict(cfg.select))
    bound: Any = step.fn if run.inline else step.with_options(result_storage=run.results)
    res: dict[str, Any] = bound(*args, cache_key=sel_key, run_id=run.run_id)
    return res


def _sample(cfg: RunConfig, run_id: str, store: Store, results: Path) -> tuple[_Run, Any, dict[str, Any], list[str]]:
    """The sample stage of the flow: load, split and store the data (a cached step)."""
    source_key = keys.source_key(cfg.data, file_hash(cfg.data), cfg.grouped_tasks, cfg.features, cfg.seed, cfg.samples,
                                 cfg.task_kinds, cfg.input_shape, cfg.image_spec(), cfg.impute,
                                 cfg.skip_unusable_tasks)
    sample_args = (cfg.store, cfg.data, cfg.grouped_tasks, cfg.features, cfg.seed, cfg.samples)
    data = _run_step(sample_step, results, lambda r: store.has_prepared(r["dataset_key"]), *sample_args,
                     cache_key=source_key, run_id=run_id, task_kinds=[list(k) for k in cfg.task_kinds] or None,
                     input_shape=list(cfg.input_shape) if cfg.input_shape else None,
                     images=None if cfg.images is None else asdict(cfg.image_spec()), impute=cfg.impute,
                     skip_unusable=cfg.skip_unusable_tasks)
    run, prepared, meta = make_run(cfg, run_id, store, results, data["dataset_key"])
    meta = {**meta, "warnings": data.get("warnings", [])}  # the table's, not the content's: kept with the sample step
    for w in meta["warnings"]:
        log.warning("column %r (%s): %s", w["column"], w["kind"], w["message"])
    return run, prepared, meta, run.names


def _train_and_report(run: _Run, prepared: Any, meta: dict[str, Any], aff: _Affinity, sel: dict[str, Any],
                      seconds: dict[str, float], t_start: float) -> dict[str, Any]:
    """Stages 5 and 6 of the flow: train one model per distinct group (and the baselines), then report."""
    cfg, store, results, run_id, names = run.cfg, run.store, run.results, run.run_id, run.names
    # 5. train one model per distinct group (grouped and the three baselines)
    t0 = time.perf_counter()
    weights = None
    if cfg.method == "datamaps" and cfg.datamaps.weighted:
        mem = memberships_step.with_options(result_storage=results)(
            cfg.store, aff.extra["maps"], sel["groups"], cfg.datamaps.fuzziness,
            cache_key=stable_hash("memberships", aff.key, sel["groups"], cfg.datamaps.fuzziness), run_id=run_id)
        order = positions(mem["tasks"], names)
        weights = [[row[i] for i in order] for row in mem["weights"]]
        store.write_memberships(run_id, names, np.array(weights).T)
    wanted = {"all": None, "grouped": {"grouped"}, "none": set()}[cfg.evaluate]
    meta_training = None
    if cfg.training == "meta":  # no multi-task models: one meta-initialisation per group instead
        wanted = set()
        key = stable_hash("meta-train", keys.meta_code(), run.data_key, [run.label_fps[t] for t in names],
                          cfg.data, file_hash(cfg.data), cfg.held_out_tasks, cfg.features, sel["groups"],
                          asdict(cfg.meta), asdict(cfg.meta_train), cfg.seed)
        with _gpu_annotation(cfg):
            res = _run_step(meta_train_step, results, lambda r: intact(Path(r["path"])), cfg.to_dict(),
                            run.dataset_key, sel["groups"], cache_key=key, run_id=run_id, submit=not run.inline,
                            inline=run.inline, name="meta-train")
        meta_training = res["result"]
    jobs: dict[str, list[GroupJob]] = {}
    for r in range(cfg.repeats):  # the grouping stays fixed; each repeat trains every setting with its own seed
        for setting, setting_jobs in evaluation_jobs(names, sel["groups"], sel["served"], cfg.seed, weights,
                                                     repeat=r).items():
            if wanted is None or setting in wanted:
                jobs.setdefault(setting, []).extend(setting_jobs)
    unique: dict[str, ModelJob] = {}
    for setting_jobs in jobs.values():
        for job in setting_jobs:
            key, model = _job_model(run, job)
            unique.setdefault(key, model)
    trained = _train_models(run, unique, "train") if unique else {}
    groups_trained = sum(1 for k, r in trained.items() if _computed(run, r) and k not in aff.trained_keys)
    seconds["train"] = time.perf_counter() - t0

    # 6. report
    seconds["total"] = time.perf_counter() - t_start
    counts = {"probes_computed": aff.probes_computed, "probes_reused": len(names) - aff.probes_computed,
              "pairs_computed": aff.pairs_computed, "pairs_reused": aff.pairs_total - aff.pairs_computed,
              "groups_trained": groups_trained, "groups_reused": len(unique) - groups_trained}

    def job_results(job: GroupJob) -> dict[str, Any]:
        key = _job_model(run, job)[0]
        rows = trained[key]["results"]
        return {"members": list(job.members), "serves": list(job.serves), "repeat": job.repeat, "key": key,
                "cost": trained[key]["cost"], "results": [r for r in rows if r["task"] in job.serves]}

    group_results = {setting: [job_results(j) for j in setting_jobs] for setting, setting_jobs in jobs.items()}
    models = {str(sel["served"][j.serves[0]]): str(store.model_dir(_job_model(run, j)[0]))
              for j in jobs.get("grouped", []) if j.repeat == 0}
    # every exportable setting's first-repeat models, for ``taskgrouping export --setting``
    setting_models = {s: [{"members": list(j.members), "serves": list(j.serves),
                           "folder": str(store.model_dir(_job_model(run, j)[0]))}
                          for j in setting_jobs if j.repeat == 0]
                      for s, setting_jobs in jobs.items() if s in ("grouped", "all_together", "single_task")}
    summary: dict[str, Any] = report_step(*opaque([
        cfg.to_dict(), run_id, names, sel, aff.path, group_results, counts, seconds,
        {"probe_bytes_mean": aff.extra.get("probe_bytes_mean"), "ground_truth": meta.get("ground_truth"),
         "method_info": aff.extra.get("method_info"), "features": meta["feature_names"],
         "task_kinds": {t["name"]: {"kind": t["kind"], "reason": t.get("reason", "")} for t in meta["tasks"]},
         "probe_samples": len(prepared.probe_idx), "train_rows": int((prepared.split == 0).sum()),
         "test_counts": _chance_refs(store, run.dataset_key, meta, [
             (j.serves[0], _job_model(run, j)[0]) for j in jobs.get("single_task", []) if j.repeat == 0]),
         "trunk": _trunk_info(cfg, meta),
         "fidelity": _fidelity(run, aff),
         "models": models, "dataset_key": run.dataset_key, "distance": aff.extra.get("distance"),
         "warnings": meta.get("warnings", []), "setting_models": setting_models, "pairs": aff.extra.get("pairs"),
         "meta_training": meta_training, "head": _head_info(cfg, aff)}]))
    return summary


def _head_info(cfg: RunConfig, aff: _Affinity) -> dict[str, Any] | None:
    """The C every SWOLA head was fitted with (the joint head fit), for the report; None otherwise."""
    c = aff.extra.get("head_c")
    if c is None:
        return None
    return {"c": float(c), "grid": list(cfg.swola.head_cs), "folds": cfg.swola.head_folds,
            "scored": int(aff.extra.get("heads_scored") or 0), "given": cfg.swola.head_c is not None}


def _chance_refs(store: Store, dataset_key: str, meta: dict[str, Any],
                 single: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """What each single-task model's test result is compared with to flag it at chance (:func:`~taskgrouping.report.chance_tasks`).

    ``single``: ``(task, model key)`` of the single-task models. Binary and multi-class
    tasks get their test split's class counts; a regression task the paired z of the
    training mean's per-sample squared error minus the model's, and the mean's RMSE.
    """
    if not single:
        return {}
    kinds = {t["name"]: t["kind"] for t in meta["tasks"]}
    names = [t for t, _ in single]
    data = store.read_prepared(dataset_key, tasks=names)
    out: dict[str, dict[str, Any]] = {}
    for j, (task, key) in enumerate(single):
        test = data.parts(j) == 3
        y = data.y[test, j]
        kind = kinds[task]
        if kind == "binary":
            out[task] = {"kind": kind, "counts": [int(np.sum(y == 1)), int(np.sum(y == 0))]}
        elif kind == "multiclass":
            n_classes = int(data.tasks[j].n_classes)
            out[task] = {"kind": kind, "counts": np.bincount(y.astype(np.int64), minlength=n_classes).tolist()}
        else:
            rows, losses = store.read_model_heldout(key).get(task, {}).get("test", (np.array([]), np.array([])))
            if len(rows) < 2:
                continue
            mean_loss = data.y[rows, j].astype(np.float64) ** 2  # the training mean is 0 once standardised
            d = mean_loss - losses.astype(np.float64)
            sd = float(d.std(ddof=1))
            z = float(d.mean() / (sd / np.sqrt(d.size))) if sd > 0 else (np.inf if d.mean() > 0 else -np.inf)
            out[task] = {"kind": kind, "z": z,
                         "rmse_mean": float(np.sqrt(mean_loss.mean()) * float(data.y_scale[j]))}
    return out


def _fidelity(run: _Run, aff: _Affinity) -> dict[str, Any] | None:
    """The affinity against the transfer measured by stored single and pair models, when the store has them all.

    A ``--method hoa`` run has trained them (and any run on a store where one did, on
    the same data and settings); nothing is trained for this. Spearman and top-3 as
    ``bench/fidelity.py`` (:func:`~taskgrouping.methods.transfer.fidelity`).
    """
    from taskgrouping.methods.transfer import MAX_TASKS, fidelity, measured_transfer, model_keys

    names = run.names
    if not 3 <= len(names) <= MAX_TASKS or run.cfg.training == "meta" or (aff.extra.get("pairs") or {}).get(
            "form") == "neighbours":
        return None
    wanted = model_keys(run.store, run.dataset_key, run.cfg.train, run.cfg.seed, 1, names)
    if not all(run.store.has_model(k) for k in wanted.values()):
        return None
    tr = measured_transfer(run.store, run.dataset_key, run.cfg.train, run.cfg.seed, 1, tasks=names,
                           train_missing=False)
    if tr is None:
        return None
    f: dict[str, Any] = dict(fidelity(run.store.read_affinity(Path(aff.path)), tr, k=3))
    if not np.isfinite(f["spearman"]):
        f["spearman"] = None  # a constant matrix has no ranks (and JSON has no NaN)
    off = ~np.eye(len(names), dtype=bool)
    return f | {"nonzero": float(np.mean((tr.lo[off] > 0) | (tr.hi[off] < 0))), "repeats": 1,
                "source": "the store's single-task and pair models (selection rows)"}


def _trunk_info(cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """The trunk the run used, for the report: name as given and resolved, input shape, checkpoint, parameters.

    The parameters are counted on the trunk as every model builds it (BatchNorm's running
    statistics are state, not parameters).
    """
    from taskgrouping.models.train import MultiTaskModel
    from taskgrouping.models.trunks import resolve_trunk_name

    shape = list(meta.get("input_shape") or [len(meta.get("x_mean") or meta["feature_names"])])
    in_dim = int(np.prod(shape))
    params = None
    with contextlib.suppress(Exception):  # a trunk that cannot be built failed long before this
        model = MultiTaskModel(in_dim, [], cfg.train.hidden, cfg.train.layers, cfg.seed, cfg.trunk,
                               input_shape=tuple(shape) if len(shape) > 1 else None)
        params = int(sum(p.numel() for p in model.trunk.parameters()))
    return {"name": cfg.trunk, "resolved": resolve_trunk_name(cfg.trunk, tuple(shape)), "input_shape": shape,
            "checkpoint": cfg.checkpoint, "parameters": params}


def run_regroup(cfg: RunConfig, run_id: str, address: str | None = None) -> dict[str, Any]:
    """Run the flow with the configured Dask task runner (the caller provides the Prefect API).

    ``address``: a scheduler already started for this run (:func:`start_cluster`).
    """
    from taskgrouping.data.load import release_kept

    Path(cfg.store).mkdir(parents=True, exist_ok=True)
    try:
        with logs_to_prefect():
            return regroup.with_options(task_runner=make_task_runner(cfg, address))(cfg.to_dict(), run_id)
    finally:
        release_kept()
        orphans.release(cfg.store)


class _InRun(logging.Filter):
    """Pass a record only inside a flow or task run (Prefect's API handler has nowhere else to send it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


@contextlib.contextmanager
def logs_to_prefect() -> Any:
    """Send the ``taskgrouping`` progress and warning lines to the flow run's logs in the UI too.

    The CLI prints them on stderr (``[taskgrouping] ...``); a served or deployed run had
    none in the UI ("This run didn't generate logs"). Prefect's own API handler is added
    to the ``taskgrouping`` logger for the run (records outside a run are not sent).
    """
    from prefect.logging.handlers import APILogHandler

    log = logging.getLogger("taskgrouping")
    handler = APILogHandler()
    handler.addFilter(_InRun())
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    level = log.level
    if level == logging.NOTSET or level > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
