"""Scaling SWOLA to 1,000 tasks: time and memory of each stage, the pairwise step's blocking, adding one task.

Two parts, both on ``builtin:synthetic`` (T tasks in T/10 planted groups, 512 probe samples):

1. **Stages in one process** (the library, no orchestration): prepare, probe (fitted
   head: the joint C's cross-validation over all T tasks, then batched probes), the probe *floor* (one batched forward and backward pass of the
   same trunk per task with a fixed head, timed alone), the pairwise step, spectral
   selection; peak resident memory above the stage's start; the pairwise step at
   several block sizes (its memory bound); and one task added to T (one probe and one
   row of pairs) against the full computation at T.
2. **The flow end to end** (``regroup`` with ``--evaluate none`` on one local Prefect
   server and 2 Dask workers): a fresh store with T tasks, then the same store with
   T + 1 tasks; the run summary's seconds and counts.

Writes ``bench/results/scale.md`` and ``bench/results/scale.png``.

    .venv/bin/python bench/scale.py [--tasks 10 100 500 1000] [--samples 512] [--no-flow]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, prefect_session, timed, write_result  # noqa: E402

from taskgrouping.data.builtins import synthetic  # noqa: E402
from taskgrouping.data.dataset import prepare  # noqa: E402
from taskgrouping.methods.swola import (  # noqa: E402
    SwolaSettings,
    distances_from_probes,
    joint_c,
    probe_task,
    probe_tasks,
)

BATCH = 64  # tasks per probe call, as the flow's probe steps


def _groups(t: int) -> int:
    return max(2, t // 10)


def library_stages(t: int, samples: int, seed: int, blocks: list[int]) -> dict[str, object]:
    """Every stage of SWOLA in this process for T = t (+1 task for the incremental row)."""
    from sklearn.metrics import adjusted_rand_score

    from taskgrouping.methods.swola import affinity_from_distances
    from taskgrouping.selectors import get_selector

    out: dict[str, object] = {"T": t}
    ds = synthetic(tasks=t + 1, groups=_groups(t), seed=seed)
    with timed() as m:
        data = prepare(ds, seed, samples)
    out["prepare"] = m
    x, y = data.x[data.probe_idx], data.y[data.probe_idx]
    s = SwolaSettings()
    with timed() as m:  # as the flow: one C for all T tasks (the shared head CV), then batched probes
        s = replace(s, head_c=joint_c(x, y[:, :t], data.tasks[:t], s, seed))
        probes = []
        for i in range(0, t, BATCH):
            probes += probe_tasks(x, y[:, i : min(t, i + BATCH)], data.tasks[i : min(t, i + BATCH)], s, seed)
    out["probe"] = m
    shared = SwolaSettings(head="shared")
    with timed() as m:  # the floor: one forward + backward of the trunk per task, nothing else
        for j in range(t):
            probe_task(x, y[:, j], data.tasks[j], shared, seed)
    out["probe_floor"] = m
    with timed() as m:
        d = distances_from_probes(probes, x, s, seed)
    out["pairs"] = m
    aff = affinity_from_distances([tk.name for tk in data.tasks[:t]], d)
    truth = [ds.ground_truth[n] for n in aff.tasks]
    with timed() as m:
        auto = get_selector("spectral")(aff, None, seed)
    out["select"] = m
    planted = get_selector("spectral")(aff, _groups(t), seed)
    out["ari_auto"] = adjusted_rand_score(truth, auto.labels(aff.tasks))
    out["k_auto"] = len(auto.groups)
    out["ari_planted_k"] = adjusted_rand_score(truth, planted.labels(aff.tasks))
    # one task more: its probe, and its row of pairs against all T + 1
    with timed() as m:
        new = probe_tasks(x, y[:, t : t + 1], data.tasks[t : t + 1], s, seed)
        distances_from_probes(probes + new, x, s, seed, rows=[t])
    out["add_one"] = m
    out["block"] = {}
    for b in blocks:
        with timed() as m:
            distances_from_probes(probes, x, SwolaSettings(block=b), seed)
        out["block"][b] = m  # type: ignore[index]
    out["probe_mib"] = sum(p.deltas.nbytes + p.labelled.nbytes for p in probes) / 2**20
    return out


def flow_runs(tasks: list[int], samples: int, seed: int, workers: int) -> list[dict[str, object]]:
    """The regroup flow (evaluate none): T tasks on a fresh store, then T + 1 on the same store."""
    from dataclasses import replace

    from taskgrouping.config import RunConfig
    from taskgrouping.flows.regroup import run_regroup

    rows = []
    root = Path(tempfile.mkdtemp(prefix="tg-scale-"))
    with prefect_session(root / "prefect-home"):
        for t in tasks:
            source = f"builtin:synthetic:tasks={t + 1},groups={_groups(t)}"
            names = synthetic(tasks=t + 1, groups=_groups(t), samples=40, seed=0).task_names
            cfg = RunConfig(data=source, tasks=",".join(names[:t]), samples=samples, seed=seed,
                            store=str(root / f"T{t}"), workers=workers, evaluate="none")
            for label, c in (("full", cfg), ("+1 task", replace(cfg, tasks=None))):
                t0 = time.perf_counter()
                summary = run_regroup(c, f"scale-{t}-{label[0]}")
                wall = time.perf_counter() - t0
                rows.append({"T": t, "run": label, "wall": wall, "seconds": summary["seconds"],
                             "counts": summary["counts"], "ari": summary["ground_truth_ari"]})
                print(f"flow T={t} {label}: {wall:.1f} s {summary['seconds']} {summary['counts']}", flush=True)
    return rows


def _fmt(m: object) -> str:
    assert isinstance(m, dict)
    return f"{m['s']:.2f} s / {m['extra_mib']:.0f} MiB"


def render(lib: list[dict[str, object]], flows: list[dict[str, object]], blocks: list[int]) -> str:
    lines = ["# SWOLA at scale", "", f"Machine: {machine_line()}", "",
             "## Stages in one process (library, no orchestration)", "",
             "Each cell: seconds / peak resident memory above the stage's start. `probe`: fitted heads, "
             f"{BATCH} tasks per call; `floor`: one forward + backward pass of the same trunk per task with a "
             "fixed head, timed alone; `+1 task`: one probe and its row of T + 1 pairs.", "",
             "| T | prepare | probe | probe floor | probe / floor | pairs | select (spectral, auto k) | "
             "+1 task | +1 / (probe + pairs) | probes in memory | ARI auto (k) | ARI planted k |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in lib:
        p, f, pr, add = r["probe"], r["probe_floor"], r["pairs"], r["add_one"]
        assert isinstance(p, dict) and isinstance(f, dict) and isinstance(pr, dict) and isinstance(add, dict)
        lines.append(
            f"| {r['T']} | {_fmt(r['prepare'])} | {_fmt(p)} | {_fmt(f)} | {p['s'] / f['s']:.1f}x | {_fmt(pr)} | "
            f"{_fmt(r['select'])} | {_fmt(add)} | {100 * add['s'] / (p['s'] + pr['s']):.2f}% | "
            f"{r['probe_mib']:.0f} MiB | {r['ari_auto']:.3f} ({r['k_auto']}) | {r['ari_planted_k']:.3f} |")
    lines += ["", "## The pairwise step's memory bound (blocking)", "",
              "Peak resident memory above the step's start and its time, by tasks per block "
              "(extra memory is O(block x n x hidden) on top of the probes themselves).", "",
              "| T | " + " | ".join(f"block {b}" for b in blocks) + " |", "|---:|" + "---:|" * len(blocks)]
    for r in lib:
        bl = r["block"]
        assert isinstance(bl, dict)
        if bl:
            lines.append(f"| {r['T']} | " + " | ".join(_fmt(bl[b]) for b in blocks) + " |")
    if flows:
        lines += ["", "## The flow end to end (`taskgrouping run --evaluate none`, 2 Dask workers)", "",
                  "One local Prefect server for all runs (its start is not counted). `+1 task`: the same store "
                  "with one more task; ratio = its flow total over the full run's.", "",
                  "| T | run | sample | probe | affinity | select | report | flow total | wall | probes computed / reused "
                  "| pairs computed / reused | ratio | ARI (auto k) |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
        full_total: dict[object, float] = {}
        for r in flows:
            s, c = r["seconds"], r["counts"]
            assert isinstance(s, dict) and isinstance(c, dict)
            if r["run"] == "full":
                full_total[r["T"]] = s["total"]
            ratio = f"{100 * s['total'] / full_total[r['T']]:.1f}%" if r["run"] != "full" else ""
            lines.append(
                f"| {r['T']} | {r['run']} | {s['sample']:.2f} | {s['probe']:.2f} | {s['affinity']:.2f} | "
                f"{s['select']:.2f} | {s.get('report', 0):.2f} | {s['total']:.2f} | {r['wall']:.1f} | "
                f"{c['probes_computed']} / {c['probes_reused']} | {c['pairs_computed']} / {c['pairs_reused']} | "
                f"{ratio} | {r['ari']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(lib: list[dict[str, object]], flows: list[dict[str, object]]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [r["T"] for r in lib]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("probe", "probe (fitted head)"), ("probe_floor", "probe floor"), ("pairs", "pairs"),
                       ("add_one", "+1 task (probe + row)")):
        ax.plot(ts, [r[key]["s"] for r in lib], marker="o", label=label)  # type: ignore[index]
    full = [r for r in flows if r["run"] == "full"]
    if full:
        ax.plot([r["T"] for r in full], [r["seconds"]["total"] for r in full], marker="s", ls="--",  # type: ignore[index]
                label="flow end to end")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tasks T")
    ax.set_ylabel("seconds")
    ax.set_title("SWOLA time against the number of tasks (512 probe samples)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, nargs="+", default=[10, 100, 500, 1000])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--blocks", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--no-flow", action="store_true", help="only the in-process stages")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    lib = []
    for t in args.tasks:  # blocking is measured at the largest T only (where memory matters)
        lib.append(library_stages(t, args.samples, args.seed, args.blocks if t == max(args.tasks) else []))
        print(f"library T={t}: " + ", ".join(f"{k} {v['s']:.2f} s" for k, v in lib[-1].items()
                                            if isinstance(v, dict) and "s" in v), flush=True)
    flows = [] if args.no_flow else flow_runs(args.tasks, args.samples, args.seed, args.workers)
    text = render(lib, flows, args.blocks)
    print(text)
    print("wrote", write_result("scale.md", text), write_result("scale.png", plot(lib, flows)))


if __name__ == "__main__":
    main()
