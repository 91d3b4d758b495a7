"""The probe's head fit: one batched solve with one jointly chosen C, against the per-task CV fit it replaced.

On ``builtin:subsets`` (hidden nonlinear features of feature subsets, readouts that vary
within a group, mixed task kinds, missing labels, a complement and a random task), a
family the defaults were not tuned on: 24 problems (seeds 0-23; 12/18/24 tasks,
3/4/5 groups, noise 0.3/0.6/1.0, mixed or binary kinds, cycled). Per problem and head
variant: ARI of spectral selection against the planted groups (k given: planted
groups plus the random task; and k automatic), and the probe's seconds.

Variants:

* ``per-task CV`` - scikit-learn ``LogisticRegressionCV`` / ``RidgeCV`` per task (the
  default before issue 14);
* ``joint`` - the new default: one C for all tasks from a shared CV, batched solve;
* ``per-task C, batched`` - the batched solve, but each task at the C its own CV row
  prefers (isolates "one C for all" from the change of solver);
* ``shared`` - the seeded shared head (no fit).

Writes ``bench/results/head_fit.md``.

    .venv/bin/python bench/head_fit.py [--problems 24] [--samples 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, write_result  # noqa: E402

from taskgrouping.data.builtins import subsets  # noqa: E402
from taskgrouping.data.dataset import prepare  # noqa: E402
from taskgrouping.methods.heads import choose_c  # noqa: E402
from taskgrouping.methods.swola import (  # noqa: E402
    SwolaSettings,
    affinity_from_distances,
    distances_from_probes,
    head_cv,
    probe_tasks,
)
from taskgrouping.selectors import get_selector  # noqa: E402

VARIANTS = ("per-task CV", "joint", "per-task C, batched", "shared")


def problem(i: int) -> dict[str, float | int]:
    return {"tasks": (12, 18, 24)[i % 3], "groups": (3, 4, 5)[(i // 3) % 3], "noise": (0.3, 0.6, 1.0)[(i // 2) % 3],
            "mixed": (1, 0)[(i // 9) % 2], "seed": i}


def probes_for(variant: str, x: np.ndarray, y: np.ndarray, tasks: list, seed: int) -> tuple[list, dict]:
    """The probes of one variant and what it chose."""
    base = SwolaSettings()
    if variant == "per-task CV":
        return probe_tasks(x, y, tasks, replace(base, head_fit="per-task"), seed), {}
    if variant == "shared":
        return probe_tasks(x, y, tasks, replace(base, head="shared"), seed), {}
    losses = head_cv(x, y, tasks, base, seed)
    if variant == "joint":
        c = choose_c(losses, base.head_cs)
        return probe_tasks(x, y, tasks, replace(base, head_c=c), seed), {"c": c}
    own = [choose_c(losses[b : b + 1], base.head_cs) for b in range(len(tasks))]
    probes: list = [None] * len(tasks)
    for c in sorted(set(own)):  # a probe depends only on its own task given its C
        idx = [b for b in range(len(tasks)) if own[b] == c]
        for b, p in zip(idx, probe_tasks(x, y[:, idx], [tasks[b] for b in idx], replace(base, head_c=c), seed),
                        strict=True):
            probes[b] = p
    return probes, {"own_cs": own}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--samples", type=int, default=512)
    args = ap.parse_args()
    rows: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    spread: list[tuple[int, ...]] = []  # distinct own Cs, misplaced tasks, of which C != joint, tasks, C != joint
    for i in range(args.problems):
        opts = problem(i)
        ds = subsets(samples=2000, **opts)  # type: ignore[arg-type]
        data = prepare(ds, int(opts["seed"]), args.samples)
        x, y = data.x[data.probe_idx], data.y[data.probe_idx]
        truth = [ds.ground_truth[t.name] for t in data.tasks]
        k = int(opts["groups"]) + 1  # the random task is its own group
        chosen: dict[str, dict] = {}
        labels: dict[str, list[int]] = {}
        for v in VARIANTS:
            t0 = time.perf_counter()
            probes, info = probes_for(v, x, y, data.tasks, int(opts["seed"]))
            secs = time.perf_counter() - t0
            chosen[v] = info
            d = distances_from_probes(probes, x, SwolaSettings(), int(opts["seed"]))
            aff = affinity_from_distances([t.name for t in data.tasks], d)
            given = get_selector("spectral")(aff, k, int(opts["seed"])).labels(aff.tasks)
            auto = get_selector("spectral")(aff, None, int(opts["seed"])).labels(aff.tasks)
            labels[v] = given
            rows[v].append((adjusted_rand_score(truth, given), adjusted_rand_score(truth, auto), secs))
        own, joint = chosen["per-task C, batched"]["own_cs"], chosen["joint"]["c"]
        misplaced = _misplaced(truth, labels["per-task C, batched"])
        spread.append((len(set(own)), len(misplaced), sum(own[b] != joint for b in misplaced), len(own),
                       sum(c != joint for c in own)))
        print(f"problem {i} {opts}: " + ", ".join(f"{v} {rows[v][-1][0]:.3f}" for v in VARIANTS)
              + f"; joint C {joint}, own Cs {sorted(set(own))}", flush=True)
    write_result("head_fit.md", render(rows, spread, args))


def _misplaced(truth: list[int], found: list[int]) -> list[int]:
    """Tasks outside the planted group that the majority of their found group comes from."""
    out = []
    for b, g in enumerate(found):
        members = [truth[j] for j in range(len(found)) if found[j] == g]
        major = max(set(members), key=members.count)
        if truth[b] != major:
            out.append(b)
    return out


def render(rows: dict[str, list[tuple[float, float, float]]], spread: list[tuple[int, ...]],
           args: argparse.Namespace) -> str:
    lines = ["# The probe's head fit on a generated family it was not tuned on", "", f"Machine: {machine_line()}", "",
             f"`builtin:subsets`, {args.problems} problems (seeds 0-{args.problems - 1}; 12/18/24 tasks, 3/4/5 "
             "groups, noise 0.3/0.6/1.0, mixed or binary kinds; every problem has missing labels, a complement and "
             f"a random task), {args.samples} probe samples, 1 MLP trunk, spectral selection. Made by "
             "`bench/head_fit.py`.", "",
             "| head | ARI k given (mean) | worst | ARI auto k (mean) | worst | probe s (mean) |",
             "|---|---:|---:|---:|---:|---:|"]
    for v, r in rows.items():
        a = np.array(r)
        lines.append(f"| {v} | {a[:, 0].mean():.3f} | {a[:, 0].min():.3f} | {a[:, 1].mean():.3f} | "
                     f"{a[:, 1].min():.3f} | {a[:, 2].mean():.3f} |")
    s = np.array(spread)
    lines += ["", f"Per-task C (each task's own CV argmin): {s[:, 0].mean():.1f} distinct C values per problem on "
              f"average; {s[:, 1].sum()} tasks misplaced in all with per-task Cs, of which {s[:, 2].sum()} "
              f"({100 * s[:, 2].sum() / max(1, s[:, 1].sum()):.0f}%) had a C other than the joint one, against "
              f"{100 * s[:, 4].sum() / s[:, 3].sum():.0f}% of all tasks."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
