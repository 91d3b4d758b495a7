"""The sparse task graph: candidate neighbours from sketches, exact SWOLA distances only for them.

Past a few thousand tasks the pairwise step is the whole cost of a run (O(T^2 n m):
8.9 s at 1,000 tasks, about 15 minutes at 10,000) and the T x T affinity is 10^8
numbers. What the graph selector uses is each task's few nearest partners, so:

1. **Sketch.** Each task's weighted errors (the row whose L1 distances are SWOLA's D,
   :func:`~taskgrouping.methods.swola.weighted_errors`) are projected once onto
   :data:`SKETCH_WIDTH` seeded Gaussian directions. The squared L2 distance between two
   sketches estimates the squared L2 distance between the rows; samples labelled for only
   one of the two tasks are taken out exactly (their squared norms, two matrix products:
   the mask-aware estimate), and the rest is divided by the shared labelled samples.
   Measured on 10,000 planted tasks (``bench/scale.py``), Gaussian sketches ranked
   candidates better than Cauchy sketches of the same width with either L1 estimator
   (median or geometric mean): recall of the true 10 nearest among 40 candidates 0.64
   against 0.49 / 0.55 at width 128. L2 order is not L1 order, which is why the sketch
   only proposes.
2. **Candidates.** Each task's :func:`candidate_count` nearest in sketch space (blocked
   brute force, one matrix product per block of rows).
3. **Exact D** for every candidate pair (each unordered pair once), from the same
   weighted errors, the same masked L1 as the dense path; pairs in the pair cache are
   read, not computed.
4. **Stored**: per task its :func:`stored_count` nearest among its exact pairs
   (:class:`NeighbourAffinity`, long Parquet, O(T k) rows).

Distances are SWOLA's exact values on every stored pair; only *which* pairs are stored
is approximate. Unstored pairs are, for the selection's silhouette, taken as far as the
farther of the two tasks' last stored neighbour (:meth:`NeighbourAffinity.radius`): a
lower bound when the lists are exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import torch

SKETCH_WIDTH = 256
"""Gaussian directions per task sketch."""

SPARSE_MIN_TASKS = 1000
"""``--pairs auto`` computes the sparse graph from this many tasks on (the dense matrix below).

