"""Shared helpers of the benchmark scripts: the machine line, peak memory of a stage, writing results.

Not a test helper: benchmarks print tables and are never run by ``make test``.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_line() -> str:
    """One line describing where the numbers were measured."""
    import torch

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads); {time.strftime('%Y-%m-%d')}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory of this process while a block runs, above what it held before (sampled every 2 ms).

    Sees every allocation (numpy, torch, Arrow), unlike ``tracemalloc``. Memory freed
    and reused inside the block is counted once, as the operating system sees it.
    """

    def __init__(self) -> None:
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        import gc

        gc.collect()
        self.base = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.base) / 2**20

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """``with timed() as t: ...`` then ``t["s"]`` (seconds) and ``t["extra_mib"]``, ``t["peak_mib"]``."""
    out: dict[str, float] = {}
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        yield out
        out["s"] = time.perf_counter() - t0
    out["extra_mib"], out["peak_mib"] = mem.extra_mib, mem.peak_mib


def write_result(name: str, text: str | bytes) -> Path:
    """Write ``bench/results/<name>`` (atomically) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text) if isinstance(text, str) else tmp.write_bytes(text)
    tmp.replace(path)
    return path


@contextmanager
def prefect_session(home: Path) -> Iterator[str]:
    """One local Prefect server for a whole benchmark (its API URL set for the flows run inside)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from taskgrouping.flows.keeper import stop_shared
    from taskgrouping.flows.server import drain_prefect_queues, prefect_api

    try:
        with prefect_api(home) as url, temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                drain_prefect_queues()
    finally:
        stop_shared(home)  # a benchmark leaves no server behind
