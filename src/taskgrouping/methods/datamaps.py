"""STG-MTL data maps: task features from training dynamics, fuzzy group memberships (a peer method).

Source: Sherif, Abid, Elattar, ElHelw, "STG-MTL: Scalable Task Grouping for
Multi-Task Learning Using Data Maps", arXiv 2307.03374; methods.md section 3.

One model is trained on all tasks. After every epoch the probability the model gives
the true label of each (task, probe sample) is recorded; at ``snapshots`` evenly
spaced epochs the running mean (confidence) and standard deviation (variability) of
those probabilities are kept. A task's feature vector is its whole flattened data
map (snapshots x {confidence, variability} x samples). Tasks are compared by the RMS
difference of their maps over samples labelled for both (a ``distance``), grouped
by a selector, and given fuzzy memberships

    u[t, c] proportional to d(v_t, centroid_c) ** (-2 / (m - 1)),  m = 1.07

Choices (**our choice**): the map is tracked on the probe sample (``--samples``
training rows) to bound its size; the joint run lasts exactly ``epochs`` epochs (no
early stopping, so every snapshot exists); for regression tasks the "probability
of the true label" is the Gaussian likelihood ``exp(-(pred - y)^2 / 2)`` on the
standardised target; groups come from the pipeline's selector on the map distances
(STG-MTL's k-means is the special case of k-means-like clustering on the maps).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from taskgrouping.data.dataset import PreparedData, TaskSpec
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.models.train import MultiTaskModel, TrainHooks, TrainSettings, train_group


@dataclass(frozen=True)
class DatamapSettings:
    """Settings of STG-MTL data maps.

    Attributes:
        epochs: length of the joint training run.
        snapshots: number of evenly spaced epochs at which the map is kept.
        fuzziness: the fuzzy c-means exponent m (> 1; STG-MTL uses 1.07).
        weighted: train each group's model on every task, losses weighted by membership.
    """

    epochs: int = 20
    snapshots: int = 4
    fuzziness: float = 1.07
    weighted: bool = False

    def __post_init__(self) -> None:
        """Validate."""
        if self.epochs < 1 or not 1 <= self.snapshots <= self.epochs or not self.fuzziness > 1:
            raise ValueError(f"data maps need epochs >= 1, 1 <= snapshots <= epochs and fuzziness > 1, got "
                             f"{self.epochs}, {self.snapshots}, {self.fuzziness}")

    def snapshot_epochs(self) -> list[int]:
        """The epochs (1-based) at which the map is kept."""
        return sorted({int(round(self.epochs * (k + 1) / self.snapshots)) for k in range(self.snapshots)})


def true_label_probability(logits: torch.Tensor, y: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """(n,) probability of the true label: sigmoid / softmax, or a Gaussian likelihood for regression."""
    if task.kind == "binary":
        p1 = torch.sigmoid(logits[:, 0])
        return torch.where(y > 0.5, p1, 1.0 - p1)
    if task.kind == "multiclass":
        return torch.softmax(logits, dim=1).gather(1, y.long().clamp_min(0)[:, None])[:, 0]
    return torch.exp(-0.5 * (logits[:, 0] - y) ** 2)


def data_map_vectors(history: np.ndarray, snapshot_epochs: list[int]) -> np.ndarray:
    """(T, S * 2 * n) data maps from (E, T, n) per-epoch probabilities (NaN = missing label).

    At each snapshot epoch e: confidence = mean over epochs 1..e, variability = their
    standard deviation (population), concatenated as ``[conf, var]`` per snapshot.
    """
    parts = []
    for e in snapshot_epochs:
        upto = history[:e]
        parts += [upto.mean(axis=0), upto.std(axis=0)]
    return np.concatenate(parts, axis=1)


def map_distances(vectors: np.ndarray) -> np.ndarray:
    """(T, T) RMS difference of data maps over the entries both tasks have (NaN-masked)."""
    v = np.nan_to_num(vectors)
    ok = (~np.isnan(vectors)).astype(np.float64)
    t = vectors.shape[0]
    d = np.zeros((t, t))
    for a in range(t):
        diff2 = (v[a][None, :] - v) ** 2 * ok[a][None, :] * ok
        n = (ok[a][None, :] * ok).sum(axis=1)
        d[a] = np.sqrt(diff2.sum(axis=1) / np.maximum(n, 1.0))
    np.fill_diagonal(d, 0.0)
    return 0.5 * (d + d.T)


def memberships(vectors: np.ndarray, groups: list[list[int]], fuzziness: float) -> np.ndarray:
    """(T, C) fuzzy memberships to the groups' centroids, rows summing to 1.

    ``u[t, c]`` is proportional to ``d(v_t, centroid_c) ** (-2 / (m - 1))`` (computed in
    logs: with m = 1.07 the exponent is about -29); a task on a centroid belongs to it.
    """
    centroids = np.stack([np.nanmean(vectors[g], axis=0) for g in groups])
    d = map_distances(np.concatenate([vectors, centroids]))[: len(vectors), len(vectors):]
    with np.errstate(divide="ignore"):
        logits = (-2.0 / (fuzziness - 1.0)) * np.log(d)
    logits = np.where(np.isfinite(logits), logits, np.where(d <= 0, np.inf, -np.inf))
    u = np.zeros_like(d)
    for t in range(len(vectors)):
        row = logits[t]
        if np.isposinf(row).any():
            u[t, np.isposinf(row)] = 1.0 / np.isposinf(row).sum()
        else:
            e = np.exp(row - row.max())
            u[t] = e / e.sum()
    return u


class _DataMap(TrainHooks):
    """Records the true-label probability of every probe sample after every epoch."""

    def __init__(self, x: torch.Tensor, y: np.ndarray, tasks: list[TaskSpec]) -> None:
        self.x, self.tasks = x, tasks
        self.mask = ~np.isnan(y)
        self.y = torch.as_tensor(np.nan_to_num(y), device=x.device)
        self.history: list[np.ndarray] = []

    def after_epoch(self, model: MultiTaskModel, epoch: int) -> None:
        with torch.no_grad():
            outs = model(self.x)
            probs = torch.stack([true_label_probability(o, self.y[:, j], t)
                                 for j, (o, t) in enumerate(zip(outs, self.tasks, strict=True))])
        p = probs.cpu().numpy().astype(np.float64)
        self.history.append(np.where(self.mask.T, p, np.nan))


def datamap_affinity(data: PreparedData, settings: DatamapSettings, train: TrainSettings, seed: int,
                     device: str = "cpu") -> tuple[AffinityMatrix, np.ndarray, dict[str, Any]]:
    """Train one model on all tasks for ``settings.epochs`` epochs; return map distances and the maps.

    Returns:
        (``distance`` matrix, (T, S * 2 * n) data-map vectors, info).
    """
    from taskgrouping.models.trunk import resolve_device

    rows = data.probe_idx
    hook = _DataMap(torch.as_tensor(data.x[rows], device=resolve_device(device)), data.y[rows], data.tasks)
    fixed = replace(train, max_epochs=settings.epochs, patience=settings.epochs + 1)
    _, _, info = train_group(data, list(range(len(data.tasks))), fixed, seed, device, hooks=hook)
    vectors = data_map_vectors(np.stack(hook.history), settings.snapshot_epochs())
    return (AffinityMatrix(data.task_names, map_distances(vectors), "distance"), vectors,
            {"epochs": info["epochs"], "map_length": int(vectors.shape[1])})
