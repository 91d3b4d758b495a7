"""Built-in datasets: ``builtin:digits`` (real, bundled with scikit-learn) and ``builtin:synthetic``.

Options follow the name after a colon: ``builtin:synthetic:tasks=16,groups=4,samples=2000,noise=0.3``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from taskgrouping.data.dataset import Dataset, TaskSpec
from taskgrouping.errors import InputError

CLOSED_LOOP_DIGITS = (0, 4, 6, 8, 9)
"""Digits drawn with a closed loop (the STG-MTL style derived task)."""


def _binary(name: str) -> TaskSpec:
    return TaskSpec(name, "binary", 2, ("0", "1"), "built-in")


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images) as a 15-task benchmark.

    Tasks: ``is_0`` .. ``is_9`` (one-vs-rest), ``even``, ``ge_5`` (at least 5),
    ``closed_loop`` (0, 4, 6, 8, 9), ``not_3`` (the exact complement of ``is_3``) and
    ``random`` (labels drawn with ``seed``, unrelated to the image).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    d = bunch.target.astype(np.int64)
    cols: dict[str, np.ndarray] = {f"is_{k}": (d == k) for k in range(10)}
    cols["even"] = d % 2 == 0
    cols["ge_5"] = d >= 5
    cols["closed_loop"] = np.isin(d, CLOSED_LOOP_DIGITS)
    cols["not_3"] = d != 3
    cols["random"] = np.random.default_rng(seed).random(d.size) < 0.5
    names = list(cols)
    labels = np.stack([cols[n].astype(np.float32) for n in names], axis=1)
    return Dataset(
        features=x,
        labels=labels,
        tasks=[_binary(n) for n in names],
        feature_names=[f"px_{i}" for i in range(x.shape[1])],
        source="builtin:digits",
    )


def synthetic(
    tasks: int = 16,
    groups: int = 4,
    samples: int = 2000,
    noise: float = 0.3,
    features: int = 32,
    rank: int = 3,
    jitter: float = 0.35,
    complement: int = 0,
    random: int = 0,
    missing: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Binary tasks with planted groups; the ground truth is kept in ``Dataset.ground_truth``.

    Each group ``g`` owns a random nonlinear latent ``z_g = tanh(x A_g)`` of width ``rank``.
    A task of group ``g`` thresholds ``z_g w_t + noise * eps`` with ``w_t`` the group's
    direction plus ``jitter`` times a task-specific one, at a task-specific prevalence
    (30 to 70 %). Tasks of one group share their latent, tasks of different groups use
    unrelated ones. Group membership is shuffled, so task names reveal nothing.

    Extras: ``complement`` tasks that are exact complements (1 - y) of planted tasks
    (ground truth: their twin's group), and ``random`` tasks with random labels (their
    own group id, -1, -2, ...). ``missing`` is the fraction of labels removed at random.
    """
    if tasks < 1 or groups < 1 or groups > tasks:
        raise InputError(f"builtin:synthetic: need 1 <= groups <= tasks, got tasks={tasks}, groups={groups}")
    if samples < 40:
        raise InputError(f"builtin:synthetic: samples={samples} is too small (at least 40)")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features))
    mats = [rng.standard_normal((features, rank)) * (2.0 / np.sqrt(features)) for _ in range(groups)]
    bases = [rng.standard_normal(rank) for _ in range(groups)]
    latents = [np.tanh(x @ a) for a in mats]
    assign = rng.permutation(np.arange(tasks) % groups)
    names = [f"y_{i:02d}" for i in range(tasks)]
    cols: list[np.ndarray] = []
    truth: dict[str, int] = {}
    for i, g in enumerate(assign):
        w = bases[g] + jitter * rng.standard_normal(rank)
        score = latents[g] @ w
        score = (score - score.mean()) / (score.std() + 1e-12)
        score = score + noise * rng.standard_normal(samples)
        thr = np.quantile(score, rng.uniform(0.3, 0.7))
        cols.append((score > thr).astype(np.float32))
        truth[names[i]] = int(g)
    for k in range(complement):
        twin = k % tasks
        name = f"y_not_{twin:02d}"
        names.append(name)
        cols.append(1.0 - cols[twin])
        truth[name] = truth[names[twin]]
    for k in range(random):
        name = f"y_random_{k}"
        names.append(name)
        cols.append((rng.random(samples) < 0.5).astype(np.float32))
        truth[name] = -(k + 1)
    labels = np.stack(cols, axis=1).astype(np.float32)
    if missing > 0:
        labels[rng.random(labels.shape) < missing] = np.nan
    return Dataset(
        features=x.astype(np.float32),
        labels=labels,
        tasks=[_binary(n) for n in names],
        feature_names=[f"x_{i}" for i in range(features)],
        source="builtin:synthetic",
        ground_truth=truth,
    )


BUILTINS: dict[str, Callable[..., Dataset]] = {"digits": digits, "synthetic": synthetic}
_INT_OPTS = {"tasks", "groups", "samples", "features", "rank", "complement", "random", "seed"}
_FLOAT_OPTS = {"noise", "jitter", "missing"}


def load_builtin(spec: str) -> Dataset:
    """Load ``builtin:NAME[:k=v,...]``."""
    body = spec[len("builtin:"):]
    name, _, opts = body.partition(":")
    if name not in BUILTINS:
        raise InputError(f"unknown built-in dataset {name!r}; known: {', '.join(sorted(BUILTINS))}")
    kwargs: dict[str, int | float] = {}
    allowed = {"seed"} if name == "digits" else _INT_OPTS | _FLOAT_OPTS
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in allowed:
            raise InputError(f"{spec}: unknown option {item!r}; options: {', '.join(sorted(allowed))}")
        try:
            kwargs[key] = int(value) if key in _INT_OPTS else float(value)
        except ValueError:
            raise InputError(f"{spec}: option {key} needs a number, got {value!r}") from None
    ds = BUILTINS[name](**kwargs)
    ds.source = spec
    return ds
