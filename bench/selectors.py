"""Every selector on the same affinity matrices: ARI against the planted groups, per family.

Families (none tuned on: the graph selector's constants were set on the development
seeds of ``--dev`` and checked here on other seeds):

* ``subsets``: ``builtin:subsets`` (mixed kinds, missing labels, a complement and a
  random task), 14-26 tasks, 3-5 groups;
* ``synthetic``: ``builtin:synthetic`` 16 tasks in 4 groups at four difficulty levels;
* ``unequal``: ``builtin:synthetic:sizes=...`` with very unequal groups (2 beside 12);
* ``shapes``: ``builtin:shapes`` with the ``cnn`` trunk (16 attribute tasks, 4 factors);
* ``mmaml``: ``builtin:mmaml`` with ``swola-meta`` (tasks that share no samples);
* ``large``: ``builtin:synthetic:tasks=1000,groups=100``.

SWOLA's matrices use every default (as ``swola_affinity`` and the flow do), computed
once per problem and cached (``--cache``); each selector then runs with
``--groups auto`` and with the true number of groups. ``--downstream`` trains each
selector's groups on a few problems (one model per group, the flow's training) and
prints the total test loss of the served tasks.

    .venv/bin/python bench/selectors.py [--families subsets,synthetic,...] [--downstream] [--dev]
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file's name is also the standard library's ``selectors`` (which socket, asyncio and
# pyarrow import): put this folder last on the path, so the standard library's comes first
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from common import machine_line, write_result  # noqa: E402

from taskgrouping.methods.base import AffinityMatrix  # noqa: E402

SELECTORS = ("graph", "spectral", "gat", "network")
LEVELS = [{"noise": 0.3, "jitter": 0.35}, {"noise": 1.0, "jitter": 0.8},
          {"noise": 1.0, "jitter": 0.8, "complement": 1, "random": 1}, {"noise": 0.6, "jitter": 0.6, "missing": 0.2}]
UNEQUAL = ["2/12", "2/12/6", "3/10/2/5", "2/2/12", "12/2/4/4", "2/14/3", "6/2/12", "4/2/10/2"]


def problems(dev: bool) -> list[tuple[str, str, str]]:
    """(family, source, method) of every problem, seeds listed here."""
    off = 0 if dev else 1000
    out = []
    for i in range(8 if dev else 12):
        tasks, groups = (14, 18, 22, 26)[i % 4], (3, 4, 5)[i % 3]
        out.append(("subsets", f"builtin:subsets:tasks={tasks},groups={groups},seed={off + 100 + i}", "swola"))
    for i in range(4 if dev else 8):
        opts = ",".join(f"{k}={v}" for k, v in LEVELS[i % 4].items())
        out.append(("synthetic", f"builtin:synthetic:tasks=16,groups=4,{opts},seed={off + 200 + i}", "swola"))
    for i, sizes in enumerate(UNEQUAL[: 6 if dev else 8]):
        level = "noise=0.6,jitter=0.6" if i % 2 else "noise=0.3,jitter=0.35"
        out.append(("unequal", f"builtin:synthetic:sizes={sizes},{level},seed={off + 300 + i}", "swola"))
    for i in range(3 if dev else 4):
        out.append(("shapes", f"builtin:shapes:seed={off + 400 + i}", "swola"))
    for i, modes in enumerate((2, 3, 5) * (1 if dev else 2)):
        out.append(("mmaml", f"builtin:mmaml:modes={modes},seed={off + 500 + i}", "swola-meta"))
    for i in range(0 if dev else 2):
        out.append(("large", f"builtin:synthetic:tasks=1000,groups=100,seed={off + 600 + i}", "swola"))
    return out


def affinity_for(source: str, method: str, cache: Path) -> tuple[AffinityMatrix, dict[str, int], float]:
    """The problem's affinity (every default), its planted groups and the seconds it took (cached)."""
    import hashlib

    import pyarrow.parquet as pq

    key = hashlib.sha1(f"{source}|{method}|v1".encode()).hexdigest()[:16]
    path, meta = cache / f"{key}.parquet", cache / f"{key}.json"
    if path.exists() and meta.exists():
        m = json.loads(meta.read_text())
        return AffinityMatrix.from_table(pq.read_table(path)), m["truth"], m["seconds"]
    from taskgrouping.data.dataset import prepare
    from taskgrouping.data.load import load_dataset

    seed = int(source.rsplit("seed=", 1)[1])
    ds = load_dataset(source)
    t0 = time.perf_counter()
    if method == "swola":
        from taskgrouping.methods.swola import SwolaSettings, swola_affinity

        data = prepare(ds, seed, 512)
        trunk = "cnn" if "shapes" in source else "auto"
        r = data.probe_idx
        aff = swola_affinity(data.x[r], data.y[r], data.tasks, SwolaSettings(trunk=trunk), seed,
                             input_shape=data.shape)
    else:
        from taskgrouping.methods.meta import (
            MetaSettings,
            meta_distances,
            meta_probe,
            meta_trunk,
            task_rows,
        )

        data = prepare(ds, seed, 512)
        s = MetaSettings()
        trunk = meta_trunk(s, seed, data.shape)
        train_rows = np.flatnonzero(data.split == 0)
        probes = []
        for j, name in enumerate(data.task_names):
            rows = task_rows(data.y[:, j], train_rows, name, seed, s.max_samples)
            probes.append(meta_probe(data.x[rows], data.y[rows, j], data.tasks[j], s, seed, data.shape, trunk))
        d = meta_distances(probes)
        aff = AffinityMatrix(data.task_names, 0.5 * (d + d.T) * (1 - np.eye(len(d))), "distance")
    seconds = time.perf_counter() - t0
    truth = {t: int(ds.ground_truth[t]) for t in aff.tasks}
    cache.mkdir(parents=True, exist_ok=True)
    pq.write_table(aff.to_table(), path)
    meta.write_text(json.dumps({"source": source, "method": method, "truth": truth, "seconds": seconds}))
    return aff, truth, seconds


