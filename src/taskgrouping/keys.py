"""Content-addressed cache keys: data fingerprint + task + settings + code version.

Every key is a stable hash, equal in every process; the flow computes them and
Prefect's ``cache_key_fn`` reads them, so the same inputs always hit the same
records, and changed data (same columns, new rows) never reuses stale work.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from taskgrouping import __version__
from taskgrouping.hashing import stable_hash
from taskgrouping.methods import swola
from taskgrouping.methods.swola import SwolaSettings
from taskgrouping.models import train
from taskgrouping.models.train import TrainSettings


def dataset_key(features_fp: str, label_fps: list[str], seed: int, samples: int) -> str:
    """The prepared dataset: features, every label column, split seed and probe sample size."""
    return stable_hash("dataset", __version__, features_fp, label_fps, seed, samples)


def probe_key(data_key: str, task: str, label_fp: str, settings: SwolaSettings, seed: int) -> str:
    """One task's probe: the probe rows, that task's labels and the probe settings (not normalisation)."""
    return stable_hash("probe", swola.CODE_VERSION, data_key, task, label_fp, settings.probe_part(), seed)


def pairs_key(settings: SwolaSettings, seed: int) -> str:
    """The pair cache shared by every run with these distance settings."""
    return stable_hash("pairs", swola.CODE_VERSION, asdict(settings) | {"block": None}, seed)


def affinity_key(probe_keys: list[tuple[str, str]], settings: SwolaSettings, seed: int) -> str:
    """The affinity over a task set (order matters: it fixes row order)."""
    return stable_hash("affinity", swola.CODE_VERSION, probe_keys, asdict(settings) | {"block": None}, seed)


def selection_key(affinity: str, selector: str, n_groups: int | None, seed: int) -> str:
    """One selection from one affinity."""
    return stable_hash("select", __version__, affinity, selector, n_groups, seed)


def group_key(data_key: str, members: list[tuple[str, str]], settings: TrainSettings, seed: int) -> str:
    """One group model: its member set (name, label fingerprint), the data rows and training settings."""
    return stable_hash("group", train.CODE_VERSION, data_key, sorted(members), asdict(settings), seed)


def source_key(source: str, file_hash: str | None, tasks: str | None, features: str | None,
               seed: int, samples: int) -> str:
    """The sampling step's input: the source's content hash and selection options."""
    return stable_hash("source", __version__, source, file_hash, tasks, features, seed, samples)


def params_key(**kw: Any) -> str:
    """A generic key over JSON-able parameters."""
    return stable_hash("params", __version__, kw)
