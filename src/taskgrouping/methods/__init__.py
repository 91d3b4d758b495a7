"""Affinity estimators, one file each, behind one registry.

An affinity method is a name, a frozen settings dataclass and the functions that
turn probe data into an :class:`~taskgrouping.methods.base.AffinityMatrix`.
"""

from __future__ import annotations

from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix

KNOWN_METHODS: tuple[str, ...] = ("swola", "tag", "datamaps", "hoa", "principled", "swola-meta")
"""The affinity methods: SWOLA (per-task probes), TAG and data maps (one joint training run),
HOA (single-task and pairwise trainings)."""

JOINT_METHODS: tuple[str, ...] = ("tag", "datamaps", "principled")
"""Methods whose affinity comes from one joint training run over the whole task set."""


def check_method(name: str) -> str:
    """Return ``name`` if it is a known method, else raise listing the known names."""
    if name not in KNOWN_METHODS:
        raise InputError(f"unknown --method {name!r}; known methods: {', '.join(KNOWN_METHODS)}")
    return name


__all__ = ["JOINT_METHODS", "KNOWN_METHODS", "AffinityMatrix", "check_method"]
