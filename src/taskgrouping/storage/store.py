"""Store layout, written-down Parquet schemas and atomic writes.

Layout under the store root::

    datasets/<dataset_key>/features.parquet   standardised features, one list column ``x``
    datasets/<dataset_key>/labels.parquet     one column per task (null = missing label)
    datasets/<dataset_key>/meta.json          task specs, feature names, split, ground truth
    probes/<probe_key>.arrow                  one SWOLA probe (per-task backpropagated errors), Arrow IPC
    pairs/<pairs_key>.parquet                 cached pairwise distances keyed by probe keys (compacted)
    pairs/<pairs_key>/<segment>.parquet       pairs added since, one append-only file per writing run
    sketches/<sketch_key>/<segment>.parquet   the sparse step's per-probe sketches, one append-only file per writing run
    trunkmaps/<maps_key>.arrow                a probe trunk's per-sample sketch maps (shared by every sketched probe)
    heads/<segment>.parquet                   per-task cross-validated head losses (joint head's C), one file per writing run
    affinity/<affinity_key>.parquet           affinity over one task set (long form)
    maps/<joint_key>.parquet                  STG-MTL data maps, one row per task
    models/<group_key>/model.safetensors      one trained group model (state dict)
    models/<group_key>/metrics.parquet        its per-task validation and test results
    runs/<run_id>/...                         affinity, groups, metrics, report, heatmap, summary
    heatmaps/<key>.png                        a rendered heatmap under its inputs' key (affinity bytes, groups)
    groupings/<lineage>/v<NNNN>.json          grouping versions of one data source, method and selector
    prefect/results/                          Prefect's persisted task results (cache records)

Every file is written to a temporary name in the same folder and renamed into
place, so a reader never sees a half-written file. File names come from content
hashes, never from task or column names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taskgrouping.storage.integrity import (
    DamagedFile,
    checksum_path,
    folder_lock,
    intact,
    intact_bytes,
    seal,
    settled_problem,
    sha256_file,
    verified,
)

if TYPE_CHECKING:
    import torch

    from taskgrouping.data.dataset import PreparedData
    from taskgrouping.methods.base import AffinityMatrix
    from taskgrouping.methods.pairs import PairCache
    from taskgrouping.methods.sparse import CandidateLists, NeighbourAffinity
    from taskgrouping.methods.swola import Probe
    from taskgrouping.selectors.base import Grouping

log = logging.getLogger("taskgrouping")

AFFINITY_SCHEMA = pa.schema(
    [
        pa.field("task_a", pa.string(), nullable=False),
        pa.field("task_b", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
    ]
)
"""Long affinity matrix. Row = receiver ``task_a``, column = source ``task_b``."""

NEIGHBOUR_AFFINITY_SCHEMA = pa.schema([*AFFINITY_SCHEMA, pa.field("rank", pa.int32(), nullable=False)])
"""A sparse (neighbour) affinity: per ``task_a`` its K nearest ``task_b`` with their exact distance,
``rank`` 1 the nearest (:class:`~taskgrouping.methods.sparse.NeighbourAffinity`); O(T K) rows. An
optional ``sketch`` list column holds each task's sketch on its rank-1 row (null elsewhere)."""

PAIR_SEGMENTS_MAX = 32
"""Pair-cache segments kept before they are folded into the compacted file."""

