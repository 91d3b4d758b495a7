"""Adding one task to 1,000 through the CLI: each run a new ``taskgrouping run`` process, as a user runs it.

A fresh store gets the first T tasks of ``builtin:synthetic`` (``--evaluate none``), then
``--adds`` runs each add the next task (T + 1, T + 2, ...). Every run is its own process
on the store's own Prefect server (kept between runs), so the +1 runs pay what a user's
would: imports inside stages, reading the store, Prefect's steps. Per run: the summary's
stage seconds, flow total (the stages) and wall; ratio = a +1 run's flow total over the
full run's; whether the regroup was incremental, and whether every old task kept its
group (compared with the previous version's groups). Writes ``bench/results/add_one.md``.

    python bench/add_one.py [--tasks 1000] [--adds 4] [--samples 512]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, write_result  # noqa: E402

from taskgrouping.data.builtins import synthetic  # noqa: E402

STAGES = ("sample", "probe", "affinity", "select", "report")


def one(store: Path, source: str, tasks: list[str], samples: int, seed: int) -> tuple[float, dict[str, object]]:
    """Wall seconds and the summary of one CLI run on ``tasks``."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "taskgrouping", "run", "--data", source, "--tasks", ",".join(tasks),
                          "--samples", str(samples), "--seed", str(seed), "--evaluate", "none", "--store", str(store),
                          "--json"], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(out.stdout)


def kept_groups(before: dict[str, object], after: dict[str, object]) -> bool:
    """Whether every task of ``before`` is grouped with the same old tasks in ``after``."""
    def partners(summary: dict[str, object], old: set[str]) -> dict[str, frozenset[str]]:
        groups = summary["groups"]
        assert isinstance(groups, list)
        out: dict[str, frozenset[str]] = {}
        for g in groups:
            members = frozenset(t for t in g if t in old)
            for t in members:
                out[t] = out.get(t, frozenset()) | members
        return out

    old = set(before["tasks"])  # type: ignore[arg-type]
    return partners(before, old) == partners(after, old)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--adds", type=int, default=4)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t, groups = args.tasks, max(2, args.tasks // 10)
    source = f"builtin:synthetic:tasks={t + args.adds},groups={groups}"
    names = synthetic(tasks=t + args.adds, groups=groups, samples=40, seed=0).task_names
    root = Path(tempfile.mkdtemp(prefix="tg-add-one-"))
    store = root / "store"
    rows = []
    try:
        previous = None
        for k in range(args.adds + 1):
            wall, summary = one(store, source, names[: t + k], args.samples, args.seed)
            sec = summary["seconds"]
            assert isinstance(sec, dict)
            mode = (summary.get("regroup") or {}).get("mode", "")  # type: ignore[union-attr]
            rows.append({"T": t + k, "wall": wall, "seconds": sec, "mode": mode,
                         "kept": None if previous is None else kept_groups(previous, summary),
                         "counts": summary["counts"]})
            print(f"T={t + k}: wall {wall:.1f} s, flow {sec['total']:.2f} s, {mode}", flush=True)
            previous = summary
    finally:
        from taskgrouping.flows.keeper import stop_shared

        stop_shared(store / "prefect" / "home")
        shutil.rmtree(root, ignore_errors=True)
    full = rows[0]["seconds"]["total"]  # type: ignore[index]
    lines = ["# Adding one task through the CLI", "", f"Machine: {machine_line()}", "",
             f"`builtin:synthetic`, {t} tasks in {groups} planted groups, {args.samples} probe samples, "
             "`taskgrouping run --evaluate none`, one process per run on the store's own (kept) Prefect server. "
             "Ratio: the run's flow total (its stages) over the full run's. Old groups kept: every task of the "
             "previous version has the same old partners.", "",
             "| tasks | run | " + " | ".join(STAGES) + " | flow total | wall | ratio | regroup | old groups kept |",
             "|---:|---|" + "---:|" * (len(STAGES) + 3) + "---|---|"]
    for i, r in enumerate(rows):
        s = r["seconds"]
        assert isinstance(s, dict)
        ratio = "" if i == 0 else f"{100 * s['total'] / full:.1f}%"
        kept = "" if r["kept"] is None else ("yes" if r["kept"] else "no")
        lines.append(f"| {r['T']} | {'full' if i == 0 else '+1'} | "
                     + " | ".join(f"{s.get(k, 0.0):.2f}" for k in STAGES)
                     + f" | {s['total']:.2f} | {r['wall']:.1f} | {ratio} | {r['mode']} | {kept} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print("wrote", write_result("add_one.md", text))


if __name__ == "__main__":
    main()