Measured on ``builtin:synthetic`` (2 seeds, 0 and 20% of labels missing, library):
at 1,000 tasks the dense pairs took 21 s and the sparse step 5.3-5.7 s, ARI 0.970-0.998
against the dense 0.974-0.997; at 500, 5.5 s against 2.1-2.7 s, but ARI 0.005-0.009
lower with missing labels, so small runs keep every pair."""

ROW_BLOCK = 1024
"""Sketch rows compared at a time in the candidate search (a ROW_BLOCK x T float32 block)."""


def sparse_code() -> str:
    """Bump when the candidates or the stored lists change (part of a neighbour affinity's key)."""
    return "1"


def stored_count(t: int) -> int:
    """Neighbours stored per task: ``max(10, 2 round(ln T))``, at most T - 1 (twice the graph's k)."""
    return max(1, min(t - 1, max(10, 2 * round(math.log(max(t, 2))))))


def candidate_count(t: int) -> int:
    """Sketch candidates per task: twice :func:`stored_count`, at most T - 1."""
    return max(1, min(t - 1, 2 * stored_count(t)))


@dataclass(frozen=True)
class NeighbourAffinity:
    """A sparse ``distance`` affinity: each task's nearest partners with their exact distances.

    Attributes:
        tasks: task ids.
        neighbours: (T, K) each task's K nearest partners (indices), nearest first.
        values: (T, K) their distances (exact SWOLA D).
        kind: always ``distance``.
        info: how the lists were found (sketch width, candidates, pairs computed).
        sketch: (T, w) each task's sketch, or None: what an unstored pair's distance is
            estimated from (:meth:`estimate_to`); without it an unstored pair counts as
            :meth:`radius` says.
        offset: subtracted from every estimate (the graph selector shifts the stored values).
        row_norms, labelled: (T,) each task's squared row norm (its sketch's expected
            squared norm) and share of labelled probe samples, when some label is missing
            (None otherwise): the estimate takes the samples only one task labels out.
        scale: exact distance per unit of sketch distance, as measured when the lists were
            computed (:func:`sketch_scale` over the sketch candidates' lists); None: measured
            on the stored pairs.
    """

    tasks: list[str]
    neighbours: np.ndarray
    values: np.ndarray
    kind: str = "distance"
    info: dict[str, Any] = field(default_factory=dict)
    sketch: np.ndarray | None = None
    offset: float = 0.0
    row_norms: np.ndarray | None = None
    labelled: np.ndarray | None = None
    scale: float | None = None

    sparse = True

    def __post_init__(self) -> None:
        """Check shapes."""
        t = len(self.tasks)
        if self.neighbours.shape != self.values.shape or self.neighbours.shape[0] != t:
            raise ValueError(f"neighbour lists have shapes {self.neighbours.shape} and {self.values.shape}, "
                             f"expected ({t}, K)")
        if len(set(self.tasks)) != t:
            raise ValueError("affinity task names repeat")

    @property
    def k(self) -> int:
        """Partners stored per task."""
        return int(self.neighbours.shape[1])

    def copy(self) -> NeighbourAffinity:
        """An independent copy."""
        def own(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x.copy()

        return NeighbourAffinity(list(self.tasks), self.neighbours.copy(), self.values.copy(), self.kind,
                                 dict(self.info), own(self.sketch), self.offset, own(self.row_norms),
                                 own(self.labelled), self.scale)

    @functools.cached_property
    def _scale(self) -> float:
        """Exact distance per unit of sketch distance: :attr:`scale`, else measured on the stored pairs."""
        assert self.sketch is not None
        if self.scale is not None:
            return self.scale
        a, b, d = self.pairs()
        return sketch_scale(self.sketch, self.row_norms, self.labelled, a, b, d + self.offset)

    def estimate_to(self, codes: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """(rows, communities) each task's estimated mean distance to each community's members.

        ``scale * sqrt(mean_j ||s_i - s_j||^2)`` over the community's sketches, less
        :attr:`offset` (at least 0): the squared sketch distances add up by community, so
        this is one (T x w) by (w x communities) product, not a sum over pairs. Used for the
        pairs no list holds; the stored pairs keep their exact distances.

        With missing labels a row is zero where its task is unlabelled, so
        ``||s_i - s_j||^2`` also counts the samples only one of the two labels, and tasks
        with many missing labels would look closer than they are (``builtin:subsets``,
        each task missing up to 30%: every task merged into 2 groups, ARI 0.0). Taken
        out per task, as if a task's missing labels fell at random: ``r_i (1 - f_j)`` for
        task i's samples that j does not label (``r`` :attr:`row_norms`, ``f``
        :attr:`labelled`), the rest divided by the shared share ``f_i f_j``; by
        community these are means of ``r`` and ``f``, so the cost stays one product
        (the same 1,000 tasks: 106 groups, ARI 0.84; dense 0.90).
        """
        return self._estimate_rows(self._community_stats(codes), rows)

    def _community_stats(self, codes: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per community: mean sketch, mean squared sketch norm, and (masked) mean row norm and labelled share."""
        assert self.sketch is not None
        s = self.sketch.astype(np.float64)
        g = int(codes.max()) + 1
        sizes = np.bincount(codes, minlength=g).astype(np.float64)
        n2 = (s * s).sum(axis=1)
        mu = np.stack([np.bincount(codes, weights=s[:, j], minlength=g) for j in range(s.shape[1])],
                      axis=1).astype(np.float64) / sizes[:, None]
        q = np.bincount(codes, weights=n2, minlength=g) / sizes
        if self.row_norms is None or self.labelled is None:
            return s, n2, mu, q
        rbar = np.bincount(codes, weights=self.row_norms, minlength=g) / sizes
        fbar = np.bincount(codes, weights=self.labelled, minlength=g) / sizes
        return s, n2, mu, q, rbar, fbar

    def _estimate_rows(self, stats: tuple[np.ndarray, ...], rows: slice | None) -> np.ndarray:
        """:meth:`estimate_to` for ``rows`` from :meth:`_community_stats`."""
        s, n2, mu, q = stats[:4]
        sel = slice(None) if rows is None else rows
        msq = s[sel] @ mu.T
        msq *= -2.0
        msq += n2[sel][:, None]
        msq += q[None, :]
        if len(stats) > 4:
            assert self.row_norms is not None and self.labelled is not None
            rbar, fbar = stats[4], stats[5]
            r, f = self.row_norms, self.labelled
            msq -= r[sel][:, None] * (1.0 - fbar[None, :])
            msq -= rbar[None, :] * (1.0 - f[sel][:, None])
            np.clip(msq, 0.0, None, out=msq)
            msq /= np.maximum(f[sel][:, None] * fbar[None, :], 1e-12)
        np.clip(msq, 0.0, None, out=msq)
        np.sqrt(msq, out=msq)
        msq *= self._scale
        msq -= self.offset
        return np.clip(msq, 0.0, None, out=msq)

    def radius(self) -> np.ndarray:
        """(T,) each task's distance to its last stored partner (what an unstored pair is at least)."""
        return self.values[:, -1].astype(np.float64) if self.k else np.zeros(len(self.tasks))

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored pair once: ``(i, j, d)`` with ``i < j`` (computed once: the lists do not change)."""
        return self._pairs

    @functools.cached_property
    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t, k = self.neighbours.shape
        i = np.repeat(np.arange(t), k)
        j = self.neighbours.reshape(-1)
        d = self.values.reshape(-1).astype(np.float64)
        a, b = np.minimum(i, j), np.maximum(i, j)
        _, first = np.unique(a * t + b, return_index=True)
        out = a[first], b[first], d[first]
        for x in out:
            x.flags.writeable = False  # shared by every caller
        return out

    @functools.cached_property
    def _pair_codes(self) -> np.ndarray:
        a, b, _ = self._pairs
        return a * len(self.tasks) + b

    def pair_values(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored distance of each pair ``(i[e], j[e])`` and whether it is stored."""
        _, _, d = self.pairs()
        t = len(self.tasks)
        code = self._pair_codes
        want = np.minimum(i, j) * t + np.maximum(i, j)
        pos = np.clip(np.searchsorted(code, want), 0, max(0, len(code) - 1))
        hit = (code[pos] == want) if len(code) else np.zeros(len(want), bool)
        return np.where(hit, d[pos] if len(code) else 0.0, 0.0), hit

    def cohesion(self, members: list[str]) -> float:
        """Mean within-group distance over the mean off-diagonal distance (NaN under two members).

        Unstored pairs count as in :func:`community_sums`.
        """
        if len(members) < 2:
            return float("nan")
        at = self._index
        try:
            idx = np.array([at[m] for m in members], np.int64)
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]!r} is not in the list") from None
        i, j = np.triu_indices(len(idx), 1)
        d, hit = self.pair_values(idx[i], idx[j])
        r = self.radius()
        within = np.where(hit, d, np.maximum(r[idx[i]], r[idx[j]])).mean()
        overall = self._mean_distance
        return float(within / overall) if overall > 0 else float("nan")

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        """Each task's position (built once: the report asks for a thousand groups' cohesion at 10,000 tasks)."""
        return {t: i for i, t in enumerate(self.tasks)}

    @functools.cached_property
    def _mean_distance(self) -> float:
        """Mean over every pair (unstored ones at ``max(r_i, r_j)``): O(T log T), no T x T matrix."""
        t = len(self.tasks)
        if t < 2:
            return float("nan")
        r = np.sort(self.radius())
        fill = float((r * np.arange(t)).sum())  # each r counted for the tasks below it: sum over pairs of the max
        a, b, d = self.pairs()
        rr = self.radius()
        fill += float((d - np.maximum(rr[a], rr[b])).sum())
        return fill / (t * (t - 1) / 2)

    def to_table(self) -> pa.Table:
        """Long form ``task_a, task_b, value, kind, rank``: task_a's partners, rank 1 the nearest."""
        t, k = self.neighbours.shape
        names = pa.array(self.tasks, pa.string())
        a = pa.array(np.repeat(np.arange(t, dtype=np.int32), k))
        b = pa.array(self.neighbours.reshape(-1).astype(np.int32))
        cols = {
            "task_a": pa.DictionaryArray.from_arrays(a, names),
            "task_b": pa.DictionaryArray.from_arrays(b, names),
            "value": pa.array(self.values.reshape(-1).astype(np.float64)),
            "kind": pa.DictionaryArray.from_arrays(pa.array(np.zeros(t * k, np.int32)), pa.array([self.kind])),
            "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), t)),
        }
        if self.sketch is not None and k:  # each task's sketch on its rank-1 row (null on the others)
            w = self.sketch.shape[1]
            offsets = np.concatenate([[0], np.repeat((np.arange(t) + 1) * w, k)]).astype(np.int32)
            values = pa.array(np.ascontiguousarray(self.sketch, np.float32).reshape(-1), pa.float32())
            first = np.tile(np.arange(k) != 0, t)
            cols["sketch"] = pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(first))
            if self.row_norms is not None and self.labelled is not None:  # with missing labels, on the same rows
                cols["row_norm"] = pa.array(np.repeat(self.row_norms.astype(np.float64), k), mask=first)
                cols["labelled_share"] = pa.array(np.repeat(self.labelled.astype(np.float64), k), mask=first)
            if self.scale is not None:
                cols["sketch_scale"] = pa.array(np.full(t * k, self.scale, np.float64), mask=first)
        return pa.table(cols)

    @classmethod
    def from_table(cls, table: pa.Table, tasks: Sequence[str] | None = None) -> NeighbourAffinity:
        """Inverse of :meth:`to_table` (every task has the same number of partners, ranks 1..K)."""
        cols = [table.column(c).cast(pa.string()) for c in ("task_a", "task_b")]  # dictionary or large strings too
        both = pa.chunked_array(cols[0].chunks + cols[1].chunks, pa.string()).combine_chunks().dictionary_encode()
        names = both.dictionary.to_pylist() if tasks is None else list(tasks)
        n = table.num_rows
        idx = both.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if tasks is not None:
            lut = np.array([names.index(x) for x in both.dictionary.to_pylist()], np.int64)
            idx = lut[idx]
        a, b = idx[:n], idx[n:]
        rank = table.column("rank").to_numpy().astype(np.int64)
        v = np.asarray(table.column("value").to_numpy(), np.float64)
        t = len(names)
        k = int(rank.max()) if n else 0
        if n != t * k:
            raise ValueError(f"a neighbour affinity has {n} rows, expected {t} tasks x {k} partners")
        nb = np.full((t, k), -1, np.int64)
        val = np.zeros((t, k))
        nb[a, rank - 1] = b
        val[a, rank - 1] = v
        if (nb < 0).any():
            i = int(np.argwhere(nb < 0)[0][0])
            raise ValueError(f"task {names[i]!r} lacks some of its {k} partners")
        sketch = norms = share = None
        scale: float | None = None
        if "sketch" in table.column_names:
            col = table.column("sketch").combine_chunks()
            first = np.flatnonzero(rank == 1)
            rows = col.take(pa.array(first))
            if rows.null_count == 0 and len(rows):
                w = len(rows[0])
                sketch = np.zeros((t, w), np.float32)
                sketch[a[first]] = rows.flatten().to_numpy().reshape(len(first), w)
                if "row_norm" in table.column_names and "labelled_share" in table.column_names:
                    norms, share = np.zeros(t), np.zeros(t)
                    norms[a[first]] = table.column("row_norm").combine_chunks().take(pa.array(first)).to_numpy()
                    share[a[first]] = table.column("labelled_share").combine_chunks().take(pa.array(first)).to_numpy()
                if "sketch_scale" in table.column_names:
                    scale = float(table.column("sketch_scale").combine_chunks()[int(first[0])].as_py())
        return cls(names, nb, val, sketch=sketch, row_norms=norms, labelled=share, scale=scale)


def sketch_scale(sketch: np.ndarray, row_norms: np.ndarray | None, labelled: np.ndarray | None, a: np.ndarray,
                 b: np.ndarray, d: np.ndarray) -> float:
    """The median ratio of exact distance ``d`` to sketch distance over (up to 20,000 of) the pairs ``(a, b)``.

    The sketch distance is the per-pair form of :meth:`NeighbourAffinity.estimate_to` (with
    missing labels, the samples only one task labels taken out).
    """
    if len(a) > 20_000:
        pick = np.random.default_rng(0).choice(len(a), 20_000, replace=False)
        a, b, d = a[pick], b[pick], d[pick]
    s = sketch.astype(np.float64)
    sq = ((s[a] - s[b]) ** 2).sum(axis=1)
    if row_norms is not None and labelled is not None:
        r, f = row_norms, labelled
        sq = np.clip(sq - r[a] * (1.0 - f[b]) - r[b] * (1.0 - f[a]), 0.0, None) / np.maximum(f[a] * f[b], 1e-12)
    l2 = np.sqrt(sq)
    ok = l2 > 0
    return float(np.median(d[ok] / l2[ok])) if ok.any() else 0.0


def sample_norms(errors: torch.Tensor, p: int = 1, chunk: int = 64) -> torch.Tensor:
    """(T, n) float64 each sample's row L1 norm (``p=1``) or squared L2 norm (``p=2``) of ``errors`` (T, n, m).

    A few tasks at a time: the whole array's ``abs()`` would be a second copy of it.
    """
    import torch

    out = torch.empty(errors.shape[:2], dtype=torch.float64, device=errors.device)
    for r in range(0, errors.shape[0], chunk):
        part = errors[r : r + chunk].double()
        out[r : r + chunk] = (part.abs() if p == 1 else part * part).sum(dim=2)
    return out


def use_sparse(pairs: str, n_tasks: int, selector: str) -> bool:
    """Whether a run stores the neighbour affinity (``--pairs sparse``, or ``auto`` past the threshold).

    ``auto``: from :data:`SPARSE_MIN_TASKS` tasks on, with the ``graph`` selector (the others need every pair).
    """
    if pairs == "sparse":
        return True
    return pairs == "auto" and n_tasks >= SPARSE_MIN_TASKS and selector in ("graph", "given")


def sketch_rows(errors: torch.Tensor, width: int, seed: int, chunk: int = 256) -> torch.Tensor:
    """(T, width) Gaussian sketches of the rows ``errors`` (T, F), ``E G / sqrt(width)``, G seeded.

    G is generated in column blocks of 4,096 rows of features, so it is never held whole.
    """
    import torch

    from taskgrouping.hashing import derive_seed

    t, f = errors.shape
    gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, "sparse-sketch") % (2**63))
    out = torch.zeros((t, width), dtype=torch.float32, device=errors.device)
    step = 4096
    for start in range(0, f, step):
        g = torch.randn((min(step, f - start), width), generator=gen).to(errors.device) / math.sqrt(width)
        for r in range(0, t, chunk):
            out[r : r + chunk] += errors[r : r + chunk, start : start + step] @ g
    return out


