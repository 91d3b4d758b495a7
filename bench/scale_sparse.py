"""Tens of thousands of tasks through the CLI: the sparse task graph (``--pairs auto`` from 1,000 tasks).

For each size T and missing-label share: ``taskgrouping run --evaluate none`` on a fresh
store with T of the T + 1 tasks of ``builtin:synthetic:tasks=T+1,groups=(T+1)/10``, then the
same store with all T + 1 (the +1 run); with ``--more N`` the data has T + N + 1 tasks and
a run with T + N comes between (the "N more" run). ``--family subsets``: one full run of
``builtin:subsets`` (mixed task kinds, each task missing up to 30% of its labels). Each run is its own process under ``/usr/bin/time``:
its wall time and peak resident memory (the largest process of the run) are recorded
with the run summary's seconds, counts, the neighbour lists' facts and the ARI against
the planted groups. ``--recall Q``: for Q tasks drawn at random, the true 10 nearest by
the dense computation (their rows against every task, from the stored probes) against
the stored lists, and the memory estimate beside the measured peak.

Writes ``bench/results/scale_sparse.md`` and ``.jsonl`` (one line per run, appended with ``--add``).

    .venv/bin/python bench/scale_sparse.py [--tasks 10000] [--missing 0 0.2] [--recall 200]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/selectors.py shadows the standard library's selectors (which subprocess imports): this folder last
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from common import machine_line, write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def source(t: int, missing: float, more: int = 1, family: str = "synthetic") -> str:
    """``builtin:synthetic`` with T + ``more`` tasks in groups of 10 (the last ``more`` held back for the later runs).

    ``subsets``: T tasks of ``builtin:subsets`` (mixed kinds, hidden nonlinear features,
    each task missing up to ``missing`` of its labels; its default 0.3), no second run.
    """
    if family == "subsets":
        return f"builtin:subsets:tasks={t},groups={max(2, t // 10)},missing={missing or 0.3:g}"
    groups = max(2, (t + more) // 10)
    extra = f",missing={missing:g}" if missing else ""
    return f"builtin:synthetic:tasks={t + more},groups={groups}{extra}"


def held_back(t: int, more: int) -> str:
    """``--tasks`` of the first run: every task but the last ``more`` (``y_T`` .. ``y_{T+more-1}``)."""
    return "y_*," + ",".join(f"!y_{i:02d}" for i in range(t, t + more))


def cli(args: list[str]) -> tuple[dict[str, object], float, float]:
    """Run the CLI under /usr/bin/time: (summary, wall seconds, peak resident GiB)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "taskgrouping", "run", *args, "--json"],
                          capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 2**20  # type: ignore[union-attr]
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall, peak


def recall(store: str, summary: dict[str, object], queries: int, seed: int) -> dict[str, float]:
    """Recall of the true 10 nearest for ``queries`` random tasks: dense rows from the stored probes."""
    import torch

    from taskgrouping.methods.swola import SwolaSettings, masked_l1_cross, weighted_rows
    from taskgrouping.storage import Store
    from taskgrouping.storage.store import StoredProbes

    st = Store(store)
    aff = st.read_affinity(Path(summary["artifacts"]["affinity"]))  # type: ignore[index]
    names = list(aff.tasks)
    from taskgrouping import keys as k
    from taskgrouping.config import RunConfig

    cfg = RunConfig.from_dict(summary["settings"])  # type: ignore[arg-type]
    meta = st.read_prepared_meta(summary["dataset_key"])  # type: ignore[arg-type]
    fps = dict(zip([t["name"] for t in meta["tasks"]], meta["label_fps"], strict=True))
    data = st.read_prepared(summary["dataset_key"], tasks=[])  # type: ignore[arg-type]
    c = summary["head"]["c"]  # type: ignore[index]
    from dataclasses import replace

    s = replace(cfg.swola, head_c=c) if isinstance(cfg.swola, SwolaSettings) else cfg.swola
    pkeys = [k.probe_key(data.data_key(), t, fps[t], s, cfg.seed) for t in names]
    e, m = weighted_rows(StoredProbes(st, pkeys), data.x[data.probe_idx], s, cfg.seed)
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(len(names), queries, replace=False))
    dense = masked_l1_cross(e[torch.as_tensor(q)], m[torch.as_tensor(q)], e, m).numpy() * (s.lr / s.trunks)
    dense[np.arange(len(q)), q] = np.inf
    top = np.argsort(dense, axis=1)[:, :10]
    got = aff.neighbours[q, :10]
    d10 = np.sort(dense, axis=1)[:, 9]
    exact = np.mean([np.allclose(np.sort(aff.values[i, :10]), np.sort(dense[r, aff.neighbours[i, :10]]), rtol=1e-5)
                     for r, i in enumerate(q)])
    return {"recall10": float(np.mean([len(set(top[r]) & set(got[r])) / 10 for r in range(len(q))])),
            "within1pct": float(np.mean(dense[np.arange(len(q))[:, None], got] <= 1.01 * d10[:, None])),
            "stored_exact": float(exact), "queries": int(queries)}


