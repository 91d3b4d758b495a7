"""SWOLA with an image trunk on builtin:shapes: planted-factor recovery, and SWOLA against TAG.

Part 1 (``--seeds``): for each seed, SWOLA probes (default ``cnn`` trunk, 512 probe samples,
exact per-sample gradients) of the 16 attribute tasks, spectral selection with k automatic
and k = 4 (the number of factors); ARI against the planted factors and the share of tasks
whose nearest neighbour (smallest D) reads the same factor. Also the Cauchy sketch's error
against the exact D (k = 128) on the same probes.

Part 2 (``--scaling``): time to affinity of SWOLA and of TAG (one joint training with the
lookahead every 10 steps, the same trunk) at 12, 24 and 48 tasks, each in this process
after a warm-up, with grouped test loss side by side; and the probe's bytes per task.

    .venv/bin/python bench/shapes.py [--seeds 3] [--scaling] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import machine_line, timed, write_result
from sklearn.metrics import adjusted_rand_score

from taskgrouping.data.builtins import shapes
from taskgrouping.data.dataset import prepare
from taskgrouping.methods.swola import SwolaSettings, distances_from_probes, probe_tasks
from taskgrouping.methods.tag import TagSettings, tag_affinity
from taskgrouping.models.train import TrainSettings, train_group
from taskgrouping.selectors import get_selector


def swola(data, settings, seed, device):
    rows = data.probe_idx
    probes = probe_tasks(data.x[rows], data.y[rows], data.tasks, settings, seed, device, data.shape)
    return probes, distances_from_probes(probes, data.x[rows], settings, seed, device=device)


def quality(args) -> list[str]:
    lines = ["| seed | ARI k auto (k) | ARI k = 4 | nearest neighbour same factor | probe s | sketch k=128: RMS rel. error, Spearman |",
             "|---:|---:|---:|---:|---:|---:|"]
    from scipy.stats import spearmanr

    from taskgrouping.methods.base import AffinityMatrix

    aris, aris4, nns = [], [], []
    for seed in range(args.seeds):
        ds = shapes(seed=seed)
        data = prepare(ds, seed, 512)
        truth = [ds.ground_truth[t] for t in ds.task_names]
        with timed() as t:
            probes, d = swola(data, SwolaSettings(trunk=args.trunk), seed, args.device)
        aff = AffinityMatrix(ds.task_names, 0.5 * (d + d.T) * (1 - np.eye(len(d))), "distance")
        auto = get_selector("spectral")(aff, None, seed)
        four = get_selector("spectral")(aff, 4, seed)
        ari = adjusted_rand_score(truth, auto.labels(ds.task_names))
        ari4 = adjusted_rand_score(truth, four.labels(ds.task_names))
        dd = aff.values + np.diag(np.full(len(d), np.inf))
        nn = float(np.mean([truth[int(np.argmin(dd[i]))] == truth[i] for i in range(len(d))]))
        _, ds_sketch = swola(data, SwolaSettings(trunk=args.trunk, sketch="128"), seed, args.device)
        off = ~np.eye(len(d), dtype=bool)
        rel = (ds_sketch[off] - d[off]) / d[off]
        rms, rho = float(np.sqrt(np.mean(rel**2))), float(spearmanr(ds_sketch[off], d[off]).statistic)
        aris.append(ari)
        aris4.append(ari4)
        nns.append(nn)
        lines.append(f"| {seed} | {ari:.3f} ({len(auto.groups)}) | {ari4:.3f} | {nn:.0%} | {t['s']:.1f} | "
                     f"{rms:.2%}, {rho:.3f} |")
        print(lines[-1], flush=True)
    lines.append(f"| mean | {np.mean(aris):.3f} | {np.mean(aris4):.3f} | {np.mean(nns):.0%} | | |")
    p = probes[0]
    lines += ["", f"Probe per task: {p.deltas.nbytes / 2**20:.1f} MiB ({p.kind}, {p.deltas.shape[1]} samples x "
              f"{p.deltas.shape[2]} numbers); theory for the sketch: (pi/2)/sqrt(128 x 512) = "
              f"{(np.pi / 2) / np.sqrt(128 * 512):.2%}."]
    return lines


def scaling(args) -> list[str]:
    lines = ["| tasks | swola s | tag s | tag / swola | grouped test loss swola | grouped test loss tag |",
             "|---:|---:|---:|---:|---:|---:|"]
    train = TrainSettings(trunk=args.trunk, max_epochs=args.epochs)
    warm = prepare(shapes(samples=200, per=1), 0, 64)
    swola(warm, SwolaSettings(trunk=args.trunk), 0, args.device)
    for per in (3, 6, 12):
        ds = shapes(per=per, seed=0)
        data = prepare(ds, 0, 512)
        with timed() as ts:
            _, d = swola(data, SwolaSettings(trunk=args.trunk), 0, args.device)
        with timed() as tt:
            gains, _ = tag_affinity(data, TagSettings(), train, 0, args.device)
        losses = []
        from taskgrouping.methods.base import AffinityMatrix

        for aff in (AffinityMatrix(ds.task_names, 0.5 * (d + d.T) * (1 - np.eye(len(d))), "distance"), gains):
            grouping = get_selector("spectral")(aff, 4, 0)
            total = 0.0
            for g in grouping.groups:
                _, results, _ = train_group(data, [ds.task_names.index(t) for t in g], train, 0, args.device)
                total += sum(r["test_loss"] for r in results)
            losses.append(total)
        lines.append(f"| {len(ds.tasks)} | {ts['s']:.1f} | {tt['s']:.1f} | {tt['s'] / ts['s']:.1f}x | "
                     f"{losses[0]:.3f} | {losses[1]:.3f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trunk", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--epochs", type=int, default=30, help="max epochs of TAG's joint training and the group models")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    out = [f"# SWOLA on builtin:shapes (trunk {args.trunk})", "", machine_line(), ""]
    out += quality(args)
    if args.scaling:
        out += ["", f"## SWOLA against TAG, time to affinity (max {args.epochs} epochs, k = 4 for both)", ""]
        out += scaling(args)
    out += ["", f"Total {time.perf_counter() - t0:.0f} s."]
    print(write_result(f"shapes_{args.trunk}.md", "\n".join(out) + "\n"))


if __name__ == "__main__":
    main()
