"""The regroup DAG's steps.

Each step takes references (store path, keys, names) and returns a small JSON-able
dict, never tensors. ``cache_key`` is computed by the flow from content hashes
(:mod:`taskgrouping.keys`); a step whose record exists is not run again. A step
that finds its output already in the store does not recompute it either. Each
returned dict carries ``run_id`` of the run that computed it, so a cached result
is recognisable as reused.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prefect import task

from taskgrouping import faults, keys
from taskgrouping.data.dataset import prepare
from taskgrouping.data.images import ImageSpec
from taskgrouping.data.load import load_dataset
from taskgrouping.methods.datamaps import DatamapSettings, datamap_affinity, memberships
from taskgrouping.methods.hoa import hoa_gains, subset_scores
from taskgrouping.methods.pairs import incremental_matrix
from taskgrouping.methods.principled import PrincipledSettings, principled_affinity
from taskgrouping.methods.swola import (
    SwolaSettings,
    affinity_from_distances,
    distances_from_probes,
    head_cv,
    probe_tasks,
)
from taskgrouping.methods.tag import TagSettings, tag_affinity
from taskgrouping.models.train import TrainSettings, train_group
from taskgrouping.selectors import Grouping, SelectSettings, get_selector
from taskgrouping.selectors.network import select_measured
from taskgrouping.storage import Store
from taskgrouping.storage.integrity import intact
from taskgrouping.storage.store import StoredProbes


def _key_from_params(context: Any, parameters: dict[str, Any]) -> str:
    return str(parameters["cache_key"])


def _single_thread() -> None:
    """On a Dask worker, keep torch to one thread (workers x threads = cores)."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _naming(what: str) -> Iterator[None]:
    """Re-raise a failure with the ML task and step named (shown in the UI and by the CLI)."""
    try:
        yield
    except Exception as exc:
        raise RuntimeError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _joint_affinity(method: str, data: Any, settings: dict[str, Any], train: TrainSettings, seed: int,
                    device: str) -> tuple[Any, np.ndarray | None, dict[str, Any]]:
    if method == "tag":
        affinity, info = tag_affinity(data, TagSettings(**settings), train, seed, device)
        return affinity, None, info
    if method == "principled":
        affinity, info = principled_affinity(data, PrincipledSettings(**settings), train, seed, device)
        return affinity, None, info
    return datamap_affinity(data, DatamapSettings(**settings), train, seed, device)


STEP_OPTIONS: dict[str, Any] = {"cache_key_fn": _key_from_params, "persist_result": True,
                                "result_serializer": "json"}