class _Scores:
    """Each task pair's candidate score (mask-aware squared L2 estimate) for any block of rows.

    One float32 product per block: ``[s, sq, m] . [-2 s, m, sq] = -2 s_i.s_j + sq_i.m_j + m_i.sq_j``,
    so that with the offsets ``||s||^2 - sum(sq)`` it is ``||s_i - s_j||^2`` less the squared
    norms of the samples only one task labels, divided by the shared labelled samples. A
    task's score to itself, and to a task it shares no labelled sample with, is infinite.
    """

    def __init__(self, sketch: torch.Tensor, sq: torch.Tensor | None, masks: torch.Tensor) -> None:
        import torch

        s32 = sketch.float()
        self.offset = (s32.double() ** 2).sum(dim=1)
        self.mf: torch.Tensor | None = None
        if sq is None:
            self.left, self.right = s32, -2.0 * s32
        else:
            self.mf = masks.float()
            sqf = sq.float()
            self.left = torch.cat([s32, sqf, self.mf], dim=1)
            self.right = torch.cat([-2.0 * s32, self.mf, sqf], dim=1)
            self.offset = self.offset - sq.double().sum(dim=1)

    def block(self, rows: np.ndarray, cols: np.ndarray | None = None) -> torch.Tensor:
        """(len(rows), T or len(cols)) float64 scores of the tasks ``rows`` against every task (or ``cols``)."""
        import torch

        r = torch.as_tensor(rows, dtype=torch.long)
        c = slice(None) if cols is None else torch.as_tensor(cols, dtype=torch.long)
        d2 = (self.left[r] @ self.right[c].T).double().add_(self.offset[r, None]).add_(self.offset[None, c])
        if self.mf is not None:
            both = (self.mf[r] @ self.mf[c].T).double()
            d2 = torch.where(both > 0, d2.clamp_min(0.0) / both.clamp_min(1.0), torch.full_like(d2, math.inf))
        d2 = d2.clamp_min(0.0)
        col_ids = torch.arange(self.left.shape[0]) if cols is None else torch.as_tensor(cols, dtype=torch.long)
        d2[r[:, None] == col_ids[None, :]] = math.inf
        return d2


