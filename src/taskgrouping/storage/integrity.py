"""Content checksums of store files: every file is sealed with a ``sha256sum``-format sidecar.

A store file is *intact* when it exists, its sidecar ``<name>.sha256`` exists, and the
file's SHA-256 equals the one recorded. The sidecar is written (atomically) only after
the file itself has been renamed into place, so a file whose writer died before
sealing it has no sidecar and counts as not written. A truncated, corrupted or
hand-edited file no longer matches its checksum: it is reported, in one line naming
it, and recomputed by whoever needed it, never used.

The sidecars are plain ``sha256sum`` lines, so ``sha256sum -c`` works on them too.

**Checked once, then trusted until it changes.** Sealing stamps the sidecar's
modification time with the file's status-change time (``st_ctime``, which every write,
truncation, rename or permission change moves, and no program can set back). A later
read whose file still has that status-change time is the file that was hashed, and is
not hashed again; any other file is hashed (and, when it matches, stamped again: a
copied store is hashed once). This is git's index rule, made safe by the kernel: on
Linux 6.13+ a change right after the stamp still gets a later time (fine-grained
timestamps once a time was read); on older kernels a change within the same clock
tick (a few milliseconds) of the seal could go unseen. Reading 1,000 probes (250 MB)
went from two SHA-256 passes (0.2 s each) to 1,000 ``stat`` calls. ``taskgrouping
verify`` (:func:`verify_store`) always hashes every file: it is the check for damage
that no time records (a failing disk).
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
    """Record ``path``'s checksum in its sidecar (atomically: temporary file, then rename), stamped with its ctime.

    ``digest`` must be of the bytes ``path`` holds now (the caller hashed them before the
    rename). The file's status is read before it is hashed here, so a change while it is
    hashed leaves a stamp that no longer matches.
    """
    stamp = os.stat(path).st_ctime_ns
    digest = digest or sha256_file(path)
    side = checksum_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{digest}  {path.name}\n")
        os.chmod(tmp, 0o644)
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, side)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def unchanged_since_sealed(path: Path, status: os.stat_result | None = None) -> bool:
    """Whether ``path`` (or the open file whose ``status`` is given) is the file its sidecar's stamp was taken of.

    True when the file's status-change time equals the sidecar's modification time
    (:func:`seal` sets it so); then its bytes are the ones that were hashed.
    """
    try:
        st = status or os.stat(path)
        side = os.stat(checksum_path(path))
    except OSError:
        return False
    return st.st_ctime_ns == side.st_mtime_ns


def _stamp_again(path: Path, stamp: int) -> None:
    """After ``path`` hashed as recorded: stamp its sidecar with the ctime read before hashing (best effort).

    A file changed since that ctime was read has another one now, so the stamp does not
    match it and it is hashed again next time. A read-only store keeps hashing.
    """
    with contextlib.suppress(OSError):
        os.utime(checksum_path(path), ns=(stamp, stamp))


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


def problem(path: Path, deep: bool = False) -> str | None:
    """Why ``path`` is not intact, or None when it is.

    ``deep``: hash the file even when it is unchanged since it was sealed (:func:`verify_store`).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    if not deep and unchanged_since_sealed(path, st):
        return None
    want = recorded(path)
    if want is None:
        return "no checksum (its writer did not finish, or an older version wrote it)"
    if sha256_file(path) != want:
        return "checksum mismatch (truncated, corrupted or edited since it was written)"
    _stamp_again(path, st.st_ctime_ns)
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
    the same name) is never half old, half new: the open file's status, taken after the
    read, must carry the seal's stamp, or the bytes read are hashed. A mismatch is
    looked at again under the writers' folder lock (:func:`settled_problem`).
    """
    def attempt() -> tuple[bytes, os.stat_result] | None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
                status = os.fstat(fh.fileno())  # after the read: a change while reading moved its ctime
            return data, status
        except FileNotFoundError:
            return None

    def matches(got: tuple[bytes, os.stat_result]) -> bool:
        return hashlib.sha256(got[0]).hexdigest() == recorded(path)

    got = attempt()
    if got is None:
        return None
    if unchanged_since_sealed(path, got[1]):
        return got[0]
    if not matches(got):
        with folder_lock(path.parent):
            got = attempt()
        if got is not None and not matches(got):
            intact(path)  # reports it
            return None
        if got is None:
            return None
    _stamp_again(path, got[1].st_ctime_ns)
    return got[0]


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


STORE_DIRS = ("datasets", "probes", "heads", "pairs", "sketches", "trunkmaps", "affinity", "maps", "models", "meta",
              "groupings", "runs", "images", "heatmaps", "prefect")
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
            why = problem(path, deep=True)
            if why is not None:
                damaged.append((path, why))
    return checked, sorted(damaged)
