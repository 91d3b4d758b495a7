"""Side by side: every affinity method through the real regroup flow, same data, model and evaluation.

For each dataset and method (and selector): time to affinity (``seconds.probe``, which
holds the joint trainings of TAG and data maps and the single/pair trainings of HOA,
plus ``seconds.affinity``), total test loss of the grouped models against
all-together, single-task and random groups, and the ARI against the planted groups
on synthetic data. One Prefect server; a fresh store per method, so each method's
first run computes everything it needs (HOA's single-task models included) and a
second selector on the same method reuses its affinity.

    .venv/bin/python bench/methods.py [--data builtin:synthetic builtin:digits] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from taskgrouping.config import RunConfig

RUNS = [("swola", "spectral"), ("tag", "spectral"), ("tag", "network"), ("datamaps", "spectral"),
        ("hoa", "spectral"), ("hoa", "network")]


def planted_k_ari(summary: dict, selector: str, seed: int) -> float | None:
    """ARI of the same selector on the run's affinity with k = the number of planted groups."""
    store = Path(summary["store"])
    meta_dirs = list((store / "datasets").glob("*/meta.json"))
    truths = [json.loads(p.read_text()).get("ground_truth") for p in meta_dirs]
    truth = next((t for t in truths if t and set(t) == set(summary["tasks"])), None)
    if truth is None:
        return None
    from sklearn.metrics import adjusted_rand_score

    from taskgrouping.selectors import get_selector
    from taskgrouping.storage import Store

    affinity = Store(store).read_affinity(Path(summary["artifacts"]["affinity"]))
    k = len(set(truth.values()))
    grouping = get_selector(selector)(affinity, k, seed)
    return float(adjusted_rand_score([truth[t] for t in affinity.tasks], grouping.labels(affinity.tasks)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["builtin:synthetic", "builtin:digits"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--groups", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="default: a fresh temporary folder")
    args = ap.parse_args()
    store = args.store or tempfile.mkdtemp(prefix="tg-bench-")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from taskgrouping.flows.regroup import run_regroup
    from taskgrouping.flows.server import prefect_api

    groups = None if args.groups == "auto" else int(args.groups)
    rows = []
    with prefect_api(Path(store) / "prefect" / "home") as url, temporary_settings(updates={PREFECT_API_URL: url}):
        for data in args.data:
            for method, selector in RUNS:
                cfg = RunConfig(data=data, method=method, selector=selector, groups=groups, seed=args.seed,
                                store=str(Path(store) / method), workers=args.workers)
                s = run_regroup(cfg, f"bench-{data.split(':')[1]}-{method}-{selector}")
                sec = s["seconds"]
                m = s["metrics"]
                cached = s["counts"]["probes_computed"] == 0 and s["counts"]["pairs_computed"] == 0
                ari_k = planted_k_ari(s, selector, args.seed)
                rows.append((data, method, selector, sec["probe"] + sec["affinity"], m["grouped"],
                             m["all_together"], m["single_task"], m["random"], s["ground_truth_ari"],
                             len(s["groups"]), sec["total"], cached, ari_k))
                print(f"done {data} {method}/{selector}: {rows[-1][3]:.1f} s to affinity; "
                      f"{json.dumps({k: s[k] for k in ('counts', 'seconds', 'metrics', 'groups')})}", flush=True)
    print()
    print("(reused): the affinity came from the same method's earlier run in this store.")
    print("| data | method | selector | to affinity s | grouped | all together | single task | random "
          "| ARI | ARI at planted k | groups | run s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ari = "" if r[8] is None else f"{r[8]:.3f}"
        ari_k = "" if r[12] is None else f"{r[12]:.3f}"
        affinity_s = "(reused)" if r[11] else f"{r[3]:.1f}"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {affinity_s} | {r[4]:.4f} | {r[5]:.4f} | {r[6]:.4f} | {r[7]:.4f} "
              f"| {ari} | {ari_k} | {r[9]} | {r[10]:.1f} |")


if __name__ == "__main__":
    main()
