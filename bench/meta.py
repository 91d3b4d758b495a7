"""Tasks that share no samples (``builtin:mmaml``): three probes, then one meta-initialisation per group.

For MMAML's 3- and 5-mode sets, 5 data seeds x 3 network seeds (the run's seed: trunk,
split, meta-training draws), as ``taskgrouping run --method swola-meta --training meta``
computes them (the library calls of its steps, in this process):

1. **Probes**: ``signature`` (the default), ``gradients`` (per-sample gradient energy
   distance) and ``adapted`` (TSA-style adapted parameters), each task on its own
   training rows; spectral selection with k = the number of modes; ARI against the
   planted families; seconds for the probes and the distances.
2. **Downstream**, on the signature's groups: one first-order MAML init for all tasks,
   one per found group, one per random partition of the same sizes (3 partitions,
   averaged), one per planted family; 20 held-out tasks per family adapt on K = 5 and
   10 support points from the init they pick by leave-one-out; mean query MSE (raw
   targets). Intervals are over the 15 paired runs (each run's mean over its held-out
   tasks); ``wins`` counts runs in which the groups' inits have the lower loss.

Writes ``bench/results/meta.md``.

    .venv/bin/python bench/meta.py [--modes 3 5] [--data-seeds 5] [--net-seeds 3] [--outer-steps 1000]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/selectors.py shadows the standard library's selectors (which multiprocessing imports): this folder last
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
from common import machine_line, write_result  # noqa: E402

PROBES = ("signature", "gradients", "adapted")
SETTINGS = ("all", "grouped", "random", "planted")


def one_run(modes: int, data_seed: int, net_seed: int, outer_steps: int) -> dict[str, object]:
    """Every probe's ARI and seconds, and the downstream settings, for one data and network seed."""
    import torch
    from sklearn.metrics import adjusted_rand_score

    torch.set_num_threads(1)
    from taskgrouping.config import RunConfig
    from taskgrouping.data.dataset import prepare
    from taskgrouping.data.load import load_dataset
    from taskgrouping.methods.base import AffinityMatrix
    from taskgrouping.methods.meta import (
        MetaTrainSettings,
        meta_distances,
        meta_probe,
        meta_training_report,
        meta_trunk,
        task_rows,
    )
    from taskgrouping.selectors import SelectSettings, select_groups

    source = f"builtin:mmaml:modes={modes},seed={data_seed}"
    cfg = RunConfig(data=source, seed=net_seed, training="meta", method="swola-meta",
                    meta_train=MetaTrainSettings(outer_steps=outer_steps), store="/tmp/tg-bench-meta-unused")
    data = prepare(load_dataset(source), net_seed, cfg.samples)
    names = data.task_names
    truth = [data.ground_truth[n] for n in names]
    train_rows = np.flatnonzero(data.split == 0)
    out: dict[str, object] = {"modes": modes, "data_seed": data_seed, "net_seed": net_seed}
    groups_sig: list[list[str]] = []
    for probe in PROBES:
        s = replace(cfg.meta, probe=probe)
        t0 = time.perf_counter()
        trunk = meta_trunk(s, net_seed, data.shape)
        probes = []
        for j, name in enumerate(names):
            rows = task_rows(data.y[:, j], train_rows, name, net_seed, s.max_samples)
            probes.append(meta_probe(data.x[rows], data.y[rows, j], data.tasks[j], s, net_seed, data.shape, trunk))
        d = meta_distances(probes)
        seconds = time.perf_counter() - t0
        aff = AffinityMatrix(names, 0.5 * (d + d.T), "distance")
        sel = select_groups(aff, modes, "spectral", SelectSettings(), net_seed)
        label = {t: i for i, g in enumerate(sel["groups"]) for t in g}  # type: ignore[attr-defined]
        out[f"ari_{probe}"] = float(adjusted_rand_score(truth, [label[n] for n in names]))
        out[f"seconds_{probe}"] = seconds
        if probe == "signature":
            groups_sig = [list(g) for g in sel["groups"]]  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    res = meta_training_report(cfg, data, groups_sig)
    out["meta_seconds"] = time.perf_counter() - t0
    out["meta"] = {name: {k: v["mean"] for k, v in per.items()}  # type: ignore[union-attr]
                   for name, per in res["settings"].items()}  # type: ignore[union-attr]
    out["verdict"] = res["verdict"]["pays"]  # type: ignore[index]
    return out


