"""Group selectors, one file each, behind one registry: each maps an affinity matrix to groups."""

from __future__ import annotations

from taskgrouping.errors import InputError
from taskgrouping.selectors.base import Grouping, Selector
from taskgrouping.selectors.gat import select_gat
from taskgrouping.selectors.spectral import select_spectral

SELECTORS: dict[str, Selector] = {"spectral": select_spectral, "gat": select_gat}
KNOWN_SELECTORS: tuple[str, ...] = tuple(SELECTORS)


def get_selector(name: str) -> Selector:
    """The selector called ``name``; an unknown name raises, listing the known ones."""
    try:
        return SELECTORS[name]
    except KeyError:
        raise InputError(f"unknown --selector {name!r}; known selectors: {', '.join(KNOWN_SELECTORS)}") from None


__all__ = ["KNOWN_SELECTORS", "SELECTORS", "Grouping", "Selector", "get_selector"]
