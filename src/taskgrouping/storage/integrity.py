"""Content checksums of store files: every file is sealed with a ``sha256sum``-format sidecar.

A store file is *intact* when it exists, its sidecar ``<name>.sha256`` exists, and the
file's SHA-256 equals the one recorded. The sidecar is written (atomically) only after
the file itself has been renamed into place, so a file whose writer died before
sealing it has no sidecar and counts as not written. A truncated, corrupted or
hand-edited file no longer matches its checksum: it is reported, in one line naming
it, and recomputed by whoever needed it, never used.

The sidecars are plain ``sha256sum`` lines, so ``sha256sum -c`` works on them too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHECKSUM_SUFFIX = ".sha256"
LOCK_NAME = ".lock"
SKIPPED_DIRS = ("prefect",)
"""Store folders that belong to Prefect (its database and step records), not to the store's own files."""

log = logging.getLogger("taskgrouping")


class DamagedFile(Exception):
    """A store file that is missing its checksum or no longer matches it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"damaged store file {path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[DamagedFile], tuple[Path, str]]:
        return (DamagedFile, (self.path, self.reason))  # raised on a Dask worker, re-raised in the flow


def checksum_path(path: Path) -> Path:
    """The sidecar of ``path``: ``<name>.sha256`` beside it."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seal(path: Path, digest: str | None = None) -> None:
    """Record ``path``'s checksum in its sidecar (atomically: temporary file, then rename)."""
    digest = digest or sha256_file(path)
    side = checksum_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{digest}  {path.name}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, side)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<folder>/.lock`` while a file is renamed into place and sealed.

    Held for two renames only. Without it, two runs writing the same path at once could
    leave one's data beside the other's checksum (a file that then reads as damaged).
    Readers take it only to look again at a file that first read as damaged
    (:func:`settled_problem`), so a reader between the two renames is not misled.
    """
    fd = os.open(folder / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def recorded(path: Path) -> str | None:
    """The checksum recorded for ``path`` (None without a readable sidecar)."""
    try:
        text = checksum_path(path).read_text()
    except OSError:
        return None
    digest = text.split(" ", 1)[0].strip()
    return digest if len(digest) == 64 else None


def problem(path: Path) -> str | None:
    """Why ``path`` is not intact, or None when it is."""
    if not path.exists():
        return "missing"
    want = recorded(path)
    if want is None:
        return "no checksum (its writer did not finish, or an older version wrote it)"
    if sha256_file(path) != want:
        return "checksum mismatch (truncated, corrupted or edited since it was written)"
    return None


def settled_problem(path: Path) -> str | None:
    """:func:`problem`, checked again under the writers' folder lock when the first look finds one.

    A writer replaces a file and then its checksum under that lock, so a reader that
    looks between the two sees a mismatch that is no damage; the second look, after
    the writer is done, tells the two apart. The common (intact) path takes no lock.
    """
    why = problem(path)
    if why is None or why == "missing" or not path.parent.is_dir():
        return why
    try:
        with folder_lock(path.parent):
            return problem(path)
    except OSError:  # a read-only store: the first look stands
        return why


def intact(path: Path, warn: bool = True) -> bool:
    """Whether ``path`` is intact; a file that exists but is damaged is reported in one log line."""
    why = settled_problem(path)
    if why is not None and why != "missing" and warn:
        log.warning("damaged store file %s: %s; it will be recomputed", path, why)
    return why is None


def intact_bytes(path: Path) -> bytes | None:
    """The bytes of ``path`` checked against its checksum, or None (missing; unfinished or damaged, reported).

    The bytes are read once and checked, so a file replaced meanwhile (a rewrite under
    the same name) is never half old, half new. A mismatch is looked at again under
    the writers' folder lock (:func:`settled_problem`).
    """
    def attempt() -> tuple[bytes, str | None] | None:
        try:
            return path.read_bytes(), recorded(path)
        except FileNotFoundError:
            return None

    got = attempt()
    if got is not None and hashlib.sha256(got[0]).hexdigest() != got[1]:
        with folder_lock(path.parent):
            got = attempt()
        if got is not None and hashlib.sha256(got[0]).hexdigest() != got[1]:
            intact(path)  # reports it
            return None
    return None if got is None else got[0]


def verified(path: Path) -> Path:
    """``path`` if intact, else :class:`DamagedFile` naming it."""
    why = settled_problem(path)
    if why is not None:
        raise DamagedFile(path, why)
    return path


def _walk(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of a store, leaving out Prefect's folder and hidden ones (temporary and test files)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not (Path(dirpath) == root and d in SKIPPED_DIRS))
        yield dirpath, dirnames, filenames


STORE_DIRS = ("datasets", "probes", "heads", "pairs", "affinity", "maps", "models", "meta", "groupings", "runs",
              "images", "heatmaps", "prefect")
"""The top-level folders a store is made of (storage/store.py)."""


def is_store(root: Path) -> bool:
    """Whether ``root`` looks like a taskgrouping store.

    A store has at least one of :data:`STORE_DIRS` and no top-level files besides
    hidden ones (it keeps every file in its folders).
    """
    entries = [e for e in root.iterdir() if not e.name.startswith(".")]
    return any(e.is_dir() and e.name in STORE_DIRS for e in entries) and not any(e.is_file() for e in entries)


def verify_store(root: Path) -> tuple[int, list[tuple[Path, str]]]:
    """Check every store file and every sidecar in one walk: (files checked, [(path, problem)])."""
    damaged: list[tuple[Path, str]] = []
    checked = 0
    for dirpath, _, filenames in _walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith("."):
                continue
            if name.endswith(CHECKSUM_SUFFIX):
                if not path.with_name(name[: -len(CHECKSUM_SUFFIX)]).exists():
                    damaged.append((path, "checksum of a file that is missing"))
                continue
            checked += 1
            why = problem(path)
            if why is not None:
                damaged.append((path, why))
    return checked, sorted(damaged)