class Cluster:
    """A `dask scheduler` and ``workers`` single-threaded `dask worker` processes on loopback (the user's cluster)."""

    def __init__(self, workers: int) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                        str(port), "--no-dashboard"], env=env, **quiet)]  # type: ignore[call-overload]
        self.procs += [subprocess.Popen([sys.executable, "-m", "dask", "worker", self.address, "--nthreads", "1",
                                         "--no-nanny", "--no-dashboard", "--memory-limit", "0"], env=env, **quiet)  # type: ignore[call-overload]
                       for _ in range(workers)]
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)

    def worker_peaks(self) -> list[float]:
        """Each worker's peak resident memory so far (GiB, from /proc)."""
        out = []
        for p in self.procs[1:]:
            try:
                text = Path(f"/proc/{p.pid}/status").read_text()
                out.append(round(int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 2**20, 2))  # type: ignore[union-attr]
            except (OSError, AttributeError):
                out.append(float("nan"))
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, nargs="+", default=[10000])
    ap.add_argument("--missing", type=float, nargs="+", default=[0.0, 0.2])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--recall", type=int, default=0, metavar="Q")
    ap.add_argument("--add", action="store_true", help="append to the jsonl instead of replacing it")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--cluster", type=int, default=0, metavar="W",
                    help="run on a `dask scheduler` and W `dask worker` processes started here (--dask-address)")
    ap.add_argument("--no-plus-one", action="store_true", help="only the full runs")
    ap.add_argument("--more", type=int, default=0, metavar="N",
                    help="after the full run, one that adds N tasks, then the +1 run (data: T + N + 1 tasks)")
    ap.add_argument("--family", default="synthetic", choices=["synthetic", "subsets"],
                    help="subsets: builtin:subsets, full runs only")
    ap.add_argument("--render", action="store_true", help="only write the table and plot from the jsonl")
    args = ap.parse_args()
    from taskgrouping.resources import sparse_memory

    cluster = Cluster(args.cluster) if args.cluster and not args.render else None
    jsonl = RESULTS / "scale_sparse.jsonl"
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()] if (args.add or args.render) and jsonl.exists() else []
    for t in [] if args.render else args.tasks:
        for missing in args.missing:
            root = tempfile.mkdtemp(prefix=f"tg-sparse-{t}-")
            store = str(Path(root) / "store")
            data = source(t, missing, args.more + 1, args.family)
            common = ["--data", data, "--store", store, "--samples", str(args.samples), "--evaluate", "none"]
            if args.family == "subsets":
                runs = [("full (subsets: up to the missing share per task)", [])]
            else:
                runs = [("full", ["--tasks", held_back(t, args.more + 1)])]
                if args.more:  # T + N tasks, one held back for the +1 run
                    runs.append((f"+{args.more} tasks", ["--tasks", held_back(t + args.more, 1)]))
                if not args.no_plus_one:
                    runs.append(("+1 task", []))
            for label, extra in runs:
                summary, wall, peak = cli(common + extra + (["--dask-address", cluster.address] if cluster else []))
                est = sum(sparse_memory(t, args.samples, 128, masked=missing > 0).values()) / 2**30  # the default MLP
                row = {"T": len(summary["tasks"]), "missing": missing, "run": label, "wall": round(wall, 1),  # type: ignore[arg-type]
                       "family": args.family,
                       "peak_gib": round(peak, 2), "estimate_gib": round(est, 2),
                       "seconds": summary["seconds"], "counts": summary["counts"], "pairs": summary.get("pairs"),
                       "ari": summary["ground_truth_ari"], "groups": len(summary["groups"]),  # type: ignore[arg-type]
                       "regroup": summary["regroup"], "date": time.strftime("%Y-%m-%d")}
                if cluster:
                    row["cluster"] = {"workers": args.cluster, "worker_peak_gib": cluster.worker_peaks()}
                if label == "full" and args.recall:
                    row["recall"] = recall(store, summary, args.recall, 0)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if not args.keep:
                import shutil

                shutil.rmtree(root, ignore_errors=True)
    if cluster:
        for p in cluster.procs[::-1]:
            p.terminate()
    for r in rows:  # the estimate as the code gives it now (rows measured earlier keep their peaks)
        r["estimate_gib"] = round(sum(sparse_memory(int(r["T"]), args.samples, 128,
                                                    masked=r["missing"] > 0).values()) / 2**30, 2)
    write_result("scale_sparse.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    lines = ["# The sparse task graph at scale (`taskgrouping run --evaluate none`)", "",
             f"Machine: {machine_line()}", "",
             "Each run is one CLI process (its own Prefect server and 2 Dask workers); wall and peak resident "
             "memory by `/usr/bin/time`. `+1 task`: the same store with one more task.", "",
             "`cluster`: on a `dask scheduler` and two `dask worker` processes (`--dask-address`; peak: the flow's "
             "process, then each worker's).", "",
             "| T | missing | run | wall s | flow total | probe | affinity (sketch / exact) | select | report | "
             "peak GiB | estimate GiB | pairs computed / reused | ARI | groups | recall@10 (within 1%) | regroup |",
             "|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for r in rows:
        s, c, p = r["seconds"], r["counts"], r.get("pairs") or {}
        ps = p.get("seconds") or {}
        rec = r.get("recall")
        rec_cell = "" if not rec else f"{rec['recall10']:.3f} ({rec['within1pct']:.3f})"
        lines.append(
            f"| {r['T']} | {r['missing']:.0%} | {r['run']} | {r['wall']:.1f} | {s['total']:.1f} | {s['probe']:.1f} | "
            f"{s['affinity']:.1f} ({ps.get('sketch', 0):.1f} / {ps.get('exact', 0):.1f}) | {s['select']:.1f} | "
            f"{s.get('report', 0):.1f} | {r['peak_gib']:.2f} | {r['estimate_gib']:.2f} | "
            f"{c['pairs_computed']} / {c['pairs_reused']} | {r['ari']:.3f} | {r['groups']} | "
            f"{rec_cell} | {r['regroup']['mode']}{' (cluster, workers ' + str(r['cluster']['worker_peak_gib']) + ' GiB)' if r.get('cluster') else ''} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print("wrote", write_result("scale_sparse.md", text), write_result("scale_sparse.png", plot(rows)))


def plot(rows: list[dict[str, object]]) -> bytes:
    """Wall, flow total and peak memory of the full runs against T (log-log), by missing-label share."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for missing, style in ((0.0, "o-"), (0.2, "s--")):
        full = sorted((r for r in rows if r["run"] == "full" and r["missing"] == missing and not r.get("cluster")),
                      key=lambda r: r["T"])  # type: ignore[arg-type, return-value]
        if not full:
            continue
        ts = [r["T"] for r in full]
        ax.plot(ts, [r["wall"] for r in full], style, label=f"wall, {missing:.0%} missing")
        ax.plot(ts, [r["seconds"]["affinity"] for r in full], style, alpha=0.5,  # type: ignore[index]
                label=f"affinity stage, {missing:.0%} missing")
        bx.plot(ts, [r["peak_gib"] for r in full], style, label=f"measured, {missing:.0%} missing")
        bx.plot(ts, [r["estimate_gib"] for r in full], style, alpha=0.5, label=f"estimate, {missing:.0%} missing")
    for r in rows:
        if r.get("cluster"):
            ax.plot([r["T"]], [r["wall"]], "k^", label=f"wall, 2 Dask workers ({r['T']} tasks)")
    ax.axhline(300, color="red", lw=0.8, ls=":", label="5 minutes")
    bx.axhline(8, color="red", lw=0.8, ls=":", label="8 GiB")
    for a, y in ((ax, "seconds"), (bx, "peak resident GiB")):
        a.set_xscale("log")
        a.set_xlabel("tasks T")
        a.set_ylabel(y)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    ax.set_yscale("log")
    ax.set_title("The sparse task graph through the CLI")
    bx.set_title("Memory: measured peak and the up-front estimate")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


if __name__ == "__main__":
    main()
