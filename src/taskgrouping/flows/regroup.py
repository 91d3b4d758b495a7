"""The ``regroup`` flow: sample -> probe every task -> affinity -> select -> train per group -> report.

Only sequencing lives here; the math is in ``methods/``, ``selectors/`` and ``models/``,
the step wrappers in ``tasks/``, and every cache key in :mod:`taskgrouping.keys`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import as_completed

from taskgrouping import keys
from taskgrouping.config import RunConfig
from taskgrouping.storage import Store
from taskgrouping.tasks.report import report_step
from taskgrouping.tasks.steps import affinity_step, probe_step, sample_step, select_step, train_step

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


def make_task_runner(cfg: RunConfig) -> Any:
    """A DaskTaskRunner: an existing scheduler, or a local cluster of ``workers`` x 1 thread."""
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    kwargs: dict[str, Any] = {"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                              "dashboard_address": None, "silence_logs": logging.WARNING}
    if cfg.device == "cuda":
        kwargs["resources"] = {"GPU": 1}
    return DaskTaskRunner(cluster_kwargs=kwargs)


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


@flow(name="regroup", flow_run_name=_flow_run_name, log_prints=False)
def regroup(config: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Regroup the tasks of a dataset; returns the run summary (contracts.md)."""
    cfg = RunConfig.from_dict(config)
    store = Store(cfg.store)
    results = store.results_dir()
    results.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()

    # 1. sample
    t0 = time.perf_counter()
    source_key = keys.source_key(cfg.data, file_hash(cfg.data), cfg.tasks, cfg.features, cfg.seed, cfg.samples)
    sample_args = (cfg.store, cfg.data, cfg.tasks, cfg.features, cfg.seed, cfg.samples)
    data = sample_step.with_options(result_storage=results)(*sample_args, cache_key=source_key, run_id=run_id)
    if not store.has_prepared(data["dataset_key"]):  # a cached record whose files were removed
        data = sample_step.with_options(result_storage=results, refresh_cache=True)(
            *sample_args, cache_key=source_key, run_id=run_id)
    prepared = store.read_prepared(data["dataset_key"], tasks=[])
    meta = store.read_prepared_meta(data["dataset_key"])
    names = [t["name"] for t in meta["tasks"]]
    label_fps = dict(zip(names, meta["label_fps"], strict=True))
    data_key = prepared.data_key()
    seconds["sample"] = time.perf_counter() - t0
    log.info("sample: %d tasks, %d probe samples (%.1f s)", len(names), len(prepared.probe_idx), seconds["sample"])

    # 2. probe every task, one step per ML task, on the Dask workers
    t0 = time.perf_counter()
    swola_settings = asdict(cfg.swola)
    probe_keys = {t: keys.probe_key(data_key, t, label_fps[t], cfg.swola, cfg.seed) for t in names}

    def submit_probes(tasks: list[str], refresh: bool = False) -> list[Any]:
        with _gpu_annotation(cfg):
            return [probe_step.with_options(result_storage=results, refresh_cache=refresh,
                                            task_run_name=f"probe {t}").submit(
                cfg.store, data["dataset_key"], t, swola_settings, cfg.seed, cfg.device,
                cache_key=probe_keys[t], run_id=run_id) for t in tasks]

    futures = submit_probes(names)
    probes: dict[str, dict[str, Any]] = {}
    for done, fut in enumerate(as_completed(futures), start=1):
        res = fut.result()
        probes[res["task"]] = res
        if done == len(futures) or done % max(1, len(futures) // 4) == 0:
            log.info("probe: %d/%d tasks", done, len(futures))
    gone = [t for t in names if not store.has_probe(probe_keys[t])]
    if gone:  # cached records whose probe files were removed: compute them again
        log.info("probe: %d probe files missing from the store, recomputing", len(gone))
        probes.update({r["task"]: r for r in (f.result() for f in submit_probes(gone, refresh=True))})
    computed = sum(1 for r in probes.values() if r["computed"] and r["run_id"] == run_id)
    seconds["probe"] = time.perf_counter() - t0

    # 3. affinity (only pairs not already in the store's pair cache)
    t0 = time.perf_counter()
    ordered = [[t, probe_keys[t]] for t in names]
    aff_key = keys.affinity_key([(t, k) for t, k in ordered], cfg.swola, cfg.seed)
    aff_args = (cfg.store, data["dataset_key"], ordered, swola_settings, cfg.seed, cfg.device,
                keys.pairs_key(cfg.swola, cfg.seed))
    aff = affinity_step.with_options(result_storage=results)(*aff_args, cache_key=aff_key, run_id=run_id)
    if not Path(aff["path"]).exists():
        aff = affinity_step.with_options(result_storage=results, refresh_cache=True)(
            *aff_args, cache_key=aff_key, run_id=run_id)
    pairs_total = len(names) * (len(names) - 1) // 2
    pairs_computed = aff["pairs_computed"] if aff["run_id"] == run_id else 0
    seconds["affinity"] = time.perf_counter() - t0
    log.info("affinity: %d pairs computed, %d reused", pairs_computed, pairs_total - pairs_computed)

    # 4. select groups
    t0 = time.perf_counter()
    sel = select_step.with_options(result_storage=results)(cfg.store, aff["path"], cfg.selector, cfg.groups, cfg.seed,
                                          cache_key=keys.selection_key(aff_key, cfg.selector, cfg.groups, cfg.seed),
                                          run_id=run_id)
    seconds["select"] = time.perf_counter() - t0
    log.info("select: %d groups", len(sel["groups"]))

    # 5. train one model per distinct group (grouped and the three baselines)
    t0 = time.perf_counter()
    from taskgrouping.models.evaluate import evaluation_groupings

    settings_groups = evaluation_groupings(names, sel["groups"], cfg.seed)
    train_settings = asdict(cfg.train)

    def group_key(members: list[str]) -> str:
        return keys.group_key(data_key, [(m, label_fps[m]) for m in members], cfg.train, cfg.seed)

    unique: dict[str, list[str]] = {}
    for groups in settings_groups.values():
        for members in groups:
            unique.setdefault(group_key(members), sorted(members, key=names.index))

    def submit_training(group_keys: list[str], refresh: bool = False) -> list[Any]:
        with _gpu_annotation(cfg):
            return [train_step.with_options(result_storage=results, refresh_cache=refresh,
                                            task_run_name=f"train {len(unique[k])} tasks").submit(
                cfg.store, data["dataset_key"], unique[k], train_settings, cfg.seed, cfg.device,
                cache_key=k, run_id=run_id) for k in group_keys]

    train_futures = submit_training(list(unique))
    trained: dict[str, dict[str, Any]] = {}
    for done, fut in enumerate(as_completed(train_futures), start=1):
        res = fut.result()
        trained[res["key"]] = res
        if done == len(train_futures) or done % max(1, len(train_futures) // 5) == 0:
            log.info("train: %d/%d group models", done, len(train_futures))
    gone = [k for k in unique if not store.has_model(k)]
    if gone:  # cached records whose model files were removed: train them again
        log.info("train: %d group models missing from the store, retraining", len(gone))
        trained.update({r["key"]: r for r in (f.result() for f in submit_training(gone, refresh=True))})
    groups_trained = sum(1 for r in trained.values() if r["computed"] and r["run_id"] == run_id)
    seconds["train"] = time.perf_counter() - t0

    # 6. report
    seconds["total"] = time.perf_counter() - t_start
    counts = {"probes_computed": computed, "probes_reused": len(names) - computed,
              "pairs_computed": pairs_computed, "pairs_reused": pairs_total - pairs_computed,
              "groups_trained": groups_trained, "groups_reused": len(unique) - groups_trained}
    group_results = {
        setting: [{"members": m, "results": trained[group_key(m)]["results"]} for m in groups]
        for setting, groups in settings_groups.items()
    }
    probe_bytes = [r["bytes"] for r in probes.values()]
    summary: dict[str, Any] = report_step(
        cfg.to_dict(), run_id, names, sel, aff["path"], group_results, counts, seconds,
        {"probe_bytes_mean": sum(probe_bytes) / max(1, len(probe_bytes)),
         "ground_truth": meta.get("ground_truth")})
    return summary


def run_regroup(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """Run the flow with the configured Dask task runner (the caller provides the Prefect API)."""
    Path(cfg.store).mkdir(parents=True, exist_ok=True)
    return regroup.with_options(task_runner=make_task_runner(cfg))(cfg.to_dict(), run_id)
