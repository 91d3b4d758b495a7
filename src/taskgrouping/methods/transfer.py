"""Measured pairwise transfer: the reference every affinity is judged against (methods.md section 10).

For T tasks, every task is trained alone and every pair together (HOA's trainings,
:mod:`taskgrouping.methods.hoa`, under the same cache keys, so a ``--method hoa`` run's
models are reused and the other way round), ``repeats`` times with the evaluation's
derived seeds. The transfer onto task j from task i is::

    transfer[j, i] = L_j(j alone) - L_j(j trained with i)

on j's own *selection* rows (per-sample losses, paired: the same rows and repeat
index), with its 95% interval from :func:`~taskgrouping.models.verdict.difference`
(training noise between repeats and sample noise between rows). Positive: training
with i helps j. The diagonal is 0. HOA's own matrix uses the validation rows (early
stopping saw them); this one uses rows no training decision saw.

:func:`fidelity` compares an affinity with it: Spearman's rank correlation over the
off-diagonal entries (a distance is negated first, so larger means "closer" for
every method) and the mean precision of each task's top-k partners.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from taskgrouping import keys
from taskgrouping.models.evaluate import repeat_seed
from taskgrouping.models.verdict import difference

if TYPE_CHECKING:
    from taskgrouping.methods.base import AffinityMatrix
    from taskgrouping.models.train import TrainSettings
    from taskgrouping.storage import Store

MAX_TASKS = 30
"""Above this many tasks the T + T(T-1)/2 trainings are refused (and the report does not look for them)."""


@dataclass(frozen=True)
class Transfer:
    """Measured transfer: ``mean[j, i]`` onto j (row) from i, with its 95% interval ``lo``, ``hi``."""

    tasks: list[str]
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    repeats: int
    trained: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form: tasks, the three matrices as nested lists, repeats and models trained."""
        return {"tasks": list(self.tasks), "mean": self.mean.tolist(), "lo": self.lo.tolist(), "hi": self.hi.tolist(),
                "repeats": self.repeats, "trained": self.trained}


def subsets(tasks: list[str]) -> list[list[str]]:
    """The trainings of the reference: every single task, then every pair, in task order."""
    return [[t] for t in tasks] + [list(p) for p in itertools.combinations(tasks, 2)]


def task_names(store: Store, dataset_key: str, tasks: list[str] | None = None) -> list[str]:
    """The reference's tasks: ``tasks`` (checked), else every task of the prepared dataset, in its order."""
    names = [t["name"] for t in store.read_prepared_meta(dataset_key)["tasks"]]
    if tasks is None:
        return names
    unknown = [t for t in tasks if t not in names]
    if unknown:
        raise ValueError(f"task {unknown[0]!r} is not in the prepared dataset {dataset_key}")
    return list(tasks)


def model_keys(store: Store, dataset_key: str, train: TrainSettings, seed: int, repeats: int,
               tasks: list[str] | None = None) -> dict[tuple[int, tuple[str, ...]], str]:
    """``(repeat, members) -> model key`` of every reference training (the flow's group keys)."""
    data = store.read_prepared(dataset_key, tasks=[])
    meta = store.read_prepared_meta(dataset_key)
    fps = dict(zip([t["name"] for t in meta["tasks"]], meta["label_fps"], strict=True))
    names = task_names(store, dataset_key, tasks)
    data_key = data.data_key()
    return {(r, tuple(members)): keys.group_key(data_key, [(m, fps[m]) for m in members], train, repeat_seed(seed, r))
            for r in range(repeats) for members in subsets(names)}


def measured_transfer(store: Store, dataset_key: str, train: TrainSettings, seed: int, repeats: int = 1,
                      device: str = "cpu", tasks: list[str] | None = None, train_missing: bool = True,
                      only: int | None = None) -> Transfer | None:
    """The transfer matrix of the tasks of a prepared dataset in ``store`` (trains what is not stored yet).

    With ``train_missing=False`` nothing is trained: None unless every model is stored.
    ``only``: the matrix of that one repeat's models (its reproducibility against another's
    is the reference's own reliability).
    """
    from taskgrouping.errors import InputError
    from taskgrouping.tasks.steps import train_step

    names = task_names(store, dataset_key, tasks)
    if len(names) > MAX_TASKS:
        raise InputError(f"measured transfer trains T + T(T-1)/2 models per repeat: at most {MAX_TASKS} tasks, "
                         f"got {len(names)}")
    wanted = model_keys(store, dataset_key, train, seed, repeats, names)
    if only is not None:
        wanted = {(0, m): k for (r, m), k in wanted.items() if r == only}
        repeats = 1
    trained = 0
    for (r, members), key in wanted.items():
        if store.has_model(key):
            continue
        if not train_missing:
            return None
        rec = train_step.fn(str(store.root), dataset_key, list(members), asdict(train),
                            repeat_seed(seed, r if only is None else only), device, cache_key=key, run_id="transfer")
        trained += int(bool(rec["computed"]))
    t = len(names)
    mean, lo, hi = np.zeros((t, t)), np.zeros((t, t)), np.zeros((t, t))
    heldout = {k: store.read_model_heldout(key) for k, key in wanted.items()}
    for j, tj in enumerate(names):
        alone = [heldout[(r, (tj,))][tj]["selection"] for r in range(repeats)]
        rows = alone[0][0]
        for i, ti in enumerate(names):
            if i == j:
                continue
            pair = tuple(sorted((ti, tj), key=names.index))
            together = [heldout[(r, pair)][tj]["selection"] for r in range(repeats)]
            for got in (*alone, *together):
                if not np.array_equal(got[0], rows):
                    raise RuntimeError(f"task {tj!r}: the selection rows of its models differ")
            est = difference({tj: np.stack([a[1] for a in alone])}, {tj: np.stack([b[1] for b in together])},
                             {tj: rows})
            mean[j, i], lo[j, i], hi[j, i] = est.mean, est.lo, est.hi
    return Transfer(names, mean, lo, hi, repeats, trained)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def fidelity(affinity: AffinityMatrix, transfer: Transfer, k: int = 3) -> dict[str, Any]:
    """How well ``affinity`` predicts measured transfer: Spearman over off-diagonal pairs, top-k partner precision.

    A distance is negated (closer = larger), so every method's "more similar" is larger;
    the matrix is aligned to the transfer's task order. ``topk``: for each receiver j,
    the share of its k largest affinity partners that are among its k largest measured
    transfers (ties broken by task order), averaged over receivers; ``k`` is at most T - 1.
    """
    order = [affinity.tasks.index(t) for t in transfer.tasks]
    a = np.asarray(affinity.values, dtype=np.float64)[np.ix_(order, order)]
    if affinity.kind == "distance":
        a = -a
    t = len(transfer.tasks)
    off = ~np.eye(t, dtype=bool)
    k = max(1, min(k, t - 1))
    hits = []
    for j in range(t):
        others = [i for i in range(t) if i != j]
        top_a = set(sorted(others, key=lambda i: (-a[j, i], i))[:k])
        top_m = set(sorted(others, key=lambda i: (-transfer.mean[j, i], i))[:k])
        hits.append(len(top_a & top_m) / k)
    return {"spearman": _spearman(a[off], transfer.mean[off]), "topk": float(np.mean(hits)), "k": k,
            "pairs": int(off.sum())}
