"""Spectral clustering of the task similarity; k given, or chosen by the eigengap and checked by silhouette."""

from __future__ import annotations

import warnings

import numpy as np

from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors.base import Grouping, silhouette, trivial_grouping

MAX_AUTO_GROUPS = 12
CANDIDATES = 3
GRID_RATIO = 1.4
"""Past 4 x MAX_AUTO_GROUPS tasks, auto also tries k on this geometric grid up to T/4 ..."""
REFINE = 12
"""... and about this many values of k between the best grid point's neighbours."""


def _normalised_affinity(similarity: np.ndarray) -> np.ndarray:
    deg = similarity.sum(axis=1)
    inv = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))
    return np.asarray(inv[:, None] * similarity * inv[None, :])


def eigengaps(similarity: np.ndarray) -> np.ndarray:
    """Gaps ``lambda_{k+1} - lambda_k`` (k = 1..T-1) of the normalised Laplacian's spectrum."""
    lap = np.eye(len(similarity)) - _normalised_affinity(similarity)
    vals = np.sort(np.linalg.eigvalsh(lap))
    return np.diff(vals)


def k_grid(kmax: int, kmin: int = 2, ratio: float = GRID_RATIO) -> list[int]:
    """``kmin`` and on by ``ratio`` (2, 3, 4, 5, 8, 11, ... by default), rounded, up to ``kmax``."""
    ks: set[int] = set()
    k = float(kmin)
    while round(k) <= kmax:
        ks.add(int(round(k)))
        k *= ratio
    return sorted(ks)


def grid_scores(affinity: AffinityMatrix, similarity: np.ndarray, ks: list[int], seed: int) -> dict[int, float]:
    """Silhouette of a quick spectral labelling at each k: one eigendecomposition, then k-means per k.

    Used to pick candidates among many k for large T; the final labels come from
    :func:`cluster_labels`.
    """
    from sklearn.cluster import KMeans

    vals, vecs = np.linalg.eigh(_normalised_affinity(similarity))
    vecs = vecs[:, np.argsort(vals)[::-1]]  # leading eigenvectors first
    out = {}
    for k in ks:
        emb = vecs[:, :k] / np.maximum(np.linalg.norm(vecs[:, :k], axis=1, keepdims=True), 1e-12)
        labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(emb)
        out[k] = silhouette(affinity, labels)
    return out


def cluster_labels(similarity: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(T,) spectral cluster labels of a precomputed similarity, k clusters, seeded."""
    from sklearn.cluster import SpectralClustering

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "graph is not fully connected" on near-block matrices
        model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                                   assign_labels="kmeans", n_init=10)
        return np.asarray(model.fit_predict(similarity))


def select_spectral(affinity: AffinityMatrix, n_groups: int | None, seed: int) -> Grouping:
    """Spectral clustering on ``S = exp(-D / median D)`` (methods.md section 6).

    With ``n_groups=None`` the ``CANDIDATES`` values of k (2 .. min(T-1, 12)) with the
    largest eigengaps are clustered and the one with the best silhouette is kept. Past
    52 tasks the eigengaps of a dense similarity flatten out, so the k of a geometric
    grid up to T/4 with the best quick silhouette (:func:`grid_scores`) joins them.
    Fewer than three tasks under ``auto`` form one group.
    """
    t = len(affinity.tasks)
    if n_groups is not None:
        trivial = trivial_grouping(affinity, n_groups)
        if trivial is not None:
            return trivial
        sim = affinity.similarity()
        labels = cluster_labels(sim, n_groups, seed)
        return Grouping.from_labels(affinity.tasks, labels,
                                    info={"k": n_groups, "silhouette": silhouette(affinity, labels)})
    if t < 3:
        trivial = trivial_grouping(affinity, 1)
        assert trivial is not None
        return trivial
    sim = affinity.similarity()
    gaps = eigengaps(sim)  # gaps[k-1] follows the k-th eigenvalue
    kmax = min(t - 1, MAX_AUTO_GROUPS)
    ks = list(range(2, kmax + 1))
    ranked = sorted(ks, key=lambda k: -gaps[k - 1])[:CANDIDATES]
    if t // 4 > MAX_AUTO_GROUPS:
        # hundreds of tasks: the eigengaps flatten out and the groups outnumber 12; rank a
        # geometric grid of k up to T/4 by a quick silhouette and add the best to the candidates
        coarse = k_grid(t // 4)
        quick = grid_scores(affinity, sim, coarse, seed)
        best_k = max(quick, key=lambda k: np.nan_to_num(quick[k], nan=-1.0))
        at = coarse.index(best_k)  # refine between the best grid point's neighbours (about 12 values)
        lo, hi = coarse[max(0, at - 1)], coarse[min(len(coarse) - 1, at + 1)]
        span = range(lo, hi + 1) if hi - lo <= REFINE else k_grid(hi, lo, (hi / lo) ** (1 / REFINE))
        fine = [k for k in span if k not in quick]
        quick |= grid_scores(affinity, sim, fine, seed)
        best_k = max(quick, key=lambda k: np.nan_to_num(quick[k], nan=-1.0))
        ranked = list(dict.fromkeys([*ranked, best_k]))
    scored = []
    for k in ranked:
        labels = cluster_labels(sim, k, seed)
        scored.append((silhouette(affinity, labels), gaps[k - 1], k, labels))
    best = max(scored, key=lambda s: (np.nan_to_num(s[0], nan=-1.0), s[1]))
    return Grouping.from_labels(
        affinity.tasks, best[3],
        info={"k": best[2], "silhouette": best[0],
              "candidates": {int(k): {"eigengap": float(g), "silhouette": float(s)} for s, g, k, _ in scored}},
    )
