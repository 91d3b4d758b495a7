"""Up-front memory estimates, so a run that cannot fit says so before it starts instead of dying."""

from __future__ import annotations

import os

import numpy as np

from taskgrouping.data.dataset import Dataset
from taskgrouping.errors import InputError
from taskgrouping.methods.swola import SwolaSettings

INLINE_PROBE_FLOATS = 1 << 27
"""With the MLP trunk, tasks are probed in one step in the flow's process while their probes
hold at most this many float32 values (512 MiB: 2,048 tasks at 512 samples x 128 errors).

A batched MLP probe with the joint head costs about 1.3 ms a task (1,000 tasks in 1.27 s
on 2 cores, `bench/scale.py`), while the same 1,000 tasks sent to two local Dask workers
took 7.2 s of probe stage: the fan-out costs more than it saves on one machine. Image
trunks (per-sample gradients) and an existing cluster (``--dask-address``) keep the workers.
"""

HEADROOM = 0.8
"""Refuse a run whose estimate is above this share of the memory available now."""


def sparse_memory(n_tasks: int, n_samples: int, width: int, masked: bool = False, hidden: int = 64) -> dict[str, int]:
    """Peak bytes of a run's process with the sparse pairwise step (:mod:`taskgrouping.methods.sparse`), by part.

    Every task's weighted errors (float32) and per-sample norms and masks, the candidate
    search's blocks (a few ROW_BLOCK x T float64 arrays, and with missing labels the
    squared norms and two more), one task's gathered partners, the candidate pairs (index
    and value arrays while they are sorted) and the neighbour lists; the probe steps
    before it (one step's probes and its head fit's intermediates, which the allocator
    keeps for the process after they are freed), and the process itself
    (:data:`PROCESS_BASE`). Measured peaks (``bench/results/scale_sparse.md``, 512
    samples): 0.98, 2.43 and 4.34 GiB at 1,000, 5,000 and 10,000 tasks (0.97, 2.15-2.68 and
    4.17 with 20% of labels missing); this gives 1.02, 2.63 and 4.00 (1.04, 2.76 and 4.27).
    The head CV keeps a factor per task only for regression tasks with missing labels and
    for tasks labelled on under half the rows (``(H + 1)^2`` float64 per distinct row
    pattern and fold, 0.3 GiB per fold at 10,000 such tasks); the others share one.
    """
    from taskgrouping.methods.sparse import ROW_BLOCK, candidate_count, stored_count

    t, n = n_tasks, n_samples
    c, k = candidate_count(max(t, 2)), stored_count(max(t, 2))
    chunk = max(1, INLINE_PROBE_FLOATS // max(1, n * width))
    return {
        "probes": t * n * width * 4,
        "norms and masks": t * n * (8 + 1 + (8 if masked else 0)),
        "candidate blocks": min(ROW_BLOCK, t) * t * 8 * (6 if masked else 3),
        "exact pairs": t * c * 8 * 8 + c * n * width * 4,
        "neighbour lists": t * k * 64,
        "probe steps": min(t, chunk) * n * width * 8,
        "process": PROCESS_BASE,
    }


PROCESS_BASE = 256 << 20
"""What a run's Python process holds besides its arrays (torch, Prefect's client, the prepared data)."""


def swola_memory(n_tasks: int, n_samples: int, settings: SwolaSettings, width: int | None = None) -> dict[str, int]:
    """Bytes the SWOLA pairwise step holds at once, by part (the largest stage of a SWOLA run).

    Every task's weighted errors (float32), two float64 blocks of them, a few T x T float64
    matrices (distances, cache lookup, masks) and the long-form affinity table (one row
    per ordered pair). At 1,000 tasks and 512 samples this gives about 0.45 GiB; the
    pairwise step measured 0.55 GiB above its start (``bench/results/scale.md``).
    ``width`` is the numbers a probe keeps per sample (default: the MLP's units; P or
    the sketch width for another trunk).
    """
    if width is None:
        width = settings.trunks * settings.layers * settings.hidden
    return {
        "probes": n_tasks * n_samples * width * 4,
        "blocks": 2 * min(settings.block, n_tasks) * n_samples * width * 8,
        "pair matrices": 8 * n_tasks * n_tasks * 8,
        "affinity table": n_tasks * n_tasks * 64,
    }


def check_shared_samples(ds: Dataset, seed: int, samples: int) -> None:
    """Refuse a paired SWOLA distance for tasks sharing too few labelled probe samples.

    Fewer than :data:`~taskgrouping.data.dataset.MIN_SHARED`: the library's ``swola_affinity``
    refuses them; a run measures such tasks with ``swola-meta``. The message names the pair
    with the fewest and the count.
    """
    from taskgrouping.data.dataset import MIN_SHARED, probe_rows, shared_labels, split_rows

    shared = shared_labels(ds.labels[probe_rows(split_rows(ds.labels.shape[0], seed), seed, samples)])
    np.fill_diagonal(shared, np.inf)
    i, j = np.unravel_index(int(np.argmin(shared)), shared.shape)
    if len(ds.tasks) > 1 and shared[i, j] < MIN_SHARED:
        few = int((shared < MIN_SHARED).sum() // 2)
        raise InputError(
            f"tasks {ds.tasks[i].name!r} and {ds.tasks[j].name!r} share {int(shared[i, j])} labelled probe samples "
            f"({few} pairs share fewer than {MIN_SHARED}); SWOLA's paired distance needs samples labelled for both: "
            "use method swola-meta (each task probed on its own samples), or more samples")


def available_bytes() -> int:
    """Memory available to a new process now (``MemAvailable``), else physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_swola_fits(n_tasks: int, n_samples: int, settings: SwolaSettings, available: int | None = None,
                     width: int | None = None, sparse: bool = False, masked: bool = False) -> None:
    """:class:`InputError` with the estimate when the SWOLA affinity would not fit in memory.

    ``sparse``: the neighbour affinity's step (:func:`sparse_memory`), else the dense one.
    """
    if sparse:
        parts = sparse_memory(n_tasks, n_samples, width or settings.trunks * settings.layers * settings.hidden,
                              masked, settings.hidden)
    else:
        parts = swola_memory(n_tasks, n_samples, settings, width)
    need = sum(parts.values())
    have = available_bytes() if available is None else available
    if need > HEADROOM * have:
        gib = 2.0**30
        detail = ", ".join(f"{k} {v / gib:.1f}" for k, v in parts.items())
        raise InputError(f"a SWOLA affinity over {n_tasks} tasks with {n_samples} probe samples needs about "
                         f"{need / gib:.1f} GiB ({detail}), more than {HEADROOM:.0%} of the {have / gib:.1f} GiB "
                         "available: regroup fewer tasks per run, use fewer --samples, " + ("a larger machine" if sparse else
                         "--pairs sparse (each task's nearest partners only), or a larger machine"))
