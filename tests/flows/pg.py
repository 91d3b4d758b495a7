"""A real PostgreSQL for tests: Debian's ``postgresql`` (installed by ``.ci/run`` when missing), in a
temporary data folder on a free loopback port, stopped by ``pg_ctl`` at the end.

PostgreSQL refuses to run as root, so under root (CI) it runs as the ``postgres`` user the
package creates."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from taskgrouping.flows.serverproc import free_port


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a fresh ``prefect`` database (``postgresql+asyncpg://``)."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
    root = Path(tempfile.mkdtemp(prefix="tg-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o755)
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "prefect", "--no-sync")
        run(bindir / "pg_ctl", "-D", data, "-l", root / "pg.log", "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        try:
            run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "prefect", "prefect")
            yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
        finally:
            with contextlib.suppress(subprocess.SubprocessError):
                run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