def candidates(sketch: torch.Tensor, sq: torch.Tensor | None, masks: torch.Tensor, c: int,
               rank: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each task's c nearest others in sketch space (mask-aware mean squared L2 estimate).

    Args:
        sketch: (T, w) :func:`sketch_rows`.
        sq: (T, n) each sample's squared row norm per task, or None when every label is present.
        masks: (T, n) bool labelled.
        rank: (T,) canonical position of each task (ties break by it, not by input order).
        rows: the tasks whose lists are wanted (every task when None).

    Returns:
        ``(idx, score)``: (R, c) the partners, nearest first, and their scores
        (:class:`_Scores`, without the tie-break), one row per task of ``rows``.
    """
    import torch

    scores = _Scores(sketch, sq, masks)
    rows = np.arange(sketch.shape[0]) if rows is None else np.asarray(rows, np.int64)
    idx = np.empty((len(rows), c), np.int64)
    val = np.empty((len(rows), c))
    tie = torch.as_tensor(rank, dtype=torch.float64) * 1e-12
    for r in range(0, len(rows), ROW_BLOCK):
        block = rows[r : r + ROW_BLOCK]
        d2 = scores.block(block)
        top = torch.topk(d2 + tie[None, :], c, dim=1, largest=False).indices
        idx[r : r + len(block)] = top.cpu().numpy()
        val[r : r + len(block)] = torch.gather(d2, 1, top).cpu().numpy()
    return idx, val


@dataclass(frozen=True)
class CandidateLists:
    """Every task's sketch candidates, kept so that a run with a few tasks more recomputes only theirs.

    Attributes:
        keys: each row's probe key (a task whose labels change has another key).
        idx: (T, c) each task's candidates (rows of ``keys``), nearest first.
        score: (T, c) their scores (:class:`_Scores`, no tie-break).
        masked: whether the scores are the mask-aware ones (some label missing in the run).
    """

    keys: list[str]
    idx: np.ndarray
    score: np.ndarray
    masked: bool


CANDIDATE_FRESH_MAX = 0.25
"""Past this share of rows to recompute (new tasks, and lists naming a removed one), every list is recomputed."""


def update_candidates(keys: Sequence[str], sketch: torch.Tensor, sq: torch.Tensor | None, masks: torch.Tensor,
                      c: int, rank: np.ndarray, base: CandidateLists | None) -> tuple[CandidateLists, int]:
    """The candidate lists of ``keys``: :func:`candidates` for every task, or ``base`` brought up to date.

    With ``base`` (an earlier run's lists over other tasks, the same ``c`` and score kind),
    only these rows are computed against every task: the new tasks', and those whose list
    names a task no longer present. Every other list is the old one with each new task that
    scores below its last entry merged in, so the lists are those a fresh computation gives
    (a task's c nearest among the old ones and the new ones; a test), up to floating-point
    near-ties: a new task's score to an old one is read from the new task's row. Returns
    ``(lists, rows computed)``.
    """
    t = len(keys)
    masked = sq is not None
    usable = base is not None and base.idx.shape[1] == c and base.masked == masked
    if not usable:
        idx, val = candidates(sketch, sq, masks, c, rank)
        return CandidateLists(list(keys), idx, val, masked), t
    assert base is not None
    pos = {k: i for i, k in enumerate(keys)}
    to_now = np.array([pos.get(k, -1) for k in base.keys], np.int64)  # base row -> row now (-1: gone)
    from_base = np.full(t, -1, np.int64)
    from_base[to_now[to_now >= 0]] = np.flatnonzero(to_now >= 0)
    old = np.flatnonzero(from_base >= 0)
    lists = to_now[base.idx[from_base[old]]]
    broken = (lists < 0).any(axis=1)
    new = np.flatnonzero(from_base < 0)
    fresh = np.union1d(new, old[broken])
    if len(fresh) > CANDIDATE_FRESH_MAX * t:
        idx, val = candidates(sketch, sq, masks, c, rank)
        return CandidateLists(list(keys), idx, val, masked), t
    idx = np.empty((t, c), np.int64)
    val = np.empty((t, c))
    if len(fresh):
        idx[fresh], val[fresh] = candidates(sketch, sq, masks, c, rank, fresh)
    keep = old[~broken]
    kl, kv = lists[~broken], base.score[from_base[keep]]
    idx[keep], val[keep] = kl, kv
    if len(new) and len(keep):
        scores = _Scores(sketch, sq, masks)
        tie = rank.astype(np.float64) * 1e-12
        last = (kv + tie[kl]).max(axis=1)  # each kept list's last entry, with the tie-break
        ent_row, ent_new, ent_val = [], [], []
        for r in range(0, len(new), ROW_BLOCK):
            block = new[r : r + ROW_BLOCK]
            d = scores.block(block, keep).cpu().numpy()  # (new, kept): a new task's score to each kept task
            n_i, k_i = np.nonzero(d + tie[block][:, None] <= last[None, :])
            ent_row.append(k_i)
            ent_new.append(block[n_i])
            ent_val.append(d[n_i, k_i])
        er, en, ev = (np.concatenate(x) for x in (ent_row, ent_new, ent_val))
        if len(er):  # the kept lists a new task enters: old entries and entrants, the c nearest kept
            hit = np.unique(er)
            at = np.full(len(keep), -1, np.int64)
            at[hit] = np.arange(len(hit))
            src = np.concatenate([np.repeat(np.arange(len(hit)), c), at[er]])
            dst = np.concatenate([kl[hit].reshape(-1), en])
            v = np.concatenate([kv[hit].reshape(-1), ev])
            order = np.lexsort((rank[dst], v + tie[dst], src))
            src, dst, v = src[order], dst[order], v[order]
            first = np.searchsorted(src, np.arange(len(hit)))
            take = first[:, None] + np.arange(c)[None, :]
            idx[keep[hit]], val[keep[hit]] = dst[take], v[take]
    return CandidateLists(list(keys), idx, val, masked), len(fresh)


def exact_pairs(flat: torch.Tensor, norms: torch.Tensor, masks: torch.Tensor, i: np.ndarray, j: np.ndarray,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """SWOLA's masked mean L1 distance (before ``lr / trunks``) of each pair ``(i[e], j[e])``.

    ``flat``: (T, n * m) weighted errors (zero rows where unlabelled); ``norms``: (T, n)
    each sample's row L1 norm; ``masks``: (T, n). Pairs are grouped by their first task,
    whose partners are gathered once and compared in one pass. Equal to
    :func:`~taskgrouping.methods.swola.masked_l1_cross` on the same pairs (a test).
    """
    import torch

    out = np.empty(len(i), np.float64)
    if not len(i):
        return out
    rows = flat if flat.dtype == torch.float32 else flat.float()
    l1 = _l1_pairs(rows, i, j, progress)
    ti, tj = torch.as_tensor(i, device=masks.device), torch.as_tensor(j, device=masks.device)
    if bool(masks.all()):
        only = torch.zeros(len(i), dtype=torch.float64)
        both = torch.full((len(i),), float(masks.shape[1]), dtype=torch.float64)
    else:  # the samples one task labels and the other does not, pair by pair (blocks of 8,192 pairs)
        mf, nd = masks.double(), norms.double()
        only = torch.empty(len(i), dtype=torch.float64)
        both = torch.empty(len(i), dtype=torch.float64)
        total_a, total_b = nd.sum(dim=1)[ti], nd.sum(dim=1)[tj]
        for r in range(0, len(i), 8192):
            pa, pb = ti[r : r + 8192], tj[r : r + 8192]
            ma, mb = mf[pa], mf[pb]
            # only_a = sum_s nd_a (1 - m_b), only_b = sum_s nd_b (1 - m_a)
            only[r : r + 8192] = ((total_a[r : r + 8192] - (nd[pa] * mb).sum(dim=1))
                                  + (total_b[r : r + 8192] - (nd[pb] * ma).sum(dim=1))).cpu()
            both[r : r + 8192] = (ma * mb).sum(dim=1).cpu()
    d = (l1 - only).clamp_min(0.0) / both.clamp_min(1.0)
    out[:] = torch.where(both > 0, d, torch.full_like(d, math.nan)).numpy()
    return out


PAIR_THREADS = 4
"""At most this many threads compute exact pairs on the CPU (one buffer each, one torch thread each)."""


def _l1_pairs(rows: torch.Tensor, i: np.ndarray, j: np.ndarray,
              progress: Callable[[int], None] | None) -> torch.Tensor:
    """(len(i),) float64 the plain L1 distance of each pair of rows, pairs grouped by their first task.

    Each group's partners are gathered into a buffer used again by every group and differenced in
    place: a fresh gather each time faults in new pages (10x slower, measured on one core), and
    cdist's p=1 kernel is 2x slower than subtract, abs and sum. On the CPU, groups run on up to
    :data:`PAIR_THREADS` threads with one torch thread each (torch's own two threads on these
    small products were slower than one: 17k against 23k pairs a second).
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import torch

    order = np.argsort(i, kind="stable")
    bounds = np.flatnonzero(np.diff(i[order])) + 1
    groups = [g for g in np.split(order, bounds) if len(g)]
    width = max(len(g) for g in groups)
    total = torch.empty(len(i), dtype=torch.float64)
    local = threading.local()

    def run(chunk: list[np.ndarray]) -> int:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = torch.empty((width, rows.shape[1]), dtype=rows.dtype, device=rows.device)
        done = 0
        for group in chunk:
            a = int(i[group[0]])
            part = buf[: len(group)]
            torch.index_select(rows, 0, torch.as_tensor(j[group], device=rows.device), out=part)
            torch.sub(part, rows[a : a + 1], out=part)
            total[torch.as_tensor(group)] = part.abs_().sum(dim=1).double().cpu()
            done += len(group)
        return done

    chunks = [groups[g : g + 64] for g in range(0, len(groups), 64)]
    threads = 1 if rows.device.type != "cpu" else max(1, min(PAIR_THREADS, torch.get_num_threads(), len(chunks)))
    if threads == 1:
        for chunk in chunks:
            n = run(chunk)
            if progress is not None:
                progress(n)
        return total
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for f in as_completed([pool.submit(run, c) for c in chunks]):
                n = f.result()
                if progress is not None:
                    progress(n)
    finally:
        torch.set_num_threads(before)
    return total


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique(x)`` for integers by one sort.

    numpy 2.4's hashing ``unique`` took 1.1 s where the sort takes 0.03 s (a million pair codes).
    """
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def unordered(i: np.ndarray, j: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Each unordered pair of ``(i, j)`` once, as ``(a, b)`` with ``a < b``, sorted."""
    a, b = np.minimum(i, j).astype(np.int64), np.maximum(i, j)
    code = sorted_unique(a * t + b)
    return code // t, code % t


def row_order(src: np.ndarray, val: np.ndarray, tie: np.ndarray, t: int) -> np.ndarray:
    """``np.lexsort((tie, val, src))`` (``src``, ``tie`` in [0, T)), as one sort of a packed integer key.

    The key is ``src``, the value's position among the distinct values, then ``tie``,
    in one int64 when their bits fit (up to about 100,000 tasks); three times faster than
    ``lexsort`` (0.25 s against 0.8 s for 1.3 million entries).
    """
    n = len(val)
    bits = max(1, int(t - 1).bit_length())
    if not n or 2 * bits + max(1, int(n).bit_length()) > 62:
        return np.lexsort((tie, val, src))
    by_val = np.argsort(val)
    sorted_val = val[by_val]
    level = np.empty(n, np.int64)  # equal values share a level, so ties fall to ``tie``
    level[by_val] = np.concatenate([[0], np.cumsum(sorted_val[1:] != sorted_val[:-1])])
    key = (src.astype(np.int64) << (bits + int(n).bit_length())) | (level << bits) | tie.astype(np.int64)
    return np.argsort(key, kind="stable")  # full ties (none when (src, tie) pairs are unique) in input order


def nearest_lists(t: int, a: np.ndarray, b: np.ndarray, d: np.ndarray, k: int,
                  rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, k) each task's k nearest among the pairs ``(a, b, d)`` (both directions), ties by ``rank``.

    Every task must have at least k pairs (it has its candidates).
    """
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    val = np.concatenate([d, d])
    order = row_order(src, val, rank[dst], t)
    src, dst, val = src[order], dst[order], val[order]
    start = np.searchsorted(src, np.arange(t))
    count = np.diff(np.append(start, len(src)))
    if (count < k).any():
        raise ValueError(f"task {int(np.argmax(count < k))} has {int(count.min())} exact pairs, fewer than {k}")
    idx = start[:, None] + np.arange(k)[None, :]
    return dst[idx], val[idx]


Rows = Callable[[np.ndarray], tuple["torch.Tensor", "torch.Tensor"]]
"""Given task indices (sorted), their weighted-error rows (len, n * m) and per-sample L1 norms (len, n);
or every task's (T, ...), when they are all in memory already (no copy of the ones asked for)."""


def neighbour_affinity(tasks: list[str], flat: torch.Tensor, norms: torch.Tensor, masks: torch.Tensor,
                       scale: float, seed: int, cached: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
                       | None = None, k: int | None = None, c: int | None = None, width: int = SKETCH_WIDTH,
                       progress: Callable[[int], None] | None = None,
                       rounds: int | None = None) -> tuple[NeighbourAffinity, dict[str, Any]]:
    """The sparse SWOLA affinity of ``tasks`` from all their weighted errors in memory (module docstring).

    Args:
        flat: (T, n * m) float32 weighted errors; ``norms`` (T, n) their per-sample L1 norms;
            ``masks`` (T, n) labelled.
        scale: ``lr / trunks`` (SWOLA's constant factor).
        cached: given pairs ``(a, b)``, their cached distances (already scaled) and which are cached.
        k, c: stored partners and candidates per task (default :func:`stored_count`, :func:`candidate_count`).
        rounds: neighbour-of-neighbour rounds (default :data:`REFINE_ROUNDS`).

    Returns:
        ``(affinity, new)``: ``new`` holds the pairs computed here (``a``, ``b``, ``d``, scaled),
        for the pair cache, and ``seconds``.
    """
    import time

    t0 = time.perf_counter()
    sk, sq = sketch_parts(flat, masks, width, seed)
    t_sketch = time.perf_counter() - t0
    aff, new = neighbours_from_sketches(tasks, sk, sq, masks, lambda idx: (flat, norms), scale, cached, k, c,
                                        progress, REFINE_ROUNDS if rounds is None else rounds)  # every row is in memory: given whole, never copied
    aff.info["seconds"]["sketch"] += round(t_sketch, 3)
    return aff, new | {"seconds": aff.info["seconds"]}


def sketch_parts(flat: torch.Tensor, masks: torch.Tensor, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each task's part of the candidate search: its sketch (T, width) and per-sample squared norms (T, n).

    A task's parts depend on its rows alone (the store keeps them per probe). The norms
    are used only when some label is missing (:func:`candidates`).
    """
    t, n = masks.shape
    return sketch_rows(flat, width, seed), sample_norms(flat.view(t, n, -1), 2)


def canonical_rank(tasks: Sequence[str]) -> np.ndarray:
    """(T,) each task's position in name order (ties break by it, never by input order)."""
    order = np.argsort(np.asarray(tasks, dtype=object), kind="stable")
    rank = np.empty(len(tasks), np.int64)
    rank[order] = np.arange(len(tasks))
    return rank


def candidate_pairs(tasks: Sequence[str], sketch: torch.Tensor, sq: torch.Tensor | None, masks: torch.Tensor,
                    c: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered candidate pair ``(a, b)``, ``a < b``: each task's ``c`` nearest in sketch space."""
    t = len(tasks)
    c = max(stored_count(t), candidate_count(t)) if c is None else min(c, t - 1)
    cand, _ = candidates(sketch, None if bool(masks.all()) else sq, masks, c, canonical_rank(tasks))
    return unordered(np.repeat(np.arange(t), c), cand.reshape(-1), t)


def tiles(a: np.ndarray, b: np.ndarray, band: int) -> list[np.ndarray]:
    """Pairs ``(a, b)`` grouped by (row band of a, row band of b): each group's rows are two bands at most.

    Returns the indices of each tile's pairs; a tile's work needs the rows of its two
    bands only, so its memory is bounded by ``2 * band`` rows whatever T is.
    """
    ta, tb = a // band, b // band
    code = np.minimum(ta, tb) * (int(max(ta.max(initial=0), tb.max(initial=0))) + 1) + np.maximum(ta, tb)
    order = np.argsort(code, kind="stable")
    cuts = np.flatnonzero(np.diff(code[order])) + 1
    return [g for g in np.split(order, cuts) if len(g)]


REFINE_PARTNERS = 10
"""Partners per task whose own partners a refinement round pairs it with (:func:`refine_pairs`)."""

REFINE_ROUNDS = 2
"""Neighbour-of-neighbour rounds after the sketch candidates (fewer when a round finds nothing new)."""


def refine_pairs(t: int, a: np.ndarray, b: np.ndarray, d: np.ndarray, rank: np.ndarray,
                 r: int) -> tuple[np.ndarray, np.ndarray]:
    """New pairs from one neighbour-of-neighbour round over the exact pairs ``(a, b, d)`` (``a < b``, unique).

    Each task is paired with the ``r`` nearest partners of each of its own ``r`` nearest (by
    exact D): the join of NN-descent (Dong, Charikar and Li, 2011), a neighbour's neighbour
    is likely a neighbour. The sketch's misses are mostly tasks that
    are near in L1 but not in the sketch's L2; they are near the task's true neighbours in
    L1, so this finds them with exact distances only. Returns the pairs not among ``(a, b)``,
    each once, ``a < b``, sorted.
    """
    r = min(r, t - 1)
    if r < 1:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    nb, _ = nearest_lists(t, a, b, d, r, rank)
    i = np.repeat(np.arange(t), r * r)
    j = nb[nb].reshape(-1)
    keep = i != j
    a2, b2 = unordered(i[keep], j[keep], t)
    known = np.sort(a.astype(np.int64) * t + b)
    code = a2 * t + b2
    pos = np.minimum(np.searchsorted(known, code), max(0, len(known) - 1))
    fresh = known[pos] != code if len(known) else np.ones(len(code), bool)
    return a2[fresh], b2[fresh]


def neighbours_from_sketches(tasks: list[str], sketch: torch.Tensor, sq: torch.Tensor | None, masks: torch.Tensor,
                             rows: Rows, scale: float,
                             cached: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                             k: int | None = None, c: int | None = None,
                             progress: Callable[[int], None] | None = None,
                             rounds: int = REFINE_ROUNDS,
                             lists: np.ndarray | None = None) -> tuple[NeighbourAffinity, dict[str, Any]]:
    """Steps 2-4 of the module docstring from every task's sketch; ``rows`` gives the exact rows asked for.

    Only the tasks of pairs missing from ``cached`` are asked for: adding one task to a
    store asks for it and its few candidates, not for every probe. After the candidates,
    ``rounds`` of :func:`refine_pairs` add exact pairs between each task and its
    neighbours' neighbours. ``lists``: every task's candidates (T, c), found already
    (:func:`update_candidates`); else they are found here.
    """
    import time

    t = len(tasks)
    k = stored_count(t) if k is None else min(k, t - 1)
    c = max(k, candidate_count(t) if c is None else min(c, t - 1))
    rank = canonical_rank(tasks)
    t0 = time.perf_counter()
    if lists is None:
        a, b = candidate_pairs(tasks, sketch, sq, masks, c)
    elif lists.shape != (t, c):
        raise ValueError(f"candidate lists of shape {lists.shape}, expected {(t, c)}")
    else:
        a, b = unordered(np.repeat(np.arange(t), c), lists.reshape(-1), t)
    t_sketch = time.perf_counter() - t0
    t_exact = 0.0
    asked: set[int] = set()
    new: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def exact(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
        """Exact scaled D of the pairs, the cached ones read; the computed ones are kept in ``new``."""
        nonlocal t_exact
        t1 = time.perf_counter()
        d = np.zeros(len(pa))
        hit = np.zeros(len(pa), bool)
        if cached is not None and len(pa):
            d, hit = cached(pa, pb)
        todo = np.flatnonzero(~hit)
        if len(todo):
            involved = sorted_unique(np.concatenate([pa[todo], pb[todo]]))
            local = np.full(t, -1, np.int64)
            local[involved] = np.arange(len(involved))
            flat, norms = rows(involved)
            asked.update(involved.tolist())
            if flat.shape[0] == t and len(involved) != t:  # every task's rows given (held already): global indices
                d[todo] = exact_pairs(flat, norms, masks, pa[todo], pb[todo], progress) * scale
            else:
                d[todo] = exact_pairs(flat, norms, masks[involved], local[pa[todo]], local[pb[todo]], progress) * scale
            del flat, norms
            new.append((pa[todo], pb[todo], d[todo]))
        if np.isnan(d).any():
            e = int(np.flatnonzero(np.isnan(d))[0])
            raise ValueError(f"tasks {tasks[pa[e]]!r} and {tasks[pb[e]]!r} share no labelled probe sample")
        t_exact += time.perf_counter() - t1
        return d

    d = exact(a, b)
    n_candidates = len(a)
    masked = sq is not None and not bool(masks.all())
    row_sq = sq.double().sum(dim=1).cpu().numpy() if sq is not None and masked else None
    share = masks.double().mean(dim=1).cpu().numpy() if masked else None
    sketch_np = sketch.detach().cpu().numpy().astype(np.float32)
    # the estimate's scale from the sketch candidates' lists, before the refinement: measured on the refined
    # lists or on random pairs it is 8-10% lower, and planted groups merged (10,000 tasks, 20% missing: ARI
    # 0.80 against 0.89; see docs/methods.md)
    nb0, val0 = nearest_lists(t, a, b, d, k, rank)
    p0 = NeighbourAffinity(list(tasks), nb0, val0).pairs()
    est_scale = sketch_scale(sketch_np, row_sq, share, *p0)
    done = 0
    for _ in range(rounds):
        t1 = time.perf_counter()
        a2, b2 = refine_pairs(t, a, b, d, rank, REFINE_PARTNERS)
        t_sketch += time.perf_counter() - t1
        if not len(a2):
            break
        d2 = exact(a2, b2)
        done += 1
        a, b, d = np.concatenate([a, a2]), np.concatenate([b, b2]), np.concatenate([d, d2])
    nb, val = nearest_lists(t, a, b, d, k, rank)
    na = np.concatenate([x[0] for x in new]) if new else np.empty(0, np.int64)
    nbb = np.concatenate([x[1] for x in new]) if new else np.empty(0, np.int64)
    nd = np.concatenate([x[2] for x in new]) if new else np.empty(0)
    info = {"form": "neighbours", "stored": k, "candidates": c, "sketch_width": int(sketch.shape[1]),
            "pairs_exact": int(len(a)), "pairs_candidates": int(n_candidates), "refine_rounds": done,
            "pairs_computed": int(len(na)), "rows_read": len(asked),
            "seconds": {"sketch": round(t_sketch, 3), "exact": round(t_exact, 3)}}
    return (NeighbourAffinity(list(tasks), nb, val, info=info, sketch=sketch_np, row_norms=row_sq, labelled=share,
                              scale=est_scale),
            {"a": na, "b": nbb, "d": nd} | info)


def community_sums(aff: NeighbourAffinity, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sums (T, g), sizes (g,), codes (T,)): each task's summed distance to each community.

    A stored pair counts its exact distance; an unstored pair counts ``max(r_i, r_j)``
    (:meth:`NeighbourAffinity.radius`), the least it can be when the lists are exact. With
    every pair stored this is the exact matrix product of the dense path (a test).
    """
    codes = np.unique(labels, return_inverse=True)[1]
    t = len(codes)
    g = int(codes.max()) + 1 if t else 0
    if aff.sketch is not None:
        return _estimated_sums(aff, codes), np.bincount(codes, minlength=g).astype(np.float64), codes
    r = aff.radius()
    sums = np.zeros((t, g))
    # sum_{j in c} max(r_i, r_j) = r_i * #{j in c: r_j <= r_i} + sum_{j in c: r_j > r_i} r_j, from running
    # counts and sums over the tasks in order of r (ties: every tied task counts as below)
    order = np.argsort(r, kind="stable")
    rs, cs = r[order], codes[order]
    last = np.searchsorted(rs, rs, side="right") - 1  # the last sorted position with the same r
    pos = np.empty(t, np.int64)
    pos[order] = last
    for c0 in range(0, g, SUM_BLOCK):  # community blocks bound the running arrays (T x SUM_BLOCK)
        c1 = min(g, c0 + SUM_BLOCK)
        sel = (cs >= c0) & (cs < c1)
        count = np.zeros((t, c1 - c0))
        count[np.flatnonzero(sel), cs[sel] - c0] = 1.0
        total = np.cumsum(count * rs[:, None], axis=0)
        np.cumsum(count, axis=0, out=count)
        sums[:, c0:c1] = r[:, None] * count[pos] + (total[-1][None, :] - total[pos])
    sums[np.arange(t), codes] -= r  # a task is not its own partner: max(r_i, r_i) = r_i was counted
    a, b, d = aff.pairs()
    fill = d - np.maximum(r[a], r[b])
    flat = np.bincount(np.concatenate([a * g + codes[b], b * g + codes[a]]), weights=np.concatenate([fill, fill]),
                       minlength=t * g)
    sums += flat.reshape(t, g)
    return sums, np.bincount(codes, minlength=g).astype(np.float64), codes


FULL_FILL_MAX = 400
"""Up to this many communities a silhouette sums every community (the graph selector's chains start
from partitions of at most this many, so chains and partitions are scored alike)."""

SUM_BLOCK = 256
"""Communities per block of :func:`community_sums`."""


def _stored_sums(aff: NeighbourAffinity, codes: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, g) each task's summed stored distances to each community's members, and how many it has stored."""
    t = len(codes)
    a, b, d = aff.pairs()
    where = np.concatenate([a * g + codes[b], b * g + codes[a]])
    total = np.bincount(where, weights=np.concatenate([d, d]), minlength=t * g).reshape(t, g)
    count = np.bincount(where, minlength=t * g).reshape(t, g).astype(np.float64)
    return total, count


def _estimated_sums(aff: NeighbourAffinity, codes: np.ndarray) -> np.ndarray:
    """(T, g) summed distances to each community: stored pairs exact, the others the sketch estimate."""
    t = len(codes)
    g = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=g).astype(np.float64)
    total, count = _stored_sums(aff, codes, g)
    unstored = sizes[None, :] - count
    unstored[np.arange(t), codes] -= 1.0  # a task is not its own partner
    return total + np.clip(unstored, 0.0, None) * aff.estimate_to(codes)


def fill_sums(r: np.ndarray, codes: np.ndarray, i: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``sum_{j in community c[e], j != i[e]} max(r_i, r_j)`` for each query ``(i[e], c[e])``, O((T + Q) log T).

    Tasks sorted by (community, r) with running sums; each query is one binary search.
    """
    t = len(r)
    g = int(codes.max()) + 1 if t else 0
    levels, rank = np.unique(r, return_inverse=True)
    width = len(levels) + 1
    order = np.lexsort((rank, codes))
    key = codes[order] * width + rank[order]
    prefix = np.concatenate([[0.0], np.cumsum(r[order])])
    start = np.searchsorted(codes[order], np.arange(g + 1))
    below = np.searchsorted(key, c * width + rank[i], side="right") - start[c]
    s_below = prefix[start[c] + below] - prefix[start[c]]
    s_all = prefix[start[c + 1]] - prefix[start[c]]
    out = r[i] * below + (s_all - s_below)
    return out - np.where(codes[i] == c, r[i], 0.0)  # a task is not its own partner


SILHOUETTE_BLOCK = 1024
"""Tasks per block of :func:`_silhouette_in_blocks` (a block x communities array, reused)."""


def _silhouette_in_blocks(aff: NeighbourAffinity, codes: np.ndarray, g: int) -> float:
    """:func:`~taskgrouping.selectors.base.silhouette_from_sums` of :func:`community_sums`, block by block.

    Each task's silhouette needs its own row of sums only, so the T x communities array
    is never held: at 10,000 tasks in 1,000 groups that array's page faults and passes
    took most of a second.
    """
    from taskgrouping.selectors.base import silhouette_values

    t = len(codes)
    sizes = np.bincount(codes, minlength=g).astype(np.float64)
    a, b, d = aff.pairs()
    src = np.concatenate([a, b])
    order = np.argsort(src, kind="stable")
    src = src[order]
    dst_code = codes[np.concatenate([b, a])[order]]
    dist = np.concatenate([d, d])[order]
    stats = aff._community_stats(codes)
    out = np.empty(t)
    for start in range(0, t, SILHOUETTE_BLOCK):
        stop = min(t, start + SILHOUETTE_BLOCK)
        lo, hi = np.searchsorted(src, [start, stop])
        where = (src[lo:hi] - start) * g + dst_code[lo:hi]
        n = stop - start
        total = np.bincount(where, weights=dist[lo:hi], minlength=n * g).reshape(n, g)
        unstored = sizes[None, :] - np.bincount(where, minlength=n * g).reshape(n, g)
        unstored[np.arange(n), codes[start:stop]] -= 1.0  # a task is not its own partner
        np.clip(unstored, 0.0, None, out=unstored)
        unstored *= aff._estimate_rows(stats, slice(start, stop))
        unstored += total
        out[start:stop] = silhouette_values(unstored, sizes, codes[start:stop])
    return float(np.mean(np.nan_to_num(out)))


def silhouette_sparse(aff: NeighbourAffinity, labels: np.ndarray) -> float:
    """The silhouette of ``labels`` on the stored distances, unstored pairs as in :func:`community_sums`.

    Up to :data:`FULL_FILL_MAX` communities every community is summed
    (:func:`community_sums`, T x communities). Past it only the communities a task has a
    stored partner in (and its own) are, so the cost is O((T + pairs) log T): a community a task has no stored
    partner in is at least its radius away on average (every unstored pair is at least
    ``r_i``), and ``b(i)`` takes that bound for them. With every pair stored every
    community is summed and this is the dense silhouette (a test).
    """
    _, codes = np.unique(labels, return_inverse=True)
    t = len(codes)
    g = int(codes.max()) + 1 if t else 0
    if g < 2 or g >= t:
        return float("nan")
    if aff.sketch is not None:  # every community summed, a block of tasks at a time
        return _silhouette_in_blocks(aff, codes, g)
    if g <= FULL_FILL_MAX:  # every community summed (as the chains score them)
        from taskgrouping.selectors.base import silhouette_from_sums

        sums, sizes, codes = community_sums(aff, labels)
        return silhouette_from_sums(sums, sizes, codes)
    r = aff.radius()
    a, b, d = aff.pairs()
    extra = d - np.maximum(r[a], r[b])
    qi = np.concatenate([a, b, np.arange(t)])
    qc = np.concatenate([codes[b], codes[a], codes])
    qv = np.concatenate([extra, extra, np.zeros(t)])
    code, inverse = np.unique(qi * g + qc, return_inverse=True)
    corr = np.bincount(inverse, weights=qv, minlength=len(code))
    ii, cc = code // g, code % g
    sums = fill_sums(r, codes, ii, cc) + corr
    sizes = np.bincount(codes, minlength=g).astype(np.float64)
    own = cc == codes[ii]
    a_i = np.zeros(t)
    a_i[ii[own]] = sums[own] / np.maximum(sizes[cc[own]] - 1.0, 1.0)
    b_i = r.copy()  # the bound for communities with no stored partner
    other = ~own
    np.minimum.at(b_i, ii[other], sums[other] / sizes[cc[other]])
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b_i - a_i) / np.maximum(a_i, b_i)
    s[sizes[codes] == 1] = 0.0
    return float(np.mean(np.nan_to_num(s)))
