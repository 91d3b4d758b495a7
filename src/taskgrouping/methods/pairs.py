"""The incremental pairwise step: cached pair values keyed by probe identity, only missing pairs computed.

A pair's value depends only on its two probes, so it is cached under their content
keys. Adding k tasks to T leaves the k x (T + k) new pairs missing; a small set of
rows covering them (the new tasks) is computed against all tasks, nothing else.

The cache is held as index arrays into its distinct probe keys, so looking up a
T x T matrix is a few vectorised operations, not T^2 dictionary lookups (at T =
1,000 that is half a million pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PairCache:
    """Cached pair values: entry ``e`` is the pair ``(keys[a[e]], keys[b[e]])`` with value ``values[e]``.

    Pairs are unordered; a pair stored twice (two concurrent writers) keeps its last value.
    """

    keys: list[str] = field(default_factory=list)
    a: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    def __len__(self) -> int:
        return int(self.values.size)

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The cached part of the (T, T) matrix over ``keys``: (values, known), both symmetric.

        ``known`` is True on the diagonal and wherever the pair is cached; values are 0
        where unknown.
        """
        t = len(keys)
        d = np.zeros((t, t))
        known = np.eye(t, dtype=bool)
        if len(self) and t:
            where = {k: i for i, k in enumerate(keys)}
            lut = np.array([where.get(k, -1) for k in self.keys], np.int64)  # cache key -> matrix row
            pa, pb = lut[self.a], lut[self.b]
            hit = (pa >= 0) & (pb >= 0)
            pa, pb, v = pa[hit], pb[hit], self.values[hit]
            d[pa, pb] = v
            d[pb, pa] = v
            known[pa, pb] = True
            known[pb, pa] = True
        return d, known

    def lookup_pairs(self, keys: Sequence[str], i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cached values of the pairs ``(keys[i[e]], keys[j[e]])`` and whether each is cached.

        No T x T matrix is formed (the sparse path asks for O(T k) pairs of 10,000+ tasks).
        """
        t = len(keys)
        values = np.zeros(len(i))
        hit = np.zeros(len(i), bool)
        if not len(self) or not len(i):
            return values, hit
        where = {k: n for n, k in enumerate(keys)}
        lut = np.array([where.get(k, -1) for k in self.keys], np.int64)
        pa, pb = lut[self.a], lut[self.b]
        ok = (pa >= 0) & (pb >= 0)
        code = np.minimum(pa[ok], pb[ok]) * t + np.maximum(pa[ok], pb[ok])
        v = self.values[ok]
        order = np.argsort(code, kind="stable")
        code, v = code[order], v[order]
        want = np.minimum(i, j).astype(np.int64) * t + np.maximum(i, j)
        pos = np.clip(np.searchsorted(code, want, side="right") - 1, 0, max(0, len(code) - 1))
        if len(code):
            hit = code[pos] == want
            values = np.where(hit, v[pos], 0.0)  # the last entry of a pair stored twice: the newest
        return values, hit

    def with_pairs(self, keys: Sequence[str], i: np.ndarray, j: np.ndarray, values: np.ndarray) -> PairCache:
        """A new cache with the pairs ``(keys[i], keys[j])`` added."""
        where = {k: n for n, k in enumerate(self.keys)}
        merged = list(self.keys)
        for k in keys:
            if k not in where:
                where[k] = len(merged)
                merged.append(k)
        lut = np.array([where[k] for k in keys], np.int64)
        return PairCache(merged, np.concatenate([self.a, lut[i]]), np.concatenate([self.b, lut[j]]),
                         np.concatenate([self.values, np.asarray(values, np.float64)]))

    def since(self, n: int) -> PairCache:
        """The entries after the first ``n`` (the pairs :meth:`with_pairs` added to an ``n``-entry cache)."""
        return PairCache(list(self.keys), self.a[n:], self.b[n:], self.values[n:])

    def newest(self) -> PairCache:
        """One entry per unordered pair: its last value (the newest, when entries are in write order)."""
        if not len(self):
            return PairCache(list(self.keys))
        a, b = np.minimum(self.a, self.b), np.maximum(self.a, self.b)
        pair_id = a * (len(self.keys) + 1) + b
        _, last_rev = np.unique(pair_id[::-1], return_index=True)
        keep = np.sort(len(self) - 1 - last_rev)
        return PairCache(list(self.keys), a[keep], b[keep], self.values[keep])

    def as_dict(self) -> dict[tuple[str, str], float]:
        """``{pair_key(a, b): value}`` (for small caches and tests)."""
        return {pair_key(self.keys[a], self.keys[b]): float(v)
                for a, b, v in zip(self.a.tolist(), self.b.tolist(), self.values.tolist(), strict=True)}


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The canonical (sorted) form of an unordered pair of probe keys."""
    return (a, b) if a < b else (b, a)


def cover_rows(missing: np.ndarray) -> list[int]:
    """A small set of task rows covering every missing pair (greedy vertex cover).

    Args:
        missing: (T, T) symmetric bool, True where a pair is missing (diagonal False).

    Adding k tasks to T leaves the k x (T + k) new pairs missing; the new tasks have the
    highest degree, so they are the rows chosen. O(T) work per chosen row.
    """
    left = missing.copy()
    degree = left.sum(axis=1)
    rows: list[int] = []
    while degree.max(initial=0) > 0:
        best = int(degree.argmax())
        rows.append(best)
        degree -= left[best]
        degree[best] = 0
        left[best, :] = False
        left[:, best] = False
    return sorted(rows)


def incremental_matrix(keys: Sequence[str], cache: PairCache,
                       compute_rows: Callable[[list[int]], np.ndarray]) -> tuple[np.ndarray, PairCache, int]:
    """A symmetric (T, T) matrix with zero diagonal from the cache plus freshly computed rows.

    Args:
        keys: one probe key per task, in matrix order.
        cache: the pair cache (not modified).
        compute_rows: given task rows, returns their (len(rows), T) values against all tasks;
            asked for every row when more than half are needed (a symmetric computation of
            the whole matrix costs T(T+1)/2 pairs, less than rows x T).

    Returns:
        (matrix, the cache with the computed pairs added, number of pairs computed).
    """
    d, known = cache.lookup(keys)
    missing = ~known
    n_missing = int(np.triu(missing, 1).sum())
    if not n_missing:
        return d, cache, 0
    rows = cover_rows(missing)
    t = len(keys)
    if 2 * len(rows) > t + 1:  # most rows are new: the whole matrix (half of it, by symmetry) costs less
        rows = list(range(t))
    part = compute_rows(rows)
    new_i, new_j, new_v = [], [], []
    for pos, i in enumerate(rows):
        cols = np.flatnonzero(missing[i])
        d[i, cols] = part[pos, cols]
        d[cols, i] = part[pos, cols]
        missing[i, cols] = missing[cols, i] = False
        new_i.append(np.full(cols.size, i))
        new_j.append(cols)
        new_v.append(part[pos, cols])
    cache = cache.with_pairs(keys, np.concatenate(new_i), np.concatenate(new_j), np.concatenate(new_v))
    return d, cache, n_missing
