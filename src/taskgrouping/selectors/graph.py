"""The task graph and its communities: a k-nearest-neighbour graph with local scales, then Leiden.

Why (issue "the affinity knows the groups"): each task's nearest neighbour in SWOLA's
matrix is in its planted group 89-100% of the time, and one global kernel bandwidth plus
an eigengap over k (``spectral``) loses that when families have different scales. Here
every task only ever looks at its own few nearest partners, on its own scale.

The graph (docs/methods.md section 6, "graph"):

1. **Dissimilarity.** ``distance``: the symmetrised D. ``gain`` (row = receiver): the
   *mutual* gain ``G_m = (G + G^T) / 2`` (a partner is good when training together helps
   both ways on average), turned into ``d = max(G_m) - G_m``; pairs whose mutual gain is
   not positive are never joined (their training together hurts). Distances are shifted
   by their smallest off-diagonal value the same way, so ``a * D + b`` (``a > 0``) and the
   gain ``b - a * D`` (all positive) give the same graph and the same groups.
2. **Neighbours.** ``k = max(2, round(ln T))``, at most ``T - 1``: ``ln T`` neighbours
   is the order that keeps a random k-NN graph connected (Brito et al. 1997; von
   Luxburg's tutorial, section 8), so one rule serves 16 tasks (k = 3) and 1,000
   (k = 7) without tuning on a family. Ties break by the canonical task order.
3. **Local scales** (Zelnik-Manor and Perona 2004): ``sigma_i`` = task i's distance to
   its k-th neighbour; an edge joins i and j when either is among the other's k nearest,
   weighted ``w_ij = exp(-d_ij^2 / (sigma_i sigma_j))``.
4. **Pruning: unrelated tasks stay alone.** An edge is kept only if
   ``d_ij^2 <= PRUNE^2 * sigma_i * sigma_j``: it must be short on the scale of *both*
   ends. A random-label task's nearest partners are far on their own (tight) scale, so
   its edges go and it ends up alone instead of glued to the nearest community; a small
   group beside a large one keeps its inner edge and loses the long ones.
5. **Communities**: Leiden on modularity (igraph's ``community_leiden``, Traag et al.
   2019), seeded, :data:`RESTARTS` seeds per resolution (the most modular kept), on two
   graphs: all kept edges, and only those joining *mutual* neighbours. The mutual graph
   is precise but cuts loose groups into pieces; the full one keeps loose groups whole
   but lets a few edges cross. The resolutions are :data:`SCALED` multiples of
   :func:`resolution_unit`, the resolution at which two groups of k + 1 mutual
   neighbours joined by one edge stop merging (modularity's resolution limit grows
   with the graph: at 1,000 tasks plain resolution 1 merged 100 planted groups into 69).
6. **Choosing** (``--groups auto``): the candidates are those partitions and every
   average-linkage merge (on d) of each of them, tasks the graph left alone staying
   alone; the highest silhouette on d wins. Modularity alone splits a large loose group
   (12 tasks beside 2) into pieces; silhouette sees that the pieces are closer to each
   other than to the other group. ``n_groups = N``: every partition with at least N
   communities is merged by average linkage down to N, and the highest silhouette
   wins, so N is always honoured exactly.

Determinism: tasks are put in a canonical (sorted-name) order before the graph is
built, and igraph draws from a ``random.Random`` seeded from ``seed``, so the same matrix
and seed give the same groups whatever the task order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskgrouping.errors import InputError
from taskgrouping.hashing import derive_seed
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors.base import Grouping, silhouette

SCALED: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)
"""The candidate resolutions, in units of :func:`resolution_unit`."""
RESTARTS = 4
"""Leiden seeds per resolution (each seed derived from the run's)."""
CHAIN_MAX = 400
"""On a sparse graph, average-linkage chains start only from partitions with at most this many communities
(:data:`~taskgrouping.methods.sparse.FULL_FILL_MAX`: scored the same way as the partitions)."""
PRUNE = 1.5
"""An edge must satisfy ``d^2 <= PRUNE^2 sigma_i sigma_j`` (short on both ends' scales)."""


@dataclass(frozen=True)
class TaskGraph:
    """The k-nearest-neighbour task graph of an affinity matrix.

    Attributes:
        tasks: task ids in the affinity's order.
        k: neighbours per task.
        d: (T, T) the dissimilarity the graph was built on (shifted, symmetric, zero diagonal).
        sigma: (T,) each task's local scale (its dissimilarity to its k-th neighbour).
        neighbours: (T, k) each task's k nearest others (indices), nearest first.
        edges: (E, 2) kept undirected edges ``i < j``; ``weights`` (E,) their kernel weights.
        mutual: (E,) whether each edge joins mutual neighbours (each among the other's k nearest).
        rule: how k was chosen, in words.
    """

    tasks: list[str]
    k: int
    d: np.ndarray
    sigma: np.ndarray
    neighbours: np.ndarray
    edges: np.ndarray
    weights: np.ndarray
    mutual: np.ndarray
    rule: str
    sparse: Any = None
    """For a :class:`~taskgrouping.methods.sparse.NeighbourAffinity`: its lists shifted as ``d`` is
    (``d`` itself is then empty: no T x T matrix is formed)."""

    def isolated(self) -> list[int]:
        """Tasks with no kept edge (they form groups of their own)."""
        deg = np.zeros(len(self.tasks), int)
        np.add.at(deg, self.edges.reshape(-1), 1)
        return [int(i) for i in np.flatnonzero(deg == 0)]


def neighbour_count(t: int) -> tuple[int, str]:
    """The k for T tasks: ``max(2, round(ln T))``, at most T - 1, and the rule in words."""
    k = max(1, min(t - 1, max(2, round(math.log(max(t, 2))))))
    return k, f"k = max(2, round(ln T)) = {k} at T = {t}, the order that keeps a k-NN graph connected"


def check_matrix(affinity: AffinityMatrix) -> None:
    """Refuse a matrix a graph cannot be built on: NaN or infinite entries (tasks sharing no samples)."""
    v = affinity.values
    bad = ~np.isfinite(v)
    np.fill_diagonal(bad, False)
    if bad.any():
        rows = np.flatnonzero((bad | np.eye(len(v), dtype=bool)).all(axis=1))
        if len(rows):
            names = ", ".join(repr(affinity.tasks[i]) for i in rows[:5])
            raise InputError(f"--selector graph: the affinity has no finite value for task(s) {names} "
                             f"(a task that shares no labelled sample with any other); leave them out with "
                             f"--tasks or use --method swola-meta")
        i, j = np.argwhere(bad)[0]
        raise InputError(f"--selector graph: the affinity of tasks {affinity.tasks[i]!r} and "
                         f"{affinity.tasks[j]!r} is {v[i, j]} (they share no labelled sample); "
                         f"use --method swola-meta for tasks that share no samples")


def dissimilarity(affinity: AffinityMatrix) -> tuple[np.ndarray, np.ndarray]:
    """(d, allowed): the graph's symmetric dissimilarity (zero diagonal, min off-diagonal 0) and which pairs may join.

    ``allowed`` is all off-diagonal pairs for distances, and pairs of positive mutual gain for gains.
    """
    t = len(affinity.tasks)
    off = ~np.eye(t, dtype=bool)
    sym = 0.5 * (affinity.values + affinity.values.T)
    if affinity.kind == "distance":
        d, allowed = sym.copy(), off.copy()
    else:
        d, allowed = -sym, off & (sym > 0)
    if t > 1:
        d = d - float(d[off].min())
    np.fill_diagonal(d, 0.0)
    return np.clip(d, 0.0, None), allowed


def build_graph(affinity: Any, neighbours: int | None = None, prune: float | None = None) -> TaskGraph:
    """The task graph of ``affinity`` (module docstring, steps 1-4); ``neighbours`` overrides the k rule.

    ``affinity`` may be an :class:`AffinityMatrix` or a sparse
    :class:`~taskgrouping.methods.sparse.NeighbourAffinity` (:func:`_sparse_graph`).
    """
    if getattr(affinity, "sparse", False):
        return _sparse_graph(affinity, neighbours, prune)
    check_matrix(affinity)
    prune = PRUNE if prune is None else prune
    t = len(affinity.tasks)
    k, rule = neighbour_count(t)
    if neighbours is not None:
        k = max(1, min(t - 1, neighbours))
        rule = f"k = {k} (given)"
    d, allowed = dissimilarity(affinity)
    order = np.argsort(np.asarray(affinity.tasks, dtype=object), kind="stable")
    rank = np.empty(t, int)
    rank[order] = np.arange(t)  # canonical position: ties break by task name, not by input order
    if t < 2:
        return TaskGraph(list(affinity.tasks), 0, d, np.zeros(t), np.zeros((t, 0), int), np.zeros((0, 2), int),
                         np.zeros(0), np.zeros(0, bool), rule)
    key = np.where(np.eye(t, dtype=bool), np.inf, d)
    nb = nearest(key, rank, k)
    sigma = d[np.arange(t), nb[:, -1]]
    floor = float(d.max()) * 1e-9 or 1e-12  # duplicate tasks: a zero scale would divide by zero
    sigma = np.maximum(sigma, floor)
    pairs = np.stack([np.repeat(np.arange(t), k), nb.reshape(-1)], axis=1)
    knn = np.zeros((t, t), bool)
    knn[pairs[:, 0], pairs[:, 1]] = True
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    i, j = pairs[:, 0], pairs[:, 1]
    keep = allowed[i, j] & (d[i, j] ** 2 <= prune**2 * sigma[i] * sigma[j])
    i, j = i[keep], j[keep]
    w = np.exp(-(d[i, j] ** 2) / (sigma[i] * sigma[j]))
    return TaskGraph(list(affinity.tasks), k, d, sigma, nb, np.stack([i, j], axis=1), w, knn[i, j] & knn[j, i], rule)


def _sparse_graph(affinity: Any, neighbours: int | None, prune: float | None) -> TaskGraph:
    """:func:`build_graph` from stored neighbour lists (no T x T matrix).

    The same graph as the dense matrix gives when each task's k nearest are among its
    stored partners (they are, by construction, for k <= K).

    The shift is the smallest stored distance (the smallest of all when the lists are exact).
    """
    from taskgrouping.methods.sparse import NeighbourAffinity

    prune = PRUNE if prune is None else prune
    t = len(affinity.tasks)
    k, rule = neighbour_count(t)
    if neighbours is not None:
        k = max(1, min(t - 1, neighbours))
        rule = f"k = {k} (given)"
    k = min(k, affinity.k)
    if not np.isfinite(affinity.values).all():
        raise InputError("--selector graph: the neighbour affinity has a distance that is not finite")
    shift = float(affinity.values.min()) if affinity.values.size else 0.0
    shifted = NeighbourAffinity(list(affinity.tasks), affinity.neighbours, np.clip(affinity.values - shift, 0.0, None),
                                sketch=affinity.sketch, offset=affinity.offset + shift, row_norms=affinity.row_norms,
                                labelled=affinity.labelled, scale=affinity.scale)
    if t < 2 or k < 1:
        return TaskGraph(list(affinity.tasks), 0, np.zeros((0, 0)), np.zeros(t), np.zeros((t, 0), int),
                         np.zeros((0, 2), int), np.zeros(0), np.zeros(0, bool), rule, shifted)
    nb = affinity.neighbours[:, :k].astype(int)
    dk = shifted.values[:, :k]
    floor = float(shifted.values.max()) * 1e-9 or 1e-12
    sigma = np.maximum(dk[:, -1], floor)
    src = np.repeat(np.arange(t), k)
    dst = nb.reshape(-1)
    dist = dk.reshape(-1)
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    code = a * t + b
    uniq, first, count = np.unique(code, return_index=True, return_counts=True)
    i, j, dij = a[first], b[first], dist[first]
    keep = dij**2 <= prune**2 * sigma[i] * sigma[j]
    mutual = count[keep] == 2  # listed from both ends: each among the other's k nearest
    i, j, dij = i[keep], j[keep], dij[keep]
    w = np.exp(-(dij**2) / (sigma[i] * sigma[j]))
    return TaskGraph(list(affinity.tasks), k, np.zeros((0, 0)), sigma, nb, np.stack([i, j], axis=1), w, mutual,
                     rule, shifted)


def nearest(key: np.ndarray, rank: np.ndarray, k: int) -> np.ndarray:
    """(T, k) each row's k smallest entries of ``key`` (nearest first), ties broken by ``rank``.

    A partition finds each row's k-th value; only the entries at or below it are sorted,
    so exact ties (duplicate tasks) resolve by the canonical order, not by the input's.
    """
    kth = np.partition(key, k - 1, axis=1)[:, k - 1]
    out = np.empty((len(key), k), int)
    for r in range(len(key)):
        c = np.flatnonzero(key[r] <= kth[r])
        out[r] = c[np.lexsort((rank[c], key[r, c]))][:k]
    return out


class _Leiden:
    """Leiden runs on the task graph (or its mutual edges only) in canonical node order, memoised."""

    def __init__(self, graph: TaskGraph, seed: int, mutual_only: bool = False) -> None:
        import igraph as ig

        t = len(graph.tasks)
        self.name = "mutual-neighbour graph" if mutual_only else "neighbour graph"
        self.order = np.argsort(np.asarray(graph.tasks, dtype=object), kind="stable")
        self.pos = np.empty(t, int)
        self.pos[self.order] = np.arange(t)  # input index -> canonical node
        sel = graph.mutual if mutual_only else np.ones(len(graph.edges), bool)
        e = self.pos[graph.edges[sel]] if sel.any() else np.zeros((0, 2), int)
        srt = np.lexsort((e[:, 1], e[:, 0])) if len(e) else np.zeros(0, int)
        self.graph = ig.Graph(n=t, edges=[tuple(map(int, x)) for x in e[srt]])
        self.w = [float(x) for x in graph.weights[sel][srt]]
        self.unit = resolution_unit(len(self.w), graph.k)
        self.seed = seed
        self.runs: dict[tuple[float, int], np.ndarray] = {}

    def labels(self, resolution: float, restart: int) -> np.ndarray:
        """(T,) labels in the input's task order."""
        key = (resolution, restart)
        if key not in self.runs:
            import igraph as ig

            rng = random.Random(derive_seed(self.seed, "leiden", self.name, resolution, restart))
            ig.set_random_number_generator(rng)
            try:
                part = self.graph.community_leiden(objective_function="modularity", weights=self.w or None,
                                                   resolution=resolution, n_iterations=-1)
            finally:
                ig.set_random_number_generator(random)
            canonical = np.asarray(part.membership)
            self.runs[key] = canonical[self.pos]
        return self.runs[key]

    def modularity(self, labels: np.ndarray) -> float:
        """Standard (resolution 1) weighted modularity of input-order ``labels``; 0 for a graph with no edge."""
        if not self.w:
            return 0.0
        return float(self.graph.modularity(labels[self.order].tolist(), weights=self.w))


def merge_chain(labels: np.ndarray, d: np.ndarray | None, keep_alone: set[int] = frozenset(),  # type: ignore[assignment]
                stop: int = 1, scores: list[float] | None = None, to_comm: np.ndarray | None = None) -> list[np.ndarray]:
    """Successive average-linkage merges of ``labels``'s communities on ``d``, down to ``stop`` communities.

    Average linkage (UPGMA) on the community level: the two communities with the smallest
    mean ``d`` between their members merge. Communities that are a single task of
    ``keep_alone`` never merge (an unrelated task stays alone). Kept as pair sums, so a
    merge costs O(communities); returns each labelling after each merge, in order. With
    ``scores``, each labelling's silhouette on ``d`` is appended to it, kept up to date
    in O(T) a merge (the per-task sums to each community add like the pair sums).
    ``to_comm``: the (T, communities) sums when ``d`` is not held (the sparse graph,
    :func:`~taskgrouping.methods.sparse.community_sums`).
    """
    from taskgrouping.selectors.base import silhouette_from_sums

    codes = np.unique(labels, return_inverse=True)[1]
    g = int(codes.max()) + 1
    members = np.zeros((len(labels), g))
    members[np.arange(len(labels)), codes] = 1.0
    if to_comm is None:
        to_comm = np.asarray(d, np.float64) @ members  # (T, g) summed distance from each task to each community
    else:
        to_comm = np.array(to_comm, np.float64)
    sums = members.T @ to_comm  # (g, g) summed distances between communities
    sizes = members.sum(axis=0)
    alone = np.array([sizes[c] == 1 and int(np.flatnonzero(codes == c)[0]) in keep_alone for c in range(g)])
    alive = ~alone
    parent = np.arange(g)
    out = []
    while alive.sum() + alone.sum() > stop and alive.sum() > 1:
        idx = np.flatnonzero(alive)
        mean = sums[np.ix_(idx, idx)] / np.outer(sizes[idx], sizes[idx])
        np.fill_diagonal(mean, np.inf)
        x, y = np.unravel_index(int(np.argmin(mean)), mean.shape)
        a, b = int(idx[min(x, y)]), int(idx[max(x, y)])
        sums[a, :] += sums[b, :]
        sums[:, a] += sums[:, b]
        to_comm[:, a] += to_comm[:, b]
        to_comm[:, b] = 0.0
        sizes[a] += sizes[b]
        sizes[b] = 0.0
        alive[b] = False
        parent[parent == b] = a
        out.append(parent[codes].copy())
        if scores is not None:
            n_now = int((sizes > 0).sum())
            scores.append(0.0 if n_now == 1 else  # as _silhouette scores one group
                          silhouette_from_sums(to_comm, sizes, out[-1]) if n_now < len(labels) else -1.0)
    return out


def _count(labels: np.ndarray) -> int:
    return len(np.unique(labels))


def _best_of(leiden: _Leiden, resolution: float) -> np.ndarray:
    """The restart with the highest modularity at ``resolution`` (ties: the first)."""
    cands = [leiden.labels(resolution, r) for r in range(RESTARTS)]
    scores = [leiden.modularity(c) for c in cands]
    return cands[int(np.argmax(scores))]


def _silhouette(graph: TaskGraph, labels: np.ndarray) -> float:
    """Silhouette of ``labels`` on the graph's dissimilarity: 0 for one group, -1 for every task alone.

    One group scores 0, so a partition wins only with a positive silhouette: where the
    tasks have no structure (all distances equal) they stay together.
    """
    from taskgrouping.selectors.base import silhouette_precomputed

    c = _count(labels)
    if c == 1:
        return 0.0
    if c >= len(labels):
        return -1.0
    if graph.sparse is not None:
        from taskgrouping.methods.sparse import silhouette_sparse

        return silhouette_sparse(graph.sparse, labels)
    return silhouette_precomputed(graph.d, labels)


Candidates = dict[tuple[int, ...], tuple[np.ndarray, str, float]]
"""Canonical labels -> (labels, where the partition came from, its silhouette)."""


def _add(cands: Candidates, graph: TaskGraph, labels: np.ndarray, why: str, score: float | None = None) -> None:
    key = tuple(_canonical_labels(labels).tolist())
    if key not in cands:
        cands[key] = (labels, why, _silhouette(graph, labels) if score is None else score)


def _pick(cands: Candidates) -> tuple[np.ndarray, str]:
    """The candidate with the highest silhouette (ties: the first proposed)."""
    best = max(enumerate(cands.values()), key=lambda c: (c[1][2], -c[0]))[1]
    return best[0], best[1]


def _chains(cands: Candidates, graph: TaskGraph, sources: list[tuple[np.ndarray, str]], stop: int = 1) -> None:
    """Add every average-linkage merge of each source partition (tasks the graph left alone stay alone)."""
    alone = set(graph.isolated()) if stop == 1 else set()
    for labels, why in sources:
        scores: list[float] = []
        sums = None
        if graph.sparse is not None:
            if _count(labels) > CHAIN_MAX:
                continue  # O(communities^2) a merge: past CHAIN_MAX the Leiden partitions stand alone
            from taskgrouping.methods.sparse import community_sums

            sums = community_sums(graph.sparse, labels)[0]
        chain = merge_chain(labels, None if sums is not None else graph.d, alone, stop=stop, scores=scores,
                            to_comm=sums)
        for lab, sc in zip(chain, scores, strict=True):
            _add(cands, graph, lab, f"{why}, merged by average linkage to {_count(lab)} groups", sc)


def resolution_unit(edges: int, k: int) -> float:
    """The resolution at which two (k+1)-task cliques joined by one edge stop merging: ``L / (2 l^2)``.

    Merging two communities of ``l`` internal edges each and one edge between them raises
    the generalised modularity when ``gamma < L / (2 l^2)`` (L: edges in the graph;
    Fortunato and Barthelemy's resolution limit, 2007). With ``l = k (k + 1) / 2``, the
    edges of a group of k + 1 mutual neighbours, this is the scale at which the graph's
    smallest natural groups are resolved, whatever T: about 0.35 at 16 tasks, 2.7 at 1,000.
    """
    k = max(k, 1)
    return max(edges, 1) / (2.0 * (k * (k + 1) / 2) ** 2)


def resolutions(leiden: _Leiden) -> list[float]:
    """The candidate resolutions of one graph: :data:`SCALED` multiples of its :func:`resolution_unit`."""
    return [round(leiden.unit * m, 4) for m in SCALED]


def _partitions(leidens: list[_Leiden], at_least: int = 1) -> list[tuple[np.ndarray, str]]:
    """Each graph's most modular Leiden partition at each of its resolutions (finer until ``at_least`` communities)."""
    out = []
    for leiden in leidens:
        res_list = resolutions(leiden)
        while _count(_best_of(leiden, res_list[-1])) < at_least and res_list[-1] < 2**16:
            res_list.append(res_list[-1] * 2)  # finer until there are enough communities
        out += [(_best_of(leiden, r), f"Leiden on the {leiden.name} at resolution {r:.3g}") for r in res_list]
    return out


def _auto(leidens: list[_Leiden], graph: TaskGraph) -> tuple[np.ndarray, dict[str, Any]]:
    """``--groups auto``: both graphs' Leiden partitions and all their average-linkage merges, by silhouette."""
    cands: Candidates = {}
    sources = _partitions(leidens)
    for labels, why in sources:
        _add(cands, graph, labels, why)
    _chains(cands, graph, sources)
    _add(cands, graph, np.zeros(len(graph.tasks), int), "one group (no partition has a positive silhouette)")
    labels, why = _pick(cands)
    return labels, {"chosen": why, "candidates": len(cands),
                    "rule": "the highest silhouette (on the graph's dissimilarity) among the Leiden partitions of "
                            "the neighbour graph and of its mutual-neighbour edges, at resolutions "
                            f"{', '.join(f'{m:g}' for m in SCALED)} x the graph's resolution unit ({RESTARTS} seeds "
                            "each, the most modular kept), and every average-linkage merge of them (tasks the graph "
                            "leaves alone stay alone)"}


def _fixed_count(leidens: list[_Leiden], graph: TaskGraph, n: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Exactly ``n`` groups: partitions with at least n communities, merged by average linkage to n, by silhouette."""
    cands: Candidates = {}
    sources = [(lab, why) for lab, why in _partitions(leidens, at_least=n) if _count(lab) >= n]
    for labels, why in sources:
        if _count(labels) == n:
            _add(cands, graph, labels, why)
    _chains(cands, graph, [(lab, why) for lab, why in sources if _count(lab) > n], stop=n)
    cands = {k: v for k, v in cands.items() if _count(v[0]) == n}
    if not cands and graph.sparse is not None and len(graph.tasks) > CHAIN_MAX:
        raise InputError(f"--groups {n}: no Leiden partition of the sparse task graph of {len(graph.tasks)} tasks has "
                         f"exactly {n} communities, and merging past {CHAIN_MAX} communities needs the dense matrix; "
                         "use --groups auto or --pairs dense")
    if not cands:  # no resolution splits the graph into n (cannot happen past singletons; stay total)
        _add(cands, graph, merge_chain(np.arange(len(graph.tasks)), graph.d, stop=n)[-1], f"average linkage to {n}")
    labels, why = _pick(cands)
    return labels, {"chosen": why, "candidates": len(cands),
                    "rule": f"exactly {n} groups: the highest silhouette among both graphs' Leiden partitions "
                            f"with at least {n} communities, each merged by average linkage to {n}"}


def neighbour_rows(affinity: Any, graph: TaskGraph | None = None) -> list[dict[str, Any]]:
    """Each task's k nearest partners, as :data:`~taskgrouping.storage.store.NEIGHBOURS_SCHEMA` rows.

    ``value`` is the affinity's own value symmetrised (distance, or mutual gain); ``edge``
    whether the graph kept that edge and ``weight`` its kernel weight (0 when pruned).
    """
    graph = graph or build_graph(affinity)
    sparse = getattr(affinity, "sparse", False)
    sym = affinity.values if sparse else 0.5 * (affinity.values + affinity.values.T)
    kept = {(int(a), int(b)): float(w) for (a, b), w in zip(graph.edges.tolist(), graph.weights.tolist(), strict=True)}
    rows = []
    for i, t in enumerate(graph.tasks):
        for r, j in enumerate(graph.neighbours[i].tolist()):
            w = kept.get((min(i, j), max(i, j)))
            value = sym[i, r] if sparse else sym[i, j]  # a neighbour list keeps its partners' distances in rank order
            rows.append({"task": t, "rank": r + 1, "partner": graph.tasks[j], "value": float(value),
                         "edge": w is not None, "weight": w or 0.0})
    return rows


def select_graph(affinity: Any, n_groups: int | None, seed: int,
                 neighbours: int | None = None) -> Grouping:
    """Groups as the communities of the task graph (module docstring).

    ``info`` holds ``k`` (the number of groups, as every selector's), ``neighbours`` (the
    graph's k: partners per task) and ``neighbour_rule``, ``edges``, ``prune``,
    ``isolated`` (tasks with no kept edge, each alone), ``chosen`` (which candidate
    partition won) and ``rule`` (how), ``candidates`` (how many were scored),
    ``modularity`` (:func:`graph_modularity` of the groups) and ``silhouette`` (as every
    selector reports it, :func:`~taskgrouping.selectors.base.silhouette`; the choice itself
    scores silhouettes on the graph's shifted dissimilarity).
    """
    t = len(affinity.tasks)
    if n_groups is not None and not 1 <= n_groups <= t:
        raise InputError(f"--groups {n_groups} is outside 1..{t} (the number of tasks)")
    graph = build_graph(affinity, neighbours)
    base: dict[str, Any] = {"neighbours": graph.k, "neighbour_rule": graph.rule, "edges": int(len(graph.edges)),
                            "prune": PRUNE, "isolated": [graph.tasks[i] for i in graph.isolated()]}
    if t < 2 or n_groups == t:
        labels, how = np.arange(t), {"chosen": "every task alone", "rule": f"--groups {t}" if n_groups else "one task"}
    elif n_groups == 1:
        labels, how = np.zeros(t, int), {"chosen": "one group", "rule": "--groups 1"}
    else:
        leidens = [_Leiden(graph, seed), _Leiden(graph, seed, mutual_only=True)]
        if n_groups is None:
            labels, how = _auto(leidens, graph)
        else:
            labels, how = _fixed_count(leidens, graph, n_groups)
    base["modularity"] = graph_modularity(graph, labels)
    if graph.sparse is not None:
        from taskgrouping.methods.sparse import silhouette_sparse

        sil = silhouette_sparse(affinity, labels)
    else:
        sil = silhouette(affinity, labels)
    info = base | how | {"k": _count(labels), "silhouette": sil}
    return Grouping.from_labels(affinity.tasks, _canonical_labels(labels), info=info)


def graph_modularity(graph: TaskGraph, labels: np.ndarray) -> float:
    """Weighted modularity (resolution 1) of ``labels`` on the graph's kept edges; 0 for a graph with no edge.

    ``Q = sum_c [ W_c / W - (S_c / 2W)^2 ]``: W the total edge weight, W_c the weight inside
    community c, S_c the summed weighted degree of its tasks (Newman 2004). Numpy only,
    so the report and the ``+1`` path do not import igraph; equal to igraph's (a test).
    """
    if not len(graph.edges):
        return 0.0
    lab = np.unique(np.asarray(labels), return_inverse=True)[1]
    i, j, w = graph.edges[:, 0], graph.edges[:, 1], graph.weights
    total = float(w.sum())
    inside = np.bincount(lab[i][lab[i] == lab[j]], weights=w[lab[i] == lab[j]], minlength=lab.max() + 1)
    degree = np.bincount(lab[i], weights=w, minlength=lab.max() + 1) + np.bincount(lab[j], weights=w,
                                                                                 minlength=lab.max() + 1)
    return float((inside / total - (degree / (2 * total)) ** 2).sum())


def _canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel so equal partitions give equal label arrays (first appearance order)."""
    seen: dict[int, int] = {}
    return np.array([seen.setdefault(int(v), len(seen)) for v in labels], int)


def place_by_graph(affinity: AffinityMatrix, task: str, serving: Sequence[Sequence[str]],
                   where: dict[str, int], graph: TaskGraph | None = None) -> tuple[int | None, str]:
    """The group a new task joins by the task graph: where its kept edges weigh most.

    Returns ``(group index, why)``; ``None`` when the new task has no kept edge to any
    served old task (the graph would leave it alone: drift). Uses numpy only (no
    igraph), so the ``+1`` path does not import it. ``graph``: the affinity's graph, when built already.
    """
    g = graph or build_graph(affinity)
    i = where[task]
    group_of = np.full(len(affinity.tasks), -1, np.int64)
    for gi, members in enumerate(serving):
        group_of[[where[m] for m in members]] = gi
    edges = np.asarray(g.edges, np.int64).reshape(-1, 2)
    mine = (edges[:, 0] == i) | (edges[:, 1] == i)  # vectorised: a loop over every edge per new task took
    other = np.where(edges[mine, 0] == i, edges[mine, 1], edges[mine, 0])  # 0.15 s a task at 10,000 tasks
    grp = group_of[other]
    weights = np.asarray(g.weights, np.float64)[mine]
    votes: dict[int, float] = {}
    for gi, w in zip(grp[grp >= 0].tolist(), weights[grp >= 0].tolist(), strict=True):  # edge order, as before
        votes[gi] = votes.get(gi, 0.0) + w
    if not votes:
        return None, (f"drift (fit): new task {task!r} has no edge in the task graph to any grouped task "
                      f"(its {g.k} nearest partners are far on their own scales)")
    best = max(votes, key=lambda gi: (votes[gi], -gi))
    return best, f"joined group {best} (edge weight {votes[best]:.3g} of {sum(votes.values()):.3g})"