def nn_share(aff: AffinityMatrix, truth: dict[str, int]) -> float:
    """Share of tasks whose nearest neighbour (smallest symmetric D) is in their planted group."""
    d = 0.5 * (aff.values + aff.values.T) + np.diag(np.full(len(aff.tasks), np.inf))
    lab = [truth[t] for t in aff.tasks]
    return float(np.mean([lab[int(np.argmin(d[i]))] == lab[i] for i in range(len(lab))]))


def run_selector(name: str, aff: AffinityMatrix, k: int | None, seed: int) -> tuple[list[list[str]], float]:
    from taskgrouping.selectors import get_selector

    if name == "network" and len(aff.tasks) > 100:
        return [], float("nan")  # the candidate-subset programme is not meant for 1,000 tasks
    if name == "gat" and len(aff.tasks) > 100:
        return [], float("nan")
    t0 = time.perf_counter()
    g = get_selector(name)(aff, k, seed)
    return g.groups, time.perf_counter() - t0


def ari(truth: dict[str, int], groups: list[list[str]], tasks: list[str]) -> float:
    from sklearn.metrics import adjusted_rand_score

    if not groups:
        return float("nan")
    lab = {t: gi for gi, g in enumerate(groups) for t in g}
    return float(adjusted_rand_score([truth[t] for t in tasks], [lab[t] for t in tasks]))