@task(name="sample", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def sample_step(store: str, source: str, tasks: str | None, features: str | None, seed: int,
                samples: int, cache_key: str, run_id: str,
                task_kinds: list[list[str]] | None = None, input_shape: list[int] | None = None,
                images: dict[str, Any] | None = None, impute: str = "none",
                skip_unusable: bool = False) -> dict[str, Any]:
    """Load and validate the data, split it, draw the probe sample and write it to the store.

    The prepared data is stored under its content fingerprint, so an edited file
    (same columns, new rows) gets a new key and nothing stale is reused. The result
    carries the table's column ``warnings`` (cached with it: they follow the file's content).
    """
    st = Store(store)
    kinds = tuple((str(p), str(k)) for p, k in task_kinds or ())
    shape = tuple(int(s) for s in input_shape) if input_shape else None
    spec = None if images is None else ImageSpec(images["column"], images.get("root"),
                                                 tuple(images["size"]) if images.get("size") else None)  # type: ignore[arg-type]
    ds = load_dataset(source, tasks, features, kinds, shape, spec, st.image_cache, impute=impute,
                      skip_unusable=skip_unusable)
    data = prepare(ds, seed, samples)
    return {"dataset_key": store_prepared(st, data, samples), "run_id": run_id, "warnings": list(ds.warnings)}


def store_prepared(st: Store, data: Any, samples: int) -> str:
    """Write prepared data under its content key unless it is there; return the key (sample step and API)."""
    key = keys.dataset_key(data.features_fp, data.label_fps, data.seed, samples)
    if not st.has_prepared(key):
        st.write_prepared(key, data)
        faults.reached(st.root, "sample")
    return key


def _probe_batch(st: Store, dataset_key: str, todo: list[tuple[str, str]], s: SwolaSettings, seed: int,
                 device: str) -> None:
    """Probe ``todo`` ([(task, probe key)]) in one batch and write each probe.

    If the batch fails, its tasks are probed one by one, so the error names the ML
    task at fault and the tasks before it are kept.
    """
    data = st.read_prepared(dataset_key, tasks=[t for t, _ in todo])
    rows = data.probe_idx
    x, y = data.x[rows], data.y[rows]
    maps = _trunk_maps(st, data, x, s, seed, device, len(todo))
    try:
        probes = probe_tasks(x, y, data.tasks, s, seed, device, data.shape, maps=maps)
    except Exception:
        if len(todo) == 1:
            with _naming(f"probe of ML task {todo[0][0]!r}"):
                raise
        for b, (name, key) in enumerate(todo):
            with _naming(f"probe of ML task {name!r}"):
                probe = probe_tasks(x, y[:, b : b + 1], [data.tasks[b]], s, seed, device, data.shape, maps=maps)[0]
            st.write_probe(key, probe, {"task": name, "settings": s.probe_part(), "seed": seed})
            faults.reached(st.root, "probe")
        return
    for (name, key), probe in zip(todo, probes, strict=True):
        st.write_probe(key, probe, {"task": name, "settings": s.probe_part(), "seed": seed})
        faults.reached(st.root, "probe")


def _trunk_maps(st: Store, data: Any, x: np.ndarray, s: SwolaSettings, seed: int, device: str, tasks: int) -> Any:
    """The probe trunk's sketch maps from the store (computed and stored by the first batch of F tasks), or None.

    None for the MLP, for exact-gradient probes, and while no batch of at least F tasks
    has computed them (a smaller batch projects its own gradients: the same sketches).
    The maps depend on the trunk and the probe rows only, so every later batch and every
    task added later reuses them.
    """
    from taskgrouping.methods.swola import generic_trunk, trunk_sketch_maps

    shape = tuple(data.shape) if data.shape else (x.shape[1],)
    if not generic_trunk(s, shape):
        return None
    key = keys.trunk_maps_key(data.data_key(), s, seed)
    stored = st.read_trunk_maps(key)
    if stored is not None:
        import torch

        return torch.from_numpy(stored)
    with _naming("the probe trunk's sketch maps"):
        maps = trunk_sketch_maps(x, s, seed, device, shape, tasks)
    if maps is not None:
        st.write_trunk_maps(key, maps.cpu().numpy())
    return maps


@task(name="trunk-maps", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def trunk_maps_step(store: str, dataset_key: str, settings: dict[str, Any], seed: int, device: str, tasks: int,
                    cache_key: str, run_id: str) -> dict[str, Any]:
    """The probe trunk's sketch maps, once, before ``tasks`` tasks are probed in batches (:func:`_trunk_maps`).

    ``path`` is the maps file, or None when the probes need none (exact gradients, or
    fewer tasks than the trunk's features).
    """
    _single_thread()
    st = Store(store)
    s = SwolaSettings(**settings)
    data = st.read_prepared(dataset_key, tasks=[])
    path = st.trunk_maps_path(keys.trunk_maps_key(data.data_key(), s, seed))
    had = intact(path)
    maps = _trunk_maps(st, data, data.x[data.probe_idx], s, seed, device, tasks)
    return {"path": None if maps is None else str(path), "computed": maps is not None and not had, "run_id": run_id}


@task(name="head-cv", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def head_cv_step(store: str, dataset_key: str, todo: list[list[str]], settings: dict[str, Any], seed: int,
                 device: str, cache_key: str, run_id: str) -> dict[str, Any]:
    """Score every C of the head grid for ML tasks ``[[task, head-CV key], ...]`` (one batched solve) and store it.

    Each task's loss vector depends on that task alone; the joint C over a run's tasks
    is chosen from the stored vectors (:func:`taskgrouping.methods.heads.choose_c`).
    """
    st = Store(store)
    t0 = time.perf_counter()
    data = st.read_prepared(dataset_key, tasks=[t for t, _ in todo])
    rows = data.probe_idx
    with _naming("cross-validation of the probe heads"):
        losses = head_cv(data.x[rows], data.y[rows], data.tasks, SwolaSettings(**settings), seed, device, data.shape)
    st.add_head_cv({k: losses[b] for b, (_, k) in enumerate(todo)})
    return {"tasks": [t for t, _ in todo], "run_id": run_id, "seconds": time.perf_counter() - t0}


@task(name="probe", retries=2, retry_delay_seconds=1, **STEP_OPTIONS)
def probe_step(store: str, dataset_key: str, probes: list[list[str]], settings: dict[str, Any], seed: int,
               device: str, cache_key: str, run_id: str) -> dict[str, Any]:
    """Probe a batch of ML tasks (SWOLA) and store each one's backpropagated errors as Parquet.

    ``probes`` is ``[[task, probe key], ...]``; tasks whose probe file exists are skipped,
    so a retried or resumed batch redoes only what is missing.
    """
    _single_thread()
    st = Store(store)
    t0 = time.perf_counter()
    todo = [(t, k) for t, k in probes if not st.has_probe(k)]
    if todo:
        _probe_batch(st, dataset_key, todo, SwolaSettings(**settings), seed, device)
    return {"tasks": [t for t, _ in probes], "computed": [t for t, _ in todo], "run_id": run_id,
            "seconds": time.perf_counter() - t0}


@task(name="affinity", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def affinity_step(store: str, dataset_key: str, probes: list[list[str]], settings: dict[str, Any],
                  seed: int, device: str, pairs_key: str, cache_key: str, run_id: str,
                  sparse: bool = False) -> dict[str, Any]:
    """SWOLA distances between all probed tasks, computing only pairs not in the pair cache.

    ``sparse``: each task's nearest partners only (:mod:`taskgrouping.methods.sparse`).
    """
    st = Store(store)
    s = SwolaSettings(**settings)
    names = [p[0] for p in probes]
    probe_keys = [p[1] for p in probes]
    if sparse:
        return _sparse_affinity(st, dataset_key, names, probe_keys, s, seed, device, pairs_key, cache_key, run_id)

    def compute_rows(rows: list[int]) -> np.ndarray:
        data = st.read_prepared(dataset_key, tasks=[])
        # read as the step gets to them, one after the other: a probe is one read and zero-copy
        # views (1,000 in 0.07 s); a thread pool took 0.21 s (reads too short to gain from
        # releasing the GIL), and holding all of them first faulted in 250 MiB of fresh pages
        return distances_from_probes(StoredProbes(st, probe_keys), data.x[data.probe_idx], s, seed, rows=rows,
                                     device=device)

    return _incremental_affinity(st, names, probe_keys, pairs_key, cache_key, compute_rows, run_id)


def _sparse_affinity(st: Store, dataset_key: str, names: list[str], probe_keys: list[str], s: SwolaSettings,
                     seed: int, device: str, pairs_key: str, cache_key: str, run_id: str) -> dict[str, Any]:
    """The neighbour affinity: sketch candidates, exact distances for them (cached pairs read), written.

    Each probe's sketch is stored (``sketches/``), so a run that adds tasks sketches only
    them, and reads the probes of the pairs it must compute, not every probe.
    """
    import torch

    from taskgrouping.methods.pairs import PairCache
    from taskgrouping.methods.sparse import neighbours_from_sketches

    data = st.read_prepared(dataset_key, tasks=[])
    x = data.x[data.probe_idx]
    t = len(names)
    sk_key = keys.sketch_key(pairs_key)
    n = len(data.probe_idx)
    sketch, sq, masks, missing = sketch_table(st, sk_key, probe_keys, n)
    held: dict[str, Any] = {}
    if len(missing):
        keys_missing = [probe_keys[i] for i in missing]
        errors, norms, m = _probe_rows(st, keys_missing, x, s, seed, device)
        sk, sq_m = _sketch_into_store(st, sk_key, keys_missing, errors, m, seed)
        held = {"idx": missing, "flat": errors.view(len(missing), -1), "norms": norms}
        sketch[missing], sq[missing], masks[missing] = sk.cpu(), sq_m.cpu(), m.cpu()
        del errors

    parts: dict[int, tuple[Any, Any]] = {}  # rows read so far: each probe is read once a run, not once a round

    def exact_rows(idx: np.ndarray) -> tuple[Any, Any]:
        """The rows asked for: held ones (this run's new probes), the others read now or earlier this run."""
        if len(held) and len(held["idx"]) == t:
            return held["flat"], held["norms"]  # every row is in memory already: all of them, no copy
        pos_held = {int(v): j for j, v in enumerate(held["idx"])} if held else {}
        read = [i for i in idx.tolist() if i not in pos_held and i not in parts]
        if read:
            e, nr, _ = _probe_rows(st, [probe_keys[i] for i in read], x, s, seed, device)
            fr = e.view(len(read), -1)
            parts.update({i: (fr[j], nr[j]) for j, i in enumerate(read)})
        for i in idx.tolist():
            if i in pos_held:
                parts[i] = (held["flat"][pos_held[i]], held["norms"][pos_held[i]])
        flat = torch.stack([parts[i][0] for i in idx.tolist()])
        norms = torch.stack([parts[i][1] for i in idx.tolist()])
        return flat, norms

    lists, rows_searched, search_seconds = candidate_lists(st, sk_key, names, probe_keys, sketch, sq, masks)
    cached = st.read_pairs(pairs_key)
    aff, new = neighbours_from_sketches(names, sketch, sq, masks, exact_rows, s.lr / s.trunks,
                                        cached=lambda a, b: cached.lookup_pairs(probe_keys, a, b), lists=lists)
    aff.info["candidate_rows"] = rows_searched
    aff.info["seconds"]["sketch"] = round(aff.info["seconds"]["sketch"] + search_seconds, 3)
    held.clear()
    parts.clear()
    if len(new["a"]):
        st.add_pairs(pairs_key, PairCache().with_pairs(probe_keys, new["a"], new["b"], new["d"]))
        faults.reached(st.root, "affinity")
    path = st.write_affinity(st.affinity_path(cache_key), aff)
    aff.info["sketched"] = int(len(missing))
    return {"path": str(path), "pairs_computed": int(len(new["a"])),
            "pairs_reused": int(new["pairs_exact"] - len(new["a"])), "pairs_exact": int(new["pairs_exact"]),
            "sparse": aff.info, "run_id": run_id}


def candidate_lists(st: Store, sk_key: str, names: list[str], probe_keys: list[str], sketch: Any, sq: Any,
                    masks: Any) -> tuple[np.ndarray, int, float]:
    """Every task's sketch candidates, from the kept lists sharing the most tasks (only new rows searched), kept.

    Returns ``(lists (T, c), rows searched against every task, seconds)``.
    """
    from taskgrouping.methods.sparse import (
        candidate_count,
        canonical_rank,
        stored_count,
        update_candidates,
    )

    t0 = time.perf_counter()
    t = len(names)
    c = max(stored_count(t), candidate_count(t))
    base = st.read_candidate_base(sk_key, probe_keys)
    lists, rows = update_candidates(probe_keys, sketch, None if bool(masks.all()) else sq, masks, c,
                                    canonical_rank(names), base)
    if base is None or rows or base.keys != lists.keys:  # the same tasks again (the cluster path, then the
        st.add_candidate_lists(sk_key, lists)           # affinity step): the kept file already holds these lists
    return lists.idx, rows, time.perf_counter() - t0


def _probe_rows(st: Store, probe_keys: list[str], x: np.ndarray, s: SwolaSettings, seed: int,
                device: str) -> tuple[Any, Any, Any]:
    """The stored probes' exact rows: (errors (B, n, m), per-sample L1 norms (B, n), masks (B, n))."""
    from taskgrouping.methods.sparse import sample_norms
    from taskgrouping.methods.swola import weighted_rows

    errors, m = weighted_rows(StoredProbes(st, probe_keys), x, s, seed, device)
    return errors, sample_norms(errors), m


def _sketch_into_store(st: Store, sk_key: str, probe_keys: list[str], errors: Any, masks: Any,
                       seed: int) -> tuple[Any, Any]:
    """Sketch rows ``errors`` (B, n, m) and append the parts to the store; returns (sketch, sq)."""
    from taskgrouping.methods.sparse import SKETCH_WIDTH, sketch_parts

    sk, sq = sketch_parts(errors.view(len(probe_keys), -1), masks, SKETCH_WIDTH, seed)
    st.add_sketches(sk_key, probe_keys, sk.cpu().numpy(), sq.cpu().numpy(), masks.cpu().numpy())
    return sk, sq


def sketch_table(st: Store, sk_key: str, probe_keys: list[str], n: int) -> tuple[Any, Any, Any, np.ndarray]:
    """The stored sketch parts of ``probe_keys`` in their order: (sketch, sq, masks, indices of those not stored).

    The rows of tasks not stored are zero (the caller sketches them).
    """
    import torch

    from taskgrouping.methods.sparse import SKETCH_WIDTH

    t = len(probe_keys)
    stored_keys, stored_sk, stored_sq, stored_lab = st.read_sketches(sk_key)
    at = {k: i for i, k in enumerate(stored_keys)}
    missing = np.array([i for i, k in enumerate(probe_keys) if k not in at], np.int64)
    sketch = torch.zeros((t, SKETCH_WIDTH), dtype=torch.float32)
    sq = torch.zeros((t, n), dtype=torch.float64)
    masks = torch.zeros((t, n), dtype=torch.bool)
    have = np.setdiff1d(np.arange(t), missing)
    if len(have):
        rows = np.array([at[probe_keys[i]] for i in have], np.int64)
        sketch[have] = torch.as_tensor(stored_sk[rows])
        sq[have] = torch.as_tensor(stored_sq[rows].astype(np.float64))
        masks[have] = torch.as_tensor(stored_lab[rows])
    return sketch, sq, masks, missing


@task(name="sketch", retries=2, retry_delay_seconds=1, **STEP_OPTIONS)
def sketch_step(store: str, dataset_key: str, probes: list[list[str]], settings: dict[str, Any], seed: int,
                device: str, sketch_key: str, cache_key: str, run_id: str) -> dict[str, Any]:
    """Sketch a batch of probes (the sparse step's candidate parts, ``[[task, probe key], ...]``) into the store."""
    _single_thread()
    st = Store(store)
    data = st.read_prepared(dataset_key, tasks=[])
    pk = [k for _, k in probes]
    errors, _, m = _probe_rows(st, pk, data.x[data.probe_idx], SwolaSettings(**settings), seed, device)
    _sketch_into_store(st, sketch_key, pk, errors, m, seed)
    return {"tasks": [t for t, _ in probes], "run_id": run_id}


@task(name="pair-tile", retries=2, retry_delay_seconds=1, **STEP_OPTIONS)
def pair_tile_step(store: str, dataset_key: str, probe_keys: list[str], a: list[int], b: list[int],
                   settings: dict[str, Any], seed: int, device: str, pairs_key: str, cache_key: str,
                   run_id: str) -> dict[str, Any]:
    """Exact SWOLA distances of one tile of pairs (indices into ``probe_keys``), appended to the pair cache.

    A tile's rows are two bands of tasks at most (:func:`~taskgrouping.methods.sparse.tiles`),
    so a worker's memory is bounded; a lost worker costs its tile only (Dask runs it again
    elsewhere, and pairs another run already cached are not lost either way).
    """
    from taskgrouping.methods.pairs import PairCache
    from taskgrouping.methods.sparse import exact_pairs

    _single_thread()
    st = Store(store)
    s = SwolaSettings(**settings)
    data = st.read_prepared(dataset_key, tasks=[])
    errors, norms, m = _probe_rows(st, probe_keys, data.x[data.probe_idx], s, seed, device)
    ia, ib = np.asarray(a, np.int64), np.asarray(b, np.int64)
    d = exact_pairs(errors.view(len(probe_keys), -1), norms, m, ia, ib) * (s.lr / s.trunks)
    st.add_pairs(pairs_key, PairCache().with_pairs(probe_keys, ia, ib, d))
    faults.reached(st.root, "pairs")
    return {"pairs": len(a), "run_id": run_id}


def _incremental_affinity(st: Store, names: list[str], probe_keys: list[str], pairs_key: str, cache_key: str,
                          compute_rows: Callable[[list[int]], np.ndarray], run_id: str) -> dict[str, Any]:
    """The distance matrix from the pair cache plus the rows ``compute_rows`` fills in; written, and the new pairs added.

    Only the new pairs are appended, so a concurrent run's pairs are never overwritten.
    """
    cached = st.read_pairs(pairs_key)
    d, cache, n_missing = incremental_matrix(probe_keys, cached, compute_rows)
    if n_missing:
        st.add_pairs(pairs_key, cache.since(len(cached)))
        faults.reached(st.root, "affinity")
    path = st.write_affinity(st.affinity_path(cache_key), affinity_from_distances(names, d))
    t = len(names)
    return {"path": str(path), "pairs_computed": n_missing, "pairs_reused": t * (t - 1) // 2 - n_missing,
            "run_id": run_id}


@task(name="meta-probe", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def meta_probe_step(store: str, dataset_key: str, probes: list[list[str]], settings: dict[str, Any], seed: int,
                    cache_key: str, run_id: str) -> dict[str, Any]:
    """Meta-probe ML tasks ``[[task, probe key], ...]`` on their own labelled training rows; skip stored ones."""
    from taskgrouping.methods.meta import MetaSettings, meta_probe, meta_trunk, task_rows

    _single_thread()
    t0 = time.perf_counter()
    st = Store(store)
    todo = [(t, k) for t, k in probes if not st.has_probe(k)]
    if todo:
        s = MetaSettings(**settings)
        data = st.read_prepared(dataset_key, tasks=[t for t, _ in todo])
        trunk = meta_trunk(s, seed, data.shape)
        train_rows = np.flatnonzero(data.split == 0)
        for b, (name, key) in enumerate(todo):
            rows = task_rows(data.y[:, b], train_rows, name, seed, s.max_samples)
            with _naming(f"meta probe of ML task {name!r}"):
                probe = meta_probe(data.x[rows], data.y[rows, b], data.tasks[b], s, seed, data.shape, trunk)
            st.write_probe(key, probe, {"task": name, "settings": s.probe_part(), "seed": seed})
            faults.reached(st.root, "probe")
    return {"tasks": [t for t, _ in probes], "computed": [t for t, _ in todo], "run_id": run_id,
            "seconds": time.perf_counter() - t0}


@task(name="meta-affinity", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def meta_affinity_step(store: str, probes: list[list[str]], pairs_key: str, cache_key: str,
                       run_id: str) -> dict[str, Any]:
    """Meta-probe distances between all tasks, computing only pairs not in the pair cache."""
    from taskgrouping.methods.meta import meta_distances

    st = Store(store)
    names = [p[0] for p in probes]
    probe_keys = [p[1] for p in probes]

    def compute_rows(rows: list[int]) -> np.ndarray:
        return meta_distances([st.read_probe(k) for k in probe_keys], rows)

    return _incremental_affinity(st, names, probe_keys, pairs_key, cache_key, compute_rows, run_id)


@task(name="meta-train", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def meta_train_step(config: dict[str, Any], dataset_key: str, groups: list[list[str]], cache_key: str,
                    run_id: str) -> dict[str, Any]:
    """``--training meta``: one first-order MAML init per group (and per baseline), evaluated on held-out tasks."""
    from taskgrouping.config import RunConfig
    from taskgrouping.methods.meta import meta_training_report

    _single_thread()
    cfg = RunConfig.from_dict(config)
    st = Store(cfg.store)
    data = st.read_prepared(dataset_key)
    result = meta_training_report(cfg, data, groups)
    path = st.write_json(st.meta_path(cache_key), result)
    return {"path": str(path), "result": result, "run_id": run_id}


@task(name="joint-affinity", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def joint_step(store: str, dataset_key: str, method: str, method_settings: dict[str, Any],
               train_settings: dict[str, Any], seed: int, device: str, cache_key: str,
               run_id: str) -> dict[str, Any]:
    """TAG or data maps: one joint training run over every task; writes the affinity (and the maps)."""
    _single_thread()
    st = Store(store)
    path = st.affinity_path(cache_key)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    computed = not intact(path) or (method == "datamaps" and not intact(st.datamap_path(cache_key)))
    if computed:
        data = st.read_prepared(dataset_key)
        train = TrainSettings(**train_settings)
        with _naming(f"{method} joint training over {len(data.tasks)} ML tasks"):
            affinity, vectors, info = _joint_affinity(method, data, method_settings, train, seed, device)
        if vectors is not None:
            st.write_datamaps(cache_key, affinity.tasks, vectors)
        st.write_affinity(path, affinity)
    return {"path": str(path), "maps": cache_key, "seconds": time.perf_counter() - t0, "info": info,
            "computed": computed, "run_id": run_id}


@task(name="hoa-gains", retries=1, retry_delay_seconds=1, **STEP_OPTIONS)
def gains_step(store: str, tasks: list[str], models: list[list[Any]], cache_key: str,
               run_id: str) -> dict[str, Any]:
    """HOA's pairwise gain matrix from the stored single-task and pair models' validation losses."""
    st = Store(store)
    losses = _validation_losses(st, models)
    path = st.write_affinity(st.affinity_path(cache_key), hoa_gains(tasks, losses))
    return {"path": str(path), "run_id": run_id}


@task(name="select", retries=0, **STEP_OPTIONS)
def select_step(store: str, affinity_path: str, selector: str, n_groups: int | None, seed: int,
                select_settings: dict[str, Any], cache_key: str, run_id: str) -> dict[str, Any]:
    """Choose groups from the affinity matrix."""
    from pathlib import Path

    affinity = Store(store).read_affinity(Path(affinity_path))
    settings = SelectSettings.from_dict(select_settings)
    grouping = get_selector(selector, settings)(affinity, n_groups, seed)
    faults.reached(store, "select")
    return selection_result(grouping, run_id)


@task(name="hoa-oracle", retries=0, **STEP_OPTIONS)
def oracle_step(store: str, tasks: list[str], models: list[list[Any]], n_groups: int | None, overlap: bool,
                cache_key: str, run_id: str) -> dict[str, Any]:
    """HOA's exhaustive oracle: exact network selection on the measured losses of every subset."""
    st = Store(store)
    losses = _validation_losses(st, models)
    members, scores = subset_scores(tasks, losses)
    budget = len(tasks) if n_groups is None else n_groups
    return selection_result(select_measured(tasks, members, scores, budget, overlap), run_id)


def _validation_losses(st: Store, models: list[list[Any]]) -> dict[frozenset[str], dict[str, float]]:
    """Member set -> {task: validation loss} of stored models given as ``[members, key]``."""
    return {frozenset(members): {r["task"]: r["val_loss"] for r in st.read_model_results(key)}
            for members, key in models}


def selection_result(grouping: Grouping, run_id: str) -> dict[str, Any]:
    """A grouping as a step result (JSON-able diagnostics only)."""
    info = {k: v for k, v in grouping.info.items()
            if isinstance(v, int | float | str | dict) or v is None
            or (isinstance(v, list) and all(isinstance(x, int | float | str) for x in v))}
    return {"groups": grouping.groups, "served": grouping.served, "objective": grouping.objective,
            "info": info, "run_id": run_id}


@task(name="memberships", retries=0, **STEP_OPTIONS)
def memberships_step(store: str, maps_key: str, groups: list[list[str]], fuzziness: float, cache_key: str,
                     run_id: str) -> dict[str, Any]:
    """STG-MTL fuzzy memberships of every task in every chosen group (rows sum to 1)."""
    tasks, vectors = Store(store).read_datamaps(maps_key)
    u = memberships(vectors, [[tasks.index(t) for t in g] for g in groups], fuzziness)
    return {"tasks": tasks, "weights": u.T.tolist(), "run_id": run_id}


@task(name="train-group", retries=2, retry_delay_seconds=1, **STEP_OPTIONS)
def train_step(store: str, dataset_key: str, members: list[str], settings: dict[str, Any], seed: int,
               device: str, cache_key: str, run_id: str, weights: list[float] | None = None) -> dict[str, Any]:
    """Train and evaluate one group's model (losses weighted by ``weights`` when given); save it as safetensors."""
    _single_thread()
    st = Store(store)
    computed = False
    if not st.has_model(cache_key):
        data = st.read_prepared(dataset_key, tasks=members)
        t0 = time.perf_counter()
        with _naming(f"training of the group {', '.join(members)}"):
            state, results, info = train_group(data, list(range(len(members))), TrainSettings(**settings),
                                               seed, device, weights=weights)
        st.write_model(cache_key, state, results, info | {"members": members, "seed": seed, "weights": weights,
                                                          "seconds": time.perf_counter() - t0})
        faults.reached(store, "train")
        computed = True
    return model_record(st, cache_key, members, computed, run_id)


def model_record(st: Store, key: str, members: list[str], computed: bool, run_id: str) -> dict[str, Any]:
    """What the flow needs of a stored group model: per-task results, cost, whether this run trained it."""
    info = st.read_model_info(key)
    return {"key": key, "members": members, "results": st.read_model_results(key),
            "cost": {"parameters": int(info.get("parameters", 0)), "flops": int(info.get("flops", 0))},
            "computed": computed, "run_id": run_id}

