"""Recall and ARI of the sparse graph: sketch candidates alone against candidates + the rounds.

For each generated problem (``builtin:synthetic`` with 0 or 20% of labels missing,
``builtin:subsets`` with up to 30%, seeds given), in the library: probes, weighted rows,
then :func:`~taskgrouping.methods.sparse.neighbour_affinity` with ``rounds=0`` and with the
default rounds. Recall: of the true 10 nearest of 200 random tasks (their dense rows
against every task), the share in the stored 10. ARI: the graph selector's groups
against the planted ones. Writes ``bench/results/sparse_recall.md`` and ``.jsonl``.

    .venv/bin/python bench/sparse_recall.py [--tasks 1000] [--seeds 1 2]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/selectors.py shadows the standard library's selectors: this folder last
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
from common import machine_line, write_result  # noqa: E402

PROBLEMS = [("synthetic", 0.0), ("synthetic", 0.2), ("subsets", 0.3)]


def measure(family: str, missing: float, t: int, seed: int) -> dict[str, object]:
    """One problem: recall, exact pairs, ARI and groups without and with the rounds."""
    import torch
    from sklearn.metrics import adjusted_rand_score

    from taskgrouping.data.builtins import subsets, synthetic
    from taskgrouping.data.dataset import prepare
    from taskgrouping.methods import sparse as sp
    from taskgrouping.methods.swola import (
        SwolaSettings,
        masked_l1_cross,
        probe_tasks,
        weighted_rows,
    )
    from taskgrouping.selectors.graph import select_graph

    make = synthetic if family == "synthetic" else subsets
    ds = make(tasks=t, groups=t // 10, seed=seed, missing=missing)
    data = prepare(ds, seed, 512)
    x, y = data.x[data.probe_idx], data.y[data.probe_idx]
    s = SwolaSettings()
    e, m = weighted_rows(probe_tasks(x, y, data.tasks, s, seed), x, s, seed)
    n = len(data.tasks)
    flat, norms = e.view(n, -1), sp.sample_norms(e)
    names = [task.name for task in data.tasks]
    truth = [ds.ground_truth[name] for name in names]
    q = np.sort(np.random.default_rng(1).choice(n, 200, replace=False))
    dense = masked_l1_cross(e[torch.as_tensor(q)], m[torch.as_tensor(q)], e, m).numpy()
    dense[np.arange(len(q)), q] = np.inf
    top = np.argsort(dense, axis=1)[:, :10]
    out: dict[str, object] = {"fam": family, "miss": missing, "seed": seed, "T": n}
    for rounds in (0, sp.REFINE_ROUNDS):
        aff, new = sp.neighbour_affinity(names, flat, norms, m, s.lr / s.trunks, seed, rounds=rounds)
        got = aff.neighbours[q, :10]
        rec = float(np.mean([len(set(top[r]) & set(got[r])) / 10 for r in range(len(q))]))
        g = select_graph(aff, None, seed)
        out[f"r{rounds}"] = {"recall": round(rec, 3), "pairs": new["pairs_exact"],
                             "ari": round(adjusted_rand_score(truth, g.labels(names)), 3), "groups": len(g.groups)}
    return out


def render(rows: list[dict[str, object]]) -> str:
    """The markdown table."""
    lines = ["# Sparse graph: sketch candidates alone against candidates + neighbour-of-neighbour rounds", "",
             f"Machine: {machine_line()}", "",
             "Library (`neighbour_affinity`, rounds 0 and 2), 512 probe samples, default SWOLA settings. Recall of the "
             "true 10 nearest of 200 random tasks; ARI of the graph selector against the planted groups.", "",
             "| problem | missing | seed | T | recall: candidates -> + rounds | exact pairs | ARI | groups |",
             "|---|---:|---:|---:|---|---|---|---|"]
    for r in rows:
        a, b = r["r0"], r["r2"]
        lines.append(f"| {r['fam']} | {r['miss']:.0%} | {r['seed']} | {r['T']} | {a['recall']:.3f} -> {b['recall']:.3f} | "  # type: ignore[index]
                     f"{a['pairs']:,} -> {b['pairs']:,} | {a['ari']:.3f} -> {b['ari']:.3f} | "  # type: ignore[index]
                     f"{a['groups']} -> {b['groups']} |")  # type: ignore[index]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--render", action="store_true", help="only write the table from the jsonl")
    args = ap.parse_args()
    path = Path(__file__).resolve().parent / "results" / "sparse_recall.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if args.render else []
    if not args.render:
        import torch

        torch.set_num_threads(2)
        for family, missing in PROBLEMS:
            for seed in args.seeds:
                rows.append(measure(family, missing, args.tasks, seed))
                print(json.dumps(rows[-1]), flush=True)
        write_result("sparse_recall.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    text = render(rows)
    print(text)
    print("wrote", write_result("sparse_recall.md", text))


if __name__ == "__main__":
    main()
