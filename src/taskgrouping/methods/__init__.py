"""Affinity estimators, one file each, behind one registry.

An affinity method is a name, a frozen settings dataclass and the functions that
turn probe data into an :class:`~taskgrouping.methods.base.AffinityMatrix`.
"""

from __future__ import annotations

from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix

KNOWN_METHODS: tuple[str, ...] = ("swola",)
"""Methods this build implements (TAG, data maps and HOA arrive with their issue)."""


def check_method(name: str) -> str:
    """Return ``name`` if it is a known method, else raise listing the known names."""
    if name not in KNOWN_METHODS:
        raise InputError(f"unknown --method {name!r}; known methods: {', '.join(KNOWN_METHODS)}")
    return name


__all__ = ["KNOWN_METHODS", "AffinityMatrix", "check_method"]
