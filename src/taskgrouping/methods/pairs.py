"""The incremental pairwise step: cached pair values keyed by probe identity, only missing pairs computed.

A pair's value depends only on its two probes, so it is cached under their content
keys. Adding k tasks to T leaves the k x (T + k) new pairs missing; a small set of
rows covering them (the new tasks) is computed against all tasks, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PairCache = dict[tuple[str, str], float]


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The cache key of an unordered pair of probe keys."""
    return (a, b) if a < b else (b, a)


def cover_rows(missing: list[tuple[int, int]], n: int) -> list[int]:
    """A small set of task rows covering every missing pair (greedy vertex cover).

    Adding k tasks to T leaves the k x (T + k) new pairs missing; the new tasks have the
    highest degree, so they are the rows chosen.
    """
    left = np.zeros((n, n), dtype=bool)
    for i, j in missing:
        left[i, j] = left[j, i] = True
    rows: list[int] = []
    degree = left.sum(axis=1)
    while degree.any():
        best = int(degree.argmax())
        rows.append(best)
        left[best, :] = False
        left[:, best] = False
        degree = left.sum(axis=1)
    return sorted(rows)


def incremental_matrix(keys: list[str], cache: PairCache,
                       compute_rows: Callable[[list[int]], np.ndarray]) -> tuple[np.ndarray, int]:
    """A symmetric (T, T) matrix with zero diagonal from the cache plus freshly computed rows.

    Args:
        keys: one probe key per task, in matrix order.
        cache: pair values by :func:`pair_key`; missing pairs are added to it in place.
        compute_rows: given task rows, returns their (len(rows), T) values against all tasks.

    Returns:
        (matrix, number of pairs that were missing and computed).
    """
    t = len(keys)
    d = np.zeros((t, t))
    missing: list[tuple[int, int]] = []
    for i in range(t):
        for j in range(i + 1, t):
            value = cache.get(pair_key(keys[i], keys[j]))
            if value is None:
                missing.append((i, j))
            else:
                d[i, j] = d[j, i] = value
    if missing:
        rows = cover_rows(missing, t)
        part = compute_rows(rows)
        for pos, i in enumerate(rows):
            for j in range(t):
                pair = pair_key(keys[i], keys[j])
                if i != j and pair not in cache:
                    cache[pair] = float(part[pos, j])
                    d[i, j] = d[j, i] = cache[pair]
    return d, len(missing)