def downstream(source: str, grouped: dict[str, list[list[str]]], seed: int) -> dict[str, float]:
    """Total test loss of each selector's groups (one model per distinct group, the flow's training)."""
    from taskgrouping.data.dataset import prepare
    from taskgrouping.data.load import load_dataset
    from taskgrouping.models.train import TrainSettings, train_group

    data = prepare(load_dataset(source), seed, 512)
    idx = {t: i for i, t in enumerate(data.task_names)}
    losses: dict[frozenset[str], dict[str, float]] = {}
    out = {}
    for name, groups in grouped.items():
        total = 0.0
        for g in groups:
            key = frozenset(g)
            if key not in losses:
                _, rows, _ = train_group(data, [idx[t] for t in g], TrainSettings(), seed)
                losses[key] = {r["task"]: float(r["test_loss"]) for r in rows}
            total += sum(losses[key].values())
        out[name] = total
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="subsets,synthetic,unequal,shapes,mmaml,large")
    ap.add_argument("--selectors", default=",".join(SELECTORS))
    ap.add_argument("--cache", default="/tmp/tg-bench-selectors")
    ap.add_argument("--dev", action="store_true", help="the development seeds (what the constants were set on)")
    ap.add_argument("--downstream", action="store_true", help="also train each selector's groups on a few problems")
    ap.add_argument("--out", default=None, help="write the tables to bench/results/<out>.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    fams = args.families.split(",")
    sels = args.selectors.split(",")
    cache = Path(args.cache)
    rows = []
    lines = ["| family | problem | tasks | true k | NN in group | " + " | ".join(f"{s} auto (k)" for s in sels) + " | "
             + " | ".join(f"{s} true k" for s in sels) + " |", "|---|---|---:|---:|---:|" + "---:|" * (2 * len(sels))]
    print(lines[0], flush=True)
    print(lines[1], flush=True)
    for fam, source, method in problems(args.dev):
        if fam not in fams:
            continue
        aff, truth, secs = affinity_for(source, method, cache)
        seed = int(source.rsplit("seed=", 1)[1])
        true_k = len(set(truth.values()))
        rec = {"family": fam, "source": source, "tasks": len(aff.tasks), "k": true_k, "nn": nn_share(aff, truth),
               "affinity_s": secs}
        auto_groups = {}
        for s in sels:
            g_auto, t_auto = run_selector(s, aff, None, seed)
            g_k, _ = run_selector(s, aff, true_k, seed)
            auto_groups[s] = g_auto
            rec[f"{s}_auto"] = ari(truth, g_auto, aff.tasks)
            rec[f"{s}_k"] = ari(truth, g_k, aff.tasks)
            rec[f"{s}_kauto"] = len(g_auto)
            rec[f"{s}_s"] = t_auto
        rows.append(rec)
        cells = [f"{rec[f'{s}_auto']:.3f} ({rec[f'{s}_kauto']})" for s in sels] + [f"{rec[f'{s}_k']:.3f}" for s in sels]
        lines.append(f"| {fam} | `{source.removeprefix('builtin:')}` | {rec['tasks']} | {true_k} | {rec['nn']:.2f} | "
                     + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
        if args.downstream and fam in ("subsets", "unequal") and len([r for r in rows if r["family"] == fam
                                                                       and "down" in r]) < 3:
            rec["down"] = downstream(source, {s: g for s, g in auto_groups.items() if g}, seed)
    summary = ["", "| family | problems | NN in group | " + " | ".join(f"{s} auto mean (worst)" for s in sels) + " | "
               + " | ".join(f"{s} true k mean (worst)" for s in sels) + " |",
               "|---|---:|---:|" + "---:|" * (2 * len(sels))]
    for fam in fams:
        rs = [r for r in rows if r["family"] == fam]
        if not rs:
            continue
        cells = []
        for suffix in ("auto", "k"):
            for s in sels:
                v = np.array([r[f"{s}_{suffix}"] for r in rs], float)
                cells.append("–" if np.isnan(v).all() else f"{np.nanmean(v):.3f} ({np.nanmin(v):.3f})")
        summary.append(f"| {fam} | {len(rs)} | {np.mean([r['nn'] for r in rs]):.2f} | " + " | ".join(cells) + " |")
    print("\n".join(summary), flush=True)
    lines += summary
    down = [r for r in rows if "down" in r]
    if down:
        ds = sels
        lines += ["", "Downstream: total test loss of the served tasks with each selector's `auto` groups "
                  "(one model per group, the flow's training, seed = the problem's):", "",
                  "| problem | " + " | ".join(ds) + " |", "|---|" + "---:|" * len(ds)]
        for r in down:
            lines.append(f"| `{r['source'].removeprefix('builtin:')}` | "
                         + " | ".join(f"{r['down'].get(s, float('nan')):.3f}" for s in ds) + " |")
        print("\n".join(lines[-len(down) - 2:]), flush=True)
    times = {s: np.nanmean([r[f"{s}_s"] for r in rows if r["tasks"] <= 100]) for s in sels}
    lines += ["", "Mean selection seconds (auto, up to 100 tasks): "
              + ", ".join(f"{s} {v:.2f}" for s, v in times.items())]
    if any(r["tasks"] > 100 for r in rows):
        lines.append("At 1,000 tasks: " + ", ".join(
            f"{s} {np.nanmean([r[f'{s}_s'] for r in rows if r['tasks'] > 100]):.2f} s" for s in sels
            if not np.isnan([r[f"{s}_s"] for r in rows if r["tasks"] > 100]).all()))
    print(lines[-1])
    if args.out:
        head = [f"# Selectors on the same matrices ({'development' if args.dev else 'benchmark'} seeds)", "",
                f"Machine: {machine_line()}", "", "Made by `bench/selectors.py " + " ".join(sys.argv[1:]) + "`. "
                "ARI against the planted groups (random-label tasks count as groups of their own); "
                "`auto` = `--groups auto`; `true k` = the planted number of groups. SWOLA's matrices use every "
                "default; `mmaml` uses `swola-meta`.", ""]
        write_result(args.out, "\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()
