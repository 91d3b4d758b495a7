"""Stable content hashes for cache keys (never Python's ``hash()``, which is salted per process)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


class Encoded(bytes):
    """A part's JSON encoding made once (:func:`encoded`): hashed as the part itself would be."""


def encoded(part: Any) -> Encoded:
    """``part`` as :func:`stable_hash` encodes it, for a part shared by thousands of keys (settings)."""
    return Encoded(json.dumps(part, sort_keys=True, default=str).encode())


def stable_hash(*parts: Any, length: int = 20) -> str:
    """Hash JSON-able parts, numpy arrays and bytes into a short hex digest.

    Equal inputs give equal digests in every process and on every machine. An
    :class:`Encoded` part hashes as the part it encodes.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Encoded):
            h.update(b"js")
            h.update(part)
        elif isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(b"nd")
            h.update(str(arr.dtype).encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        elif isinstance(part, bytes | bytearray):
            h.update(b"by")
            h.update(bytes(part))
        else:
            h.update(b"js")
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()[:length]


def derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed derived from ``seed`` and some labels, stable across processes."""
    return int(stable_hash(seed, *parts, length=8), 16) & 0x7FFFFFFF
