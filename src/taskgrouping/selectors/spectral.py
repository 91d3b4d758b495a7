"""Spectral clustering of the task similarity; k given, or chosen by the eigengap and checked by silhouette."""

from __future__ import annotations

import warnings

import numpy as np

from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors.base import Grouping, silhouette, trivial_grouping

MAX_AUTO_GROUPS = 12
CANDIDATES = 3


def eigengaps(similarity: np.ndarray) -> np.ndarray:
    """Gaps ``lambda_{k+1} - lambda_k`` (k = 1..T-1) of the normalised Laplacian's spectrum."""
    deg = similarity.sum(axis=1)
    inv = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))
    lap = np.eye(len(deg)) - inv[:, None] * similarity * inv[None, :]
    vals = np.sort(np.linalg.eigvalsh(lap))
    return np.diff(vals)


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
    largest eigengaps are clustered and the one with the best silhouette is kept.
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