NEIGHBOURS_SCHEMA = pa.schema(
    [
        pa.field("task", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("partner", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("edge", pa.bool_(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)
"""``runs/<id>/neighbours.parquet``: each task's k nearest partners in the task graph (the ``graph`` selector).

``rank`` 1 is the nearest; ``value`` is the affinity's own value (symmetrised: distance, or
mutual gain); ``edge`` whether the graph kept the edge, ``weight`` its kernel weight (0 when pruned).
"""

GROUPS_SCHEMA = pa.schema(
    [
        pa.field("group", pa.int32(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("served", pa.bool_(), nullable=False),
    ]
)
"""One row per (group, member task); ``served`` marks the group that evaluates the task."""

METRICS_SCHEMA = pa.schema(
    [
        pa.field("setting", pa.string(), nullable=False),
        pa.field("group", pa.int32(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("val_loss", pa.float64(), nullable=False),
        pa.field("sel_loss", pa.float64(), nullable=False),
        pa.field("test_loss", pa.float64(), nullable=False),
        pa.field("metric_name", pa.string(), nullable=False),
        pa.field("metric", pa.float64(), nullable=True),
        pa.field("repeat", pa.int32(), nullable=False),
    ]
)
"""Per-task results of one trained model, per evaluation setting and repeat: the early-stopping
(``val_loss``), selection (``sel_loss``) and test losses, and the test metric."""

MODEL_FIELDS = ("task", "kind", "val_loss", "sel_loss", "test_loss", "metric_name", "metric")
"""The fields of :data:`METRICS_SCHEMA` a stored model keeps (no setting, group or repeat)."""

HELDOUT_SCHEMA = pa.schema(
    [
        pa.field("task", pa.string(), nullable=False),
        pa.field("part", pa.int8(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("loss", pa.float32(), nullable=False),
    ]
)
"""Per-sample held-out losses of one trained model: ``part`` 2 = selection, 3 = test (the
intervals of the verdict are computed from these)."""

MEMBERSHIP_SCHEMA = pa.schema(
    [
        pa.field("task", pa.string(), nullable=False),
        pa.field("group", pa.int32(), nullable=False),
        pa.field("membership", pa.float64(), nullable=False),
    ]
)
"""STG-MTL fuzzy memberships: one row per (task, group), each task's rows sum to 1."""

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("key_a", pa.string(), nullable=False),
        pa.field("key_b", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)
"""Cached symmetric pair distances, ``key_a < key_b`` (probe keys)."""

HEAD_CV_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("losses", pa.list_(pa.float64()), nullable=False),
    ]
)
"""One task's relative cross-validated head loss at each C of the grid (NaN: too few labels)."""


_AFFINITY_MEMO: dict[tuple[str, int, int, int], Any] = {}
AFFINITY_MEMO_MAX = 4
"""Affinity matrices this process wrote or read lately, by file identity (:meth:`Store.read_affinity`)."""


def _file_identity(path: Path, st: os.stat_result) -> tuple[str, int, int, int]:
    return (str(path), st.st_ino, st.st_size, st.st_ctime_ns)


def _remember_affinity(path: Path, st: os.stat_result, affinity: Any) -> None:
    while len(_AFFINITY_MEMO) >= AFFINITY_MEMO_MAX:
        _AFFINITY_MEMO.pop(next(iter(_AFFINITY_MEMO)))
    _AFFINITY_MEMO[_file_identity(path, st)] = affinity.copy()


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes 0600; store files are meant to be shared
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place and seal it, else remove it.

    Sealing records the file's SHA-256 in ``<name>.sha256`` (:mod:`.integrity`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        digest = sha256_file(tmp)
        with folder_lock(path.parent):  # two writers of one path: each one's data and checksum stay paired
            os.replace(tmp, path)
            seal(path, digest)  # the checksum last: a file without one was never finished
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def atomic_write_table(path: Path, table: pa.Table, schema: pa.Schema | None = None,
                       compression: str = "zstd") -> Path:
    """Write a Parquet table atomically, checking it against ``schema`` first."""
    if schema is not None:
        _check_schema(table.schema, schema, path)
        table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)
    return path


def read_table_checked(path: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Read an intact Parquet table (:class:`DamagedFile` otherwise) and check it has the written-down schema."""
    table = pq.read_table(verified(path), columns=columns)
    if columns is None:
        _check_schema(table.schema, schema, path)
    return table


def _check_schema(actual: pa.Schema, expected: pa.Schema, path: Path) -> None:
    for f in expected:
        if f.name not in actual.names:
            raise ValueError(f"{path}: column {f.name!r} missing (expected schema {expected.names})")
        got = actual.field(f.name).type
        if not (got == f.type or (pa.types.is_floating(got) and pa.types.is_floating(f.type))
                or (pa.types.is_integer(got) and pa.types.is_integer(f.type))
                or (pa.types.is_string(got) or pa.types.is_large_string(got)) and pa.types.is_string(f.type)):
            raise ValueError(f"{path}: column {f.name!r} has type {got}, expected {f.type}")


def _decoded(schema: pa.Schema) -> pa.Schema:
    """``schema`` with each dictionary column as its value type (what the column holds)."""
    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema])


class StoredProbes(Sequence["Probe"]):
    """The probes of ``keys`` as a sequence that reads each one from the store when it is asked for.

    For the pairwise step's rows (:func:`~taskgrouping.methods.swola.distances_from_probes`):
    a chunk of probes at a time is in memory, not all of them (250 MiB at 1,000 tasks, whose
    fresh pages cost more to fault in than the reads themselves).
    """

    def __init__(self, store: Store, keys: list[str]) -> None:
        self.store, self.keys = store, keys

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> Probe: ...

    @overload
    def __getitem__(self, i: slice) -> list[Probe]: ...

    def __getitem__(self, i: int | slice) -> Probe | list[Probe]:
        if isinstance(i, slice):
            return [self.store.read_probe(k) for k in self.keys[i]]
        return self.store.read_probe(self.keys[i])


class Store:
    """A folder holding datasets, probes, pair caches, models and runs.

    Args:
        root: the store folder; created on first write.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    # --- paths -----------------------------------------------------------------
    def dataset_dir(self, dataset_key: str) -> Path:
        """Folder of one prepared dataset."""
        return self.root / "datasets" / dataset_key

    def probe_path(self, probe_key: str) -> Path:
        """Parquet file of one probe."""
        return self.root / "probes" / f"{probe_key}.arrow"

    def pairs_path(self, pairs_key: str) -> Path:
        """Parquet cache of pair distances for one set of pair settings."""
        return self.root / "pairs" / f"{pairs_key}.parquet"

    def affinity_path(self, affinity_key: str) -> Path:
        """Content-addressed affinity matrix (runs copy it into their own folder)."""
        return self.root / "affinity" / f"{affinity_key}.parquet"

    def datamap_path(self, key: str) -> Path:
        """Parquet file of the data maps of one joint training run."""
        return self.root / "maps" / f"{key}.parquet"

    def model_dir(self, group_key: str) -> Path:
        """Folder of one trained group model."""
        return self.root / "models" / group_key

    def run_dir(self, run_id: str) -> Path:
        """Folder of one run's outputs."""
        return self.root / "runs" / run_id

    def lineage_dir(self, lineage: str) -> Path:
        """Folder of the grouping versions of one lineage."""
        return self.root / "groupings" / lineage

    def meta_path(self, key: str) -> Path:
        """One ``--training meta`` evaluation (JSON), by its content key."""
        return self.root / "meta" / f"{key}.json"

    def results_dir(self) -> Path:
        """Where Prefect persists task results (its cache records)."""
        return self.root / "prefect" / "results"

    # --- json ------------------------------------------------------------------
    def write_json(self, path: Path, obj: Any) -> Path:
        """Write JSON atomically."""
        return atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False).encode())

    @staticmethod
    def read_json(path: Path) -> Any:
        """Read intact JSON written by :meth:`write_json` (:class:`DamagedFile` otherwise)."""
        return json.loads(verified(path).read_text())

    # --- prepared datasets -----------------------------------------------------
    def has_prepared(self, key: str) -> bool:
        """Whether a prepared dataset is complete and intact (its meta file is written last)."""
        folder = self.dataset_dir(key)
        return all(intact(folder / name) for name in ("meta.json", "features.parquet", "labels.parquet"))

    def write_prepared(self, key: str, data: PreparedData) -> Path:
        """Write a prepared dataset: features + split, labels (one column per task), meta."""
        from taskgrouping.data.dataset import probe_overlap

        folder = self.dataset_dir(key)
        n, d = data.x.shape
        flat = pa.array(data.x.reshape(-1), pa.float32())
        feats = pa.table({"x": pa.FixedSizeListArray.from_arrays(flat, d),
                          "split": pa.array(data.split, pa.int8())})
        atomic_write_table(folder / "features.parquet", feats)
        labels = pa.table({t.name: pa.array(data.y[:, j], pa.float32(), mask=np.isnan(data.y[:, j]))
                           for j, t in enumerate(data.tasks)})
        # lz4: labels are mostly 0/1, already small once dictionary-encoded; zstd took twice as long
        # (0.06 s at 1,011 tasks x 2,000 rows) for a file no smaller
        atomic_write_table(folder / "labels.parquet", labels, compression="lz4")
        meta = {
            "tasks": [{"name": t.name, "kind": t.kind, "n_classes": t.n_classes, "classes": list(t.classes),
                       "reason": t.reason} for t in data.tasks],
            "feature_names": data.feature_names,
            "y_scale": data.y_scale.tolist(),
            "probe_idx": data.probe_idx.tolist(),
            "features_fp": data.features_fp,
            "label_fps": data.label_fps,
            "seed": data.seed,
            "ground_truth": data.ground_truth,
            "input_shape": None if data.input_shape is None else list(data.input_shape),
            "x_mean": None if data.x_mean is None else np.asarray(data.x_mean, np.float64).tolist(),
            "x_std": None if data.x_std is None else np.asarray(data.x_std, np.float64).tolist(),
            "y_mean": None if data.y_mean is None else np.asarray(data.y_mean, np.float64).tolist(),
            "probe_overlap": probe_overlap(data.y[data.probe_idx]),
            "imputed": dict(data.imputed),
        }
        return self.write_json(folder / "meta.json", meta)

    def read_prepared_meta(self, key: str) -> dict[str, Any]:
        """A prepared dataset's meta: task specs, label fingerprints, probe rows, ground truth."""
        meta: dict[str, Any] = self.read_json(self.dataset_dir(key) / "meta.json")
        return meta

    def read_prepared(self, key: str, tasks: list[str] | None = None) -> PreparedData:
        """Read a prepared dataset; ``tasks`` loads only those label columns (in that order)."""
        from taskgrouping.data.dataset import PreparedData, TaskSpec
        from taskgrouping.methods.base import positions

        folder = self.dataset_dir(key)
        meta = self.read_prepared_meta(key)
        specs = [TaskSpec(t["name"], t["kind"], t["n_classes"], tuple(t["classes"]), t.get("reason", ""))
                 for t in meta["tasks"]]
        names = [t.name for t in specs]
        want = names if tasks is None else tasks
        pos = positions(names, want)
        feats = pq.read_table(verified(folder / "features.parquet"))
        xcol = feats.column("x").combine_chunks()
        d = xcol.type.list_size
        x = xcol.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32)
        labels = pq.read_table(verified(folder / "labels.parquet"), columns=want)
        y = np.stack([labels.column(t).to_numpy(zero_copy_only=False).astype(np.float32) for t in want], axis=1) \
            if want else np.zeros((x.shape[0], 0), np.float32)
        return PreparedData(
            x=x, y=y, split=feats.column("split").to_numpy().astype(np.int8),
            probe_idx=np.asarray(meta["probe_idx"], np.int64), tasks=[specs[i] for i in pos],
            feature_names=meta["feature_names"], y_scale=np.asarray(meta["y_scale"])[pos],
            features_fp=meta["features_fp"], label_fps=[meta["label_fps"][i] for i in pos],
            seed=meta["seed"], ground_truth=meta["ground_truth"],
            input_shape=None if meta.get("input_shape") is None else tuple(meta["input_shape"]),
            x_mean=None if meta.get("x_mean") is None else np.asarray(meta["x_mean"]),
            x_std=None if meta.get("x_std") is None else np.asarray(meta["x_std"]),
            y_mean=None if meta.get("y_mean") is None else np.asarray(meta["y_mean"])[pos],
            imputed=dict(meta.get("imputed") or {}),
        )

    # --- probes ----------------------------------------------------------------
    def has_probe(self, key: str) -> bool:
        """Whether a probe file exists and is intact (a damaged one is reported and counts as absent)."""
        return intact(self.probe_path(key))

    def write_probe(self, key: str, probe: Probe, meta: dict[str, Any]) -> Path:
        """One row per probe sample: ``labelled`` and, per trunk r, ``delta_r`` (fixed-size float32 list).

        An uncompressed Arrow IPC file: reading it is one read of its bytes (checked
        against its checksum) and zero-copy views of them, no decoding.
        """
        r, n, width = probe.deltas.shape
        cols: dict[str, pa.Array] = {"labelled": pa.array(probe.labelled, pa.bool_())}
        for k in range(r):
            cols[f"delta_{k}"] = pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(probe.deltas[k], np.float32).reshape(-1), pa.float32()), width)
        if probe.norms is not None:
            for k in range(r):
                cols[f"norm_{k}"] = pa.array(probe.norms[k], pa.float64())
        table = pa.table(cols).replace_schema_metadata({"taskgrouping": json.dumps(meta | {"kind": probe.kind})})
        with atomic_path(self.probe_path(key)) as tmp, pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        return self.probe_path(key)

    def read_probe(self, key: str) -> Probe:
        """Read a probe written by :meth:`write_probe` (its arrays are read-only views of the file's bytes)."""
        from taskgrouping.methods.swola import Probe

        path = self.probe_path(key)
        data = intact_bytes(path)
        if data is None:
            raise DamagedFile(path, settled_problem(path) or "changed while read")
        table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
        names = sorted((c for c in table.column_names if c.startswith("delta_")), key=lambda c: int(c[6:]))
        deltas = []
        for c in names:
            # one chunk (as written): a view of the file's bytes; combine_chunks would copy it
            chunked = table.column(c)
            col = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
            values = col.values[col.offset * col.type.list_size : (col.offset + len(col)) * col.type.list_size]
            deltas.append(values.to_numpy().reshape(len(col), col.type.list_size))
        meta = json.loads((table.schema.metadata or {}).get(b"taskgrouping", b"{}"))
        norm_cols = sorted((c for c in table.column_names if c.startswith("norm_")), key=lambda c: int(c[5:]))
        norms = np.stack([table.column(c).to_numpy() for c in norm_cols]) if norm_cols else None
        return Probe(deltas=deltas[0][None] if len(deltas) == 1 else np.stack(deltas),
                     labelled=table.column("labelled").to_numpy(zero_copy_only=False).astype(bool),
                     kind=str(meta.get("kind", "delta")), norms=norms)

    def trunk_maps_path(self, key: str) -> Path:
        """Arrow file of one probe trunk's sketch maps."""
        return self.root / "trunkmaps" / f"{key}.arrow"

    def write_trunk_maps(self, key: str, maps: np.ndarray) -> Path:
        """A trunk's sketch maps (n, F, k) float32: one row per probe sample, ``map`` (F x k floats)."""
        n, f, k = maps.shape
        col = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(maps, np.float32).reshape(-1),
                                                         pa.float32()), f * k)
        table = pa.table({"map": col}).replace_schema_metadata({"taskgrouping": json.dumps({"shape": [n, f, k]})})
        path = self.trunk_maps_path(key)
        with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        return path

    def read_trunk_maps(self, key: str) -> np.ndarray | None:
        """The sketch maps written under ``key`` (n, F, k), or None when absent or damaged."""
        path = self.trunk_maps_path(key)
        if not intact(path):
            return None
        data = intact_bytes(path)
        if data is None:
            return None
        table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
        shape = json.loads((table.schema.metadata or {}).get(b"taskgrouping", b"{}"))["shape"]
        col = table.column("map").combine_chunks()
        return np.array(col.values.to_numpy(), np.float32).reshape(shape)  # a writable copy (torch takes it)

    # --- data maps -------------------------------------------------------------
    def write_datamaps(self, key: str, tasks: list[str], vectors: np.ndarray) -> Path:
        """One row per task: ``task`` and its flattened map ``map`` (float64 list; NaN = missing label)."""
        width = vectors.shape[1]
        table = pa.table({"task": pa.array(tasks, pa.string()),
                          "map": pa.FixedSizeListArray.from_arrays(
                              pa.array(vectors.reshape(-1).astype(np.float64), pa.float64()), width)})
        return atomic_write_table(self.datamap_path(key), table)

    def read_datamaps(self, key: str) -> tuple[list[str], np.ndarray]:
        """Tasks and (T, L) map vectors written by :meth:`write_datamaps`."""
        table = pq.read_table(verified(self.datamap_path(key)))
        col = table.column("map").combine_chunks()
        values = col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        return table.column("task").to_pylist(), values

    def write_memberships(self, run_id: str, tasks: list[str], u: np.ndarray) -> Path:
        """``runs/<id>/memberships.parquet``: fuzzy membership of each task in each group."""
        rows = [{"task": t, "group": c, "membership": float(u[i, c])}
                for i, t in enumerate(tasks) for c in range(u.shape[1])]
        return atomic_write_table(self.run_dir(run_id) / "memberships.parquet",
                                  pa.Table.from_pylist(rows, schema=MEMBERSHIP_SCHEMA), MEMBERSHIP_SCHEMA)

    # --- grouping versions -----------------------------------------------------
    def latest_version(self, lineage: str) -> dict[str, Any] | None:
        """The newest grouping version of a lineage, or None."""
        folder = self.lineage_dir(lineage)
        files = sorted(folder.glob("v[0-9][0-9][0-9][0-9]*.json")) if folder.exists() else []
        for path in reversed(files):  # a damaged version is reported and passed over
            if intact(path):
                latest: dict[str, Any] = json.loads(path.read_text())  # just checked: no second hash
                return latest
        return None

    def versions(self, lineage: str) -> list[dict[str, Any]]:
        """Every grouping version of a lineage, oldest first."""
        folder = self.lineage_dir(lineage)
        files = sorted(folder.glob("v[0-9][0-9][0-9][0-9]*.json")) if folder.exists() else []
        return [json.loads(p.read_text()) for p in files if intact(p)]  # each checked once

    def add_version(self, lineage: str, record: dict[str, Any]) -> int:
        """Write ``record`` as the next version; concurrent writers get distinct numbers.

        The file is written to a temporary name, then hard-linked to ``v<NNNN>.json``,
        which fails if another writer took that number first (then the next is tried).
        """
        folder = self.lineage_dir(lineage)
        folder.mkdir(parents=True, exist_ok=True)
        latest = self.latest_version(lineage)
        version = (latest["version"] if latest else 0) + 1
        while True:
            target = folder / f"v{version:04d}.json"
            tmp = _tmp_path(target)
            try:
                tmp.write_text(json.dumps(record | {"version": version}, indent=2))
                with folder_lock(folder):
                    os.link(tmp, target)
                    seal(target)
                return version
            except FileExistsError:
                version += 1
            finally:
                tmp.unlink()

    # --- joint head: per-task CV losses -----------------------------------------
    def add_head_cv(self, rows: dict[str, np.ndarray]) -> Path:
        """Append tasks' CV loss vectors (by head-CV key) as a new file; nothing stored is rewritten."""
        import uuid

        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        table = pa.table({"key": pa.array(list(rows), pa.string()),
                          "losses": pa.array([np.asarray(v, np.float64).tolist() for v in rows.values()],
                                             pa.list_(pa.float64()))})
        return atomic_write_table(self.root / "heads" / name, table, HEAD_CV_SCHEMA)

    def read_head_cv(self) -> dict[str, np.ndarray]:
        """Every stored CV loss vector by key (unreadable files are left out: their tasks are scored again)."""
        folder = self.root / "heads"
        out: dict[str, np.ndarray] = {}
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            data = intact_bytes(path)
            if data is None:
                continue
            table = pq.read_table(pa.BufferReader(data))
            _check_schema(table.schema, HEAD_CV_SCHEMA, path)
            for key, losses in zip(table.column("key").to_pylist(), table.column("losses").to_pylist(), strict=True):
                out[key] = np.array([np.nan if v is None else v for v in losses], np.float64)
        return out

    # --- sketches of the sparse pairwise step ----------------------------------
    def add_sketches(self, key: str, probe_keys: list[str], sketch: np.ndarray, sq: np.ndarray,
                     labelled: np.ndarray) -> Path:
        """Append tasks' candidate-search parts (:func:`~taskgrouping.methods.sparse.sketch_parts`) as a new file.

        ``sketches/<key>/<segment>.parquet``, one row per probe key: ``sketch`` (float32 x width),
        ``sq`` (each sample's squared row norm, float32 x n), ``labelled`` (bool x n).
        """
        import uuid

        def fixed(a: np.ndarray, t: pa.DataType) -> pa.Array:
            return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).reshape(-1), t), a.shape[1])

        table = pa.table({"key": pa.array(probe_keys, pa.string()), "sketch": fixed(sketch.astype(np.float32), pa.float32()),
                          "sq": fixed(sq.astype(np.float32), pa.float32()), "labelled": fixed(labelled, pa.bool_())})
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        return atomic_write_table(self.root / "sketches" / key / name, table)

    def read_sketches(self, key: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Every stored part under ``key``: (probe keys, sketch, sq, labelled); unreadable files are left out."""
        folder = self.root / "sketches" / key
        keys: list[str] = []
        parts: list[list[np.ndarray]] = [[], [], []]
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            data = intact_bytes(path)
            if data is None:
                continue
            table = pq.read_table(pa.BufferReader(data))
            keys += table.column("key").to_pylist()
            for out, name in zip(parts, ("sketch", "sq", "labelled"), strict=True):
                col = table.column(name).combine_chunks()
                out.append(col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size))
        if not keys:
            return [], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros((0, 0), bool)
        sk, sq, lab = (np.concatenate(p) for p in parts)
        return keys, sk, sq, lab.astype(bool)

    CANDIDATE_LISTS_KEPT = 4
    """Candidate-list files kept per sketch key (the newest; each run writes one)."""

    def add_candidate_lists(self, key: str, lists: CandidateLists) -> Path:
        """Keep a run's sketch candidates (:class:`~taskgrouping.methods.sparse.CandidateLists`).

        ``sketches/<key>/lists/<time>-<id>.arrow``, an uncompressed Arrow IPC file, one row per
        probe key: ``idx`` (int32 x c, rows of this file), ``score`` (float64 x c); the schema's
        metadata says whether the scores are mask-aware. Only the newest
        :data:`CANDIDATE_LISTS_KEPT` are kept: a later run starts from the one sharing the most
        tasks with it.
        """
        import uuid

        t, c = lists.idx.shape
        table = pa.table({
            "key": pa.array(lists.keys, pa.string()),
            "idx": pa.FixedSizeListArray.from_arrays(pa.array(lists.idx.astype(np.int32).reshape(-1), pa.int32()), c),
            "score": pa.FixedSizeListArray.from_arrays(pa.array(lists.score.astype(np.float64).reshape(-1),
                                                                pa.float64()), c),
        }).replace_schema_metadata({"taskgrouping": json.dumps({"masked": lists.masked, "c": c})})
        folder = self.root / "sketches" / key / "lists"
        path = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.arrow"
        with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        for old in sorted(folder.glob("*.arrow"))[: -self.CANDIDATE_LISTS_KEPT]:
            with contextlib.suppress(OSError):  # a concurrent run pruning the same file
                old.unlink()
                checksum_path(old).unlink(missing_ok=True)
        return path

    def read_candidate_base(self, key: str, keys: Sequence[str]) -> CandidateLists | None:
        """The kept candidate lists sharing the most tasks with ``keys`` (fewest removed on a tie), or None.

        A damaged or unreadable file is passed over (the lists are then computed afresh).
        """
        from taskgrouping.methods.sparse import CandidateLists

        folder = self.root / "sketches" / key / "lists"
        want = set(keys)
        best: tuple[int, int] | None = None
        chosen = None
        for path in sorted(folder.glob("*.arrow"), reverse=True) if folder.is_dir() else []:
            data = intact_bytes(path)
            if data is None:
                continue
            try:
                table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
                meta = json.loads((table.schema.metadata or {}).get(b"taskgrouping", b"{}"))
                names = table.column("key").to_pylist()
                shared = len(want.intersection(names))
                score = (shared, shared - len(names))
                if shared and (best is None or score > best):
                    c = int(meta["c"])
                    idx = table.column("idx").combine_chunks().values.to_numpy().reshape(len(names), c)
                    val = table.column("score").combine_chunks().values.to_numpy().reshape(len(names), c)
                    if idx.size and (idx.min() < 0 or idx.max() >= len(names)):
                        raise ValueError("a candidate index outside the file")
                    best, chosen = score, CandidateLists(names, idx.astype(np.int64), val.astype(np.float64),
                                                         bool(meta["masked"]))
            except (pa.ArrowInvalid, KeyError, ValueError, TypeError) as exc:
                log.warning("candidate lists %s unreadable (%s); passed over", path, exc)
        return chosen

    # --- pair cache ------------------------------------------------------------
    def pair_segments(self, key: str) -> list[Path]:
        """The append-only segments of a pair cache, oldest first (by name: nanosecond time, then a random id)."""
        folder = self.root / "pairs" / key
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def _read_pair_table(self, path: Path) -> pa.Table | None:
        """One pair file, verified and parsed from the same bytes (a compaction may replace it meanwhile).

        None when it is missing, unfinished or damaged (reported): its pairs are computed again.
        """
        data = intact_bytes(path)
        if data is None:
            return None
        # the keys as Parquet holds them (a dictionary per column chunk): 4x faster than a million strings
        table = pq.read_table(pa.BufferReader(data), read_dictionary=["key_a", "key_b"])
        _check_schema(_decoded(table.schema), PAIRS_SCHEMA, path)
        return table

    def read_pairs(self, key: str) -> PairCache:
        """The pair cache: values by unordered pair of probe keys (empty if none yet).

        The compacted file plus every segment added since; a pair in several keeps the
        newest value.
        """
        return self._pair_cache([self.pairs_path(key), *self.pair_segments(key)])

    def _pair_cache(self, paths: list[Path]) -> PairCache:
        """The pairs of ``paths`` in file order (unreadable ones left out), keys dictionary-encoded once."""
        from taskgrouping.methods.pairs import PairCache

        tables = [t for t in (self._read_pair_table(p) for p in paths) if t is not None and t.num_rows]
        if not tables:
            return PairCache()
        where: dict[str, int] = {}

        def codes(column: pa.ChunkedArray) -> np.ndarray:
            """Each chunk's dictionary codes mapped to one numbering of the keys over all files."""
            parts = []
            for chunk in column.chunks:
                if not pa.types.is_dictionary(chunk.type):
                    chunk = chunk.dictionary_encode()
                lut = np.array([where.setdefault(k, len(where)) for k in chunk.dictionary.to_pylist()], np.int64)
                parts.append(lut[chunk.indices.to_numpy(zero_copy_only=False)] if len(lut) else
                             np.zeros(len(chunk), np.int64))
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)

        a = np.concatenate([codes(t.column("key_a")) for t in tables])
        b = np.concatenate([codes(t.column("key_b")) for t in tables])
        values = np.concatenate([t.column("value").to_numpy().astype(np.float64) for t in tables])
        return PairCache(list(where), a, b, values)

    @staticmethod
    def _pairs_table(pairs: PairCache) -> pa.Table:
        names = pa.array(pairs.keys, pa.string())
        return pa.table({"key_a": names.take(pa.array(pairs.a)), "key_b": names.take(pa.array(pairs.b)),
                         "value": pa.array(pairs.values, pa.float64())})

    def write_pairs(self, key: str, pairs: PairCache) -> Path:
        """Write the whole (compacted) pair cache atomically (Parquet dictionary-encodes the repeated keys)."""
        return atomic_write_table(self.pairs_path(key), self._pairs_table(pairs), PAIRS_SCHEMA)

    def add_pairs(self, key: str, added: PairCache) -> Path:
        """Append newly computed pairs as a new segment; nothing already stored is rewritten.

        Two runs adding pairs at once each write their own segment, so neither loses the
        other's pairs. Past :data:`PAIR_SEGMENTS_MAX` segments the cache is compacted.
        """
        import uuid

        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"  # names sort oldest first
        path = atomic_write_table(self.root / "pairs" / key / name, self._pairs_table(added), PAIRS_SCHEMA)
        if len(self.pair_segments(key)) > PAIR_SEGMENTS_MAX:
            self.compact_pairs(key)
        return path

    def compact_pairs(self, key: str) -> int:
        """Fold the segments present now into the compacted file, then remove them; returns how many.

        One compaction at a time (a lock in the segments' folder). Segments written while
        it runs are not in its list and stay. A reader that lists a segment this removes
        meanwhile only recomputes those pairs.
        """
        folder = self.root / "pairs" / key
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".compact.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            segments = self.pair_segments(key)
            if not segments:
                return 0
            merged = self._pair_cache([self.pairs_path(key), *segments]).newest()
            self.write_pairs(key, merged)
            for seg in segments:
                with folder_lock(folder):
                    seg.unlink(missing_ok=True)
                    checksum_path(seg).unlink(missing_ok=True)
            return len(segments)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # --- group models ----------------------------------------------------------
    def has_model(self, key: str) -> bool:
        """Whether a group model is complete and intact (its metrics file is written last)."""
        folder = self.model_dir(key)
        return all(intact(folder / name) for name in ("metrics.parquet", "model.safetensors", "info.json",
                                                         "heldout.parquet"))

    def write_model(self, key: str, state: dict[str, torch.Tensor], results: list[dict[str, Any]],
                    info: dict[str, Any]) -> Path:
        """Save the state dict as safetensors, then info and held-out losses, then per-task results (the completion mark).

        ``info["heldout"]`` (``{task: {"selection": (rows, losses), "test": ...}}``) goes to
        ``heldout.parquet``, the rest of ``info`` to ``info.json``.
        """
        from safetensors.torch import save

        folder = self.model_dir(key)
        info = dict(info)
        heldout = info.pop("heldout", {})
        atomic_write_bytes(folder / "model.safetensors", save(state))
        self.write_json(folder / "info.json", info)
        cols: dict[str, list[Any]] = {"task": [], "part": [], "row": [], "loss": []}
        for task, per in heldout.items():
            for part, code in (("selection", 2), ("test", 3)):
                rows, losses = per[part]
                cols["task"].append(np.full(len(rows), task, dtype=object))
                cols["part"].append(np.full(len(rows), code, dtype=np.int8))
                cols["row"].append(np.asarray(rows, dtype=np.int64))
                cols["loss"].append(np.asarray(losses, dtype=np.float32))
        table = pa.table({k: pa.array(np.concatenate(v) if v else [], type=HELDOUT_SCHEMA.field(k).type)
                          for k, v in cols.items()}, schema=HELDOUT_SCHEMA)
        atomic_write_table(folder / "heldout.parquet", table, HELDOUT_SCHEMA)
        model_schema = pa.schema([METRICS_SCHEMA.field(f) for f in MODEL_FIELDS])
        return atomic_write_table(folder / "metrics.parquet", pa.Table.from_pylist(results, schema=model_schema))

    def read_model_info(self, key: str) -> dict[str, Any]:
        """A trained model's training info (epochs, seed, parameters, FLOPs, ...)."""
        out: dict[str, Any] = json.loads(verified(self.model_dir(key) / "info.json").read_text())
        return out

    def read_model_heldout(self, key: str) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """A model's per-sample held-out losses: ``{task: {"selection": (rows, losses), "test": ...}}``."""
        t = read_table_checked(self.model_dir(key) / "heldout.parquet", HELDOUT_SCHEMA)
        task = t.column("task").to_numpy(zero_copy_only=False)
        part, row = t.column("part").to_numpy(), t.column("row").to_numpy()
        loss = t.column("loss").to_numpy()
        names, inverse = np.unique(task, return_inverse=True)
        order = np.lexsort((row, part, inverse))  # by task, then part, then row
        bounds = np.searchsorted(inverse[order] * 4 + part[order], np.arange(len(names) * 4 + 1))
        out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for i, name in enumerate(names.tolist()):
            out[name] = {}
            for p, code in (("selection", 2), ("test", 3)):
                idx = order[bounds[i * 4 + code] : bounds[i * 4 + code + 1]]
                out[name][p] = (row[idx], loss[idx])
        return out

    def read_model_results(self, key: str) -> list[dict[str, Any]]:
        """Per-task results of a trained group model."""
        rows: list[dict[str, Any]] = pq.read_table(verified(self.model_dir(key) / "metrics.parquet")).to_pylist()
        return rows

    def read_model_state(self, key: str) -> dict[str, torch.Tensor]:
        """The trained state dict (safetensors; never unpickled)."""
        from safetensors.torch import load_file

        return load_file(str(verified(self.model_dir(key) / "model.safetensors")))

    # --- run outputs -----------------------------------------------------------
    def write_affinity(self, path: Path, affinity: AffinityMatrix | NeighbourAffinity) -> Path:
        """An affinity matrix in long form (``task_a, task_b, value, kind``), or a neighbour affinity.

        A neighbour affinity has the same columns and ``rank`` (:data:`NEIGHBOUR_AFFINITY_SCHEMA`).
        """
        sparse = getattr(affinity, "sparse", False)
        table = affinity.to_table() if sparse else affinity.to_table(dictionary=True)  # type: ignore[call-arg]
        _check_schema(_decoded(table.schema), NEIGHBOUR_AFFINITY_SCHEMA if sparse else AFFINITY_SCHEMA, path)
        with atomic_path(path) as tmp:  # no Arrow schema stored: the names read back as strings
            pq.write_table(table, tmp, compression="zstd", store_schema=False)
        if not np.isnan(affinity.values).any():  # what reading it back gives (a missing pair raises there)
            _remember_affinity(path, os.stat(path), affinity)
        return path

    def read_affinity(self, path: Path) -> Any:
        """Read a long affinity Parquet file (from this process's memory when it wrote or read that very file).

        A run reads its affinity in three stages and the previous version's once; a
        million-row file takes 0.07 s to decode. The memory is keyed by the file's identity
        (inode, size, status-change time), which any change of the file moves.
        """
        from taskgrouping.methods.base import AffinityMatrix

        before = None
        with contextlib.suppress(OSError):
            before = os.stat(path)
        known = None if before is None else _AFFINITY_MEMO.get(_file_identity(path, before))
        if known is not None:
            return known.copy()
        table = read_table_checked(path, AFFINITY_SCHEMA)
        affinity: AffinityMatrix | NeighbourAffinity
        if "rank" in table.column_names:
            from taskgrouping.methods.sparse import NeighbourAffinity

            _check_schema(table.schema, NEIGHBOUR_AFFINITY_SCHEMA, path)
            affinity = NeighbourAffinity.from_table(table)
        else:
            affinity = AffinityMatrix.from_table(table)
        with contextlib.suppress(OSError):
            after = os.stat(path)
            if before is not None and _file_identity(path, before) == _file_identity(path, after):
                _remember_affinity(path, after, affinity)
        return affinity

    def write_groups(self, run_id: str, grouping: Grouping) -> Path:
        """``runs/<id>/groups.parquet``: one row per (group, task)."""
        group = [gi for gi, g in enumerate(grouping.groups) for _ in g]
        task = [t for g in grouping.groups for t in g]
        served = [grouping.served[t] == gi for t, gi in zip(task, group, strict=True)]
        table = pa.table({"group": pa.array(group, pa.int32()), "task": pa.array(task, pa.string()),
                          "served": pa.array(served, pa.bool_())})
        return atomic_write_table(self.run_dir(run_id) / "groups.parquet", table, GROUPS_SCHEMA)

    def write_neighbours(self, run_id: str, rows: list[dict[str, Any]]) -> Path:
        """``runs/<id>/neighbours.parquet`` (:data:`NEIGHBOURS_SCHEMA`)."""
        return atomic_write_table(self.run_dir(run_id) / "neighbours.parquet",
                                  pa.Table.from_pylist(rows, schema=NEIGHBOURS_SCHEMA), NEIGHBOURS_SCHEMA)

    def write_metrics(self, run_id: str, rows: list[dict[str, Any]]) -> Path:
        """``runs/<id>/metrics.parquet``: per setting, group and task."""
        return atomic_write_table(self.run_dir(run_id) / "metrics.parquet",
                                  pa.Table.from_pylist(rows, schema=METRICS_SCHEMA), METRICS_SCHEMA)

    def heatmap_path(self, key: str) -> Path:
        """A rendered heatmap under its content key (an identical rerun copies it instead of drawing it again)."""
        return self.root / "heatmaps" / f"{key}.png"

    def copy_file(self, source: Path, path: Path) -> Path:
        """Put an intact store file at ``path`` (atomic, sealed): a hard link, or a copy where links are refused.

        Store files are never changed in place (every write is a new file renamed over the
        old), so a run folder's ``affinity.parquet`` and ``heatmap.png`` can be the store's
        own bytes: no second copy of a 10,000-task affinity. Another file system (or one
        without links) gets a byte-for-byte copy. :class:`DamagedFile` if ``source`` is not intact.
        """
        with atomic_path(path) as tmp:
            src = verified(source)
            try:
                tmp.unlink(missing_ok=True)  # the reserved temporary name, taken by the link instead
                os.link(src, tmp)
            except OSError:  # EXDEV (another file system), EPERM/ENOTSUP (no hard links there)
                shutil.copyfile(src, tmp)
        return path

    def write_run_file(self, run_id: str, name: str, data: bytes) -> Path:
        """Any other run output (report, heatmap, summary)."""
        return atomic_write_bytes(self.run_dir(run_id) / name, data)

    # --- decoded images --------------------------------------------------------
    def image_cache(self, key: str, decode: Any) -> np.ndarray:
        """Decoded images stored under their content ``key`` (``images/<key>.parquet``); decoded once.

        ``decode()`` returns (n, d) float32 and runs only when no intact file is stored.
        """
        path = self.root / "images" / f"{key}.parquet"
        if intact(path):
            col = pq.read_table(verified(path)).column("x").combine_chunks()
            return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(np.float32)
        x = np.asarray(decode(), np.float32)
        atomic_write_table(path, pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)),
                                                                                  x.shape[1])}))
        return x

    # --- exports ---------------------------------------------------------------
    def export_run(self, run_id: str, out: Path, setting: str = "recommended") -> tuple[str, list[Path]]:
        """Write the models of one setting of run ``run_id`` under ``out`` (which must not exist).

        ``setting``: ``recommended`` (the run's verdict; ``grouped`` when it has none),
        ``grouped`` (``group-<i>/`` per group), ``all_together`` (``all-together/``) or
        ``single_task`` (``task-<name>/`` per task). Each folder holds the model's
        safetensors weights, ``model.json`` (with its ``setting``), a README and, for a
        file factory trunk, the factory's source (:mod:`taskgrouping.models.export`);
        ``out/export.json`` says which folder serves which task. The whole export is
        written in a temporary folder beside ``out`` and renamed into place, so ``out`` is
        complete or absent. Returns the setting written and the folders.
        """
        import shutil
        import tempfile

        from taskgrouping.errors import InputError
        from taskgrouping.models.export import EXPORT_SETTINGS, export_plan, write_export_folder

        if setting not in ("recommended", *EXPORT_SETTINGS):
            raise InputError(f"--setting {setting!r}: use recommended, {', '.join(EXPORT_SETTINGS)}")
        summary_path = self.run_dir(run_id) / "summary.json"
        if not summary_path.is_file():
            raise InputError(f"--run {run_id}: no such run in {self.root} (no runs/{run_id}/summary.json)")
        summary = self.read_json(summary_path)
        if not summary.get("models") or not summary.get("dataset_key"):
            raise InputError(f"--run {run_id}: the run recorded no grouped models (made with --evaluate none, "
                             "or by an older version); run it again with --evaluate grouped or all")
        if out.exists():
            raise InputError(f"--out {out}: already exists; name a new folder")
        chosen, plan = export_plan(summary, setting)
        meta = self.read_prepared_meta(summary["dataset_key"])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            index = []
            for name, entry in plan:
                folder = Path(entry["folder"])
                info = self.read_json(folder / "info.json")
                target = tmp / name
                target.mkdir()
                shutil.copyfile(verified(folder / "model.safetensors"), target / "model.safetensors")
                write_export_folder(target, summary, meta, chosen, list(info["members"]), list(entry["serves"]),
                                    name)
                index.append({"folder": name, "serves": list(entry["serves"]), "members": list(info["members"])})
            (tmp / "export.json").write_text(json.dumps({
                "run_id": run_id, "setting": chosen, "asked": setting, "data": summary.get("data"),
                "recommended": summary.get("recommended"), "models": index}, indent=2))
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return chosen, [out / name for name, _ in plan]
