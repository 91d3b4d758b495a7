"""Group selectors, one file each, behind one registry: each maps an affinity matrix to groups."""

from __future__ import annotations

import functools

from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors.base import Grouping, Selector, SelectSettings
from taskgrouping.selectors.graph import select_graph
from taskgrouping.selectors.mip import select_mip
from taskgrouping.selectors.network import select_network
from taskgrouping.selectors.spectral import select_spectral


def select_gat(affinity: AffinityMatrix, n_groups: int | None, seed: int) -> Grouping:
    """The GAT selector (:func:`taskgrouping.selectors.gat.select_gat`), imported on first use.

    torch and torch_geometric take about a second to import, which ``taskgrouping select``
    with another selector need not pay.
    """
    from taskgrouping.selectors.gat import select_gat as gat

    return gat(affinity, n_groups, seed)


SELECTORS: dict[str, Selector] = {"graph": select_graph, "spectral": select_spectral, "gat": select_gat,
                                  "network": select_network, "mip": select_mip}
KNOWN_SELECTORS: tuple[str, ...] = tuple(SELECTORS)
CONSTRAINED: tuple[str, ...] = ("network", "mip")
"""Selectors that take :class:`SelectSettings` (overlap, group size and cost limits)."""


def get_selector(name: str, settings: SelectSettings | None = None) -> Selector:
    """The selector called ``name`` (with its constraints bound); an unknown name raises, listing the known ones."""
    try:
        selector = SELECTORS[name]
    except KeyError:
        raise InputError(f"unknown --selector {name!r}; known selectors: {', '.join(KNOWN_SELECTORS)}") from None
    if settings is None or settings.is_default():
        return selector
    if name not in CONSTRAINED:
        raise InputError(f"--selector {name} takes no overlap, size or cost constraints; "
                         f"use one of {', '.join(CONSTRAINED)}")
    return functools.partial(selector, settings=settings)  # type: ignore[call-arg,return-value]


def select_groups(affinity: AffinityMatrix, n_groups: int | None, selector: str, settings: SelectSettings,
                  seed: int) -> dict[str, object]:
    """Groups from a matrix as ``taskgrouping select --json`` gives them (the CLI and the API call this).

    Returns ``groups``, ``served``, ``objective``, ``selector``, ``kind``, ``exact`` and ``seconds``.
    """
    import time

    t0 = time.perf_counter()
    grouping = get_selector(selector, settings)(affinity, n_groups, seed)
    return {"groups": grouping.groups, "served": grouping.served, "objective": grouping.objective,
            "selector": selector, "kind": affinity.kind, "exact": grouping.info.get("exact"),
            "seconds": round(time.perf_counter() - t0, 4)}


__all__ = ["CONSTRAINED", "KNOWN_SELECTORS", "SELECTORS", "Grouping", "SelectSettings", "Selector",
           "get_selector", "select_groups"]
