"""Up-front memory estimates, so a run that cannot fit says so before it starts instead of dying."""

from __future__ import annotations

import os

from taskgrouping.errors import InputError
from taskgrouping.methods.swola import SwolaSettings

HEADROOM = 0.8
"""Refuse a run whose estimate is above this share of the memory available now."""


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
                     width: int | None = None) -> None:
    """:class:`InputError` with the estimate when the SWOLA affinity would not fit in memory."""
    parts = swola_memory(n_tasks, n_samples, settings, width)
    need = sum(parts.values())
    have = available_bytes() if available is None else available
    if need > HEADROOM * have:
        gib = 2.0**30
        detail = ", ".join(f"{k} {v / gib:.1f}" for k, v in parts.items())
        raise InputError(f"a SWOLA affinity over {n_tasks} tasks with {n_samples} probe samples needs about "
                         f"{need / gib:.1f} GiB ({detail}), more than {HEADROOM:.0%} of the {have / gib:.1f} GiB "
                         "available: regroup fewer tasks per run, use fewer --samples, or a larger machine")