def _ci(v: list[float]) -> str:
    from taskgrouping.methods.meta import mean_interval

    m, lo, hi = mean_interval(np.asarray(v))
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def _diff(v: list[float]) -> str:
    from taskgrouping.methods.meta import mean_interval

    m, lo, hi = mean_interval(np.asarray(v))
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def render(runs: list[dict[str, object]], outer_steps: int) -> str:
    lines = ["# Tasks that share no samples: `builtin:mmaml`", "", machine_line(), "",
             f"{len({(r['data_seed'], r['net_seed']) for r in runs}) } runs per mode set (data seeds x network "
             f"seeds); FOMAML {outer_steps} outer steps per init.", "",
             "## ARI of each probe (spectral, k = modes)", "",
             "| modes | probe | ARI mean | ARI min | probe + distance s (per run) |", "|---:|---|---:|---:|---:|"]
    for modes in sorted({int(r["modes"]) for r in runs}):  # type: ignore[call-overload]
        rs = [r for r in runs if r["modes"] == modes]
        for p in PROBES:
            a = [float(r[f"ari_{p}"]) for r in rs]  # type: ignore[arg-type]
            s = [float(r[f"seconds_{p}"]) for r in rs]  # type: ignore[arg-type]
            lines.append(f"| {modes} | {p} | {np.mean(a):.3f} | {np.min(a):.3f} | {np.mean(s):.2f} |")
    lines += ["", "## One init per group (signature groups) against the other settings", "",
              "Mean query MSE over the runs (each run: its mean over 20 held-out tasks per family), 95% interval "
              "over runs; groups minus each setting paired by run; wins = runs where the groups' inits are lower.",
              "", "| modes | K | setting | query MSE | groups minus it | wins |", "|---:|---:|---|---:|---:|---:|"]
    for modes in sorted({int(r["modes"]) for r in runs}):  # type: ignore[call-overload]
        rs = [r for r in runs if r["modes"] == modes]
        for k in ("5", "10"):
            for name in SETTINGS:
                v = [float(r["meta"][name][k]) for r in rs]  # type: ignore[index]
                g = [float(r["meta"]["grouped"][k]) for r in rs]  # type: ignore[index]
                diff = "" if name == "grouped" else _diff([a - b for a, b in zip(g, v, strict=True)])
                wins = "" if name == "grouped" else f"{sum(a < b for a, b in zip(g, v, strict=True))}/{len(rs)}"
                lines.append(f"| {modes} | {k} | {name} | {_ci(v)} | {diff} | {wins} |")
        pays = sum(r["verdict"] == "yes" for r in rs)
        secs = np.mean([float(r["meta_seconds"]) for r in rs])  # type: ignore[arg-type]
        lines += [f"| {modes} | | verdict per run: grouping pays in {pays}/{len(rs)}; meta-training + evaluation "
                  f"{secs:.0f} s per run | | |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--data-seeds", type=int, default=5)
    ap.add_argument("--net-seeds", type=int, default=3)
    ap.add_argument("--outer-steps", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    jobs = [(m, d, n, args.outer_steps) for m in args.modes for d in range(args.data_seeds)
            for n in range(args.net_seeds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = []
        for r in pool.map(one_run, *zip(*jobs, strict=True)):
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "meta"},
                  flush=True)
            runs.append(r)
    text = render(runs, args.outer_steps)
    print(text)
    print(write_result("meta.md", text))


if __name__ == "__main__":
    main()
