"""CPU against CUDA for the probe, the pairwise step and group training (needs a GPU).

Prints a markdown table: seconds on each device and the largest relative difference
of the SWOLA distances.

    python bench/gpu_check.py [--tasks 64] [--samples 1024]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from taskgrouping.data.builtins import digits, synthetic
from taskgrouping.data.dataset import prepare
from taskgrouping.methods.swola import SwolaSettings, distances_from_probes, probe_task
from taskgrouping.models.train import TrainSettings, train_group


def run(data, settings: SwolaSettings, device: str) -> tuple[np.ndarray, float, float]:
    x = data.x[data.probe_idx]
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    probes = [probe_task(x, data.y[data.probe_idx, j], t, settings, 0, device) for j, t in enumerate(data.tasks)]
    t1 = time.perf_counter()
    d = distances_from_probes(probes, x, settings, 0, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    return d, t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1024)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}",
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    print("| data | head | stage | cpu s | cuda s | max rel diff of D |")
    print("|---|---|---|---:|---:|---:|")
    cases = [("digits", prepare(digits(), 0, 512)),
             (f"synthetic {args.tasks} tasks", prepare(synthetic(tasks=args.tasks, groups=8, samples=4000), 0, args.samples))]
    for name, data in cases:
        for head in ("fitted", "shared"):
            s = SwolaSettings(head=head)
            run(data, s, "cuda")  # warm-up (CUDA context, kernels)
            d_cpu, p_cpu, a_cpu = run(data, s, "cpu")
            d_gpu, p_gpu, a_gpu = run(data, s, "cuda")
            off = ~np.eye(len(d_cpu), dtype=bool)
            rel = float(np.max(np.abs(d_cpu[off] - d_gpu[off]) / np.maximum(np.abs(d_cpu[off]), 1e-12)))
            print(f"| {name} | {head} | probe | {p_cpu:.3f} | {p_gpu:.3f} | |")
            print(f"| {name} | {head} | pairwise | {a_cpu:.3f} | {a_gpu:.3f} | {rel:.2e} |")
    data = cases[0][1]
    ts = TrainSettings(max_epochs=50)
    t0 = time.perf_counter()
    _, r_cpu, _ = train_group(data, list(range(len(data.tasks))), ts, 0, "cpu")
    t1 = time.perf_counter()
    _, r_gpu, _ = train_group(data, list(range(len(data.tasks))), ts, 0, "cuda")
    t2 = time.perf_counter()
    loss_cpu = sum(r["test_loss"] for r in r_cpu)
    loss_gpu = sum(r["test_loss"] for r in r_gpu)
    print(f"| digits | all 15 tasks | train (50 epochs max) | {t1 - t0:.2f} | {t2 - t1:.2f} | "
          f"total test loss cpu {loss_cpu:.4f}, cuda {loss_gpu:.4f} |")


if __name__ == "__main__":
    main()
