"""Does the affinity know the planted groups? k-NN purity on the exact dense distances against the stored lists.

For a sparse run (``taskgrouping run --evaluate none``, one CLI process per problem),
``Q`` random tasks' exact SWOLA rows against every task (from the stored probes, the
dense path's masked L1): the share of each task's true k nearest that are in its planted
group (k = 1, 3, 9), the same share for the stored lists, the median rank of a task's
9th planted partner, recall of the true 10 nearest, and the run's ARI. A selection can
only be as good as the first numbers allow: when the true 9-NN purity is low, keeping
every pair would not help.

Writes ``bench/results/affinity_purity.md`` and ``.jsonl``.

    .venv/bin/python bench/affinity_purity.py [--data builtin:subsets:tasks=1000,groups=100 ...] [--queries 300]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/selectors.py shadows the standard library's selectors (which subprocess imports): this folder last
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from common import machine_line, write_result  # noqa: E402
from scale_sparse import cli  # noqa: E402

DEFAULT = ["builtin:subsets:tasks=1000,groups=100,missing=0.3",
           "builtin:synthetic:tasks=1000,groups=100,missing=0.2"]


def purity(store: str, summary: dict[str, object], queries: int, seed: int) -> dict[str, float]:
    """The purity numbers of one stored run (see the module docstring)."""
    from dataclasses import replace

    import torch

    from taskgrouping import keys
    from taskgrouping.config import RunConfig
    from taskgrouping.methods.swola import masked_l1_cross, weighted_rows
    from taskgrouping.storage import Store
    from taskgrouping.storage.store import StoredProbes

    st = Store(store)
    aff = st.read_affinity(Path(summary["artifacts"]["affinity"]))  # type: ignore[index]
    names = list(aff.tasks)
    cfg = RunConfig.from_dict(summary["settings"])  # type: ignore[arg-type]
    meta = st.read_prepared_meta(summary["dataset_key"])  # type: ignore[arg-type]
    truth = np.array([meta["ground_truth"][t] for t in names])
    fps = dict(zip([t["name"] for t in meta["tasks"]], meta["label_fps"], strict=True))
    data = st.read_prepared(summary["dataset_key"], tasks=[])  # type: ignore[arg-type]
    s = replace(cfg.swola, head_c=summary["head"]["c"])  # type: ignore[index]
    pkeys = list(keys.probe_keys(data.data_key(), fps, names, s, cfg.seed).values())
    e, m = weighted_rows(StoredProbes(st, pkeys), data.x[data.probe_idx], s, cfg.seed)
    q = np.sort(np.random.default_rng(seed).choice(len(names), min(queries, len(names)), replace=False))
    dense = masked_l1_cross(e[torch.as_tensor(q)], m[torch.as_tensor(q)], e, m).numpy()
    dense[np.arange(len(q)), q] = np.inf
    order = np.argsort(dense, axis=1)
    out: dict[str, float] = {}
    for k in (1, 3, 9):
        out[f"true_{k}"] = float(np.mean(truth[order[:, :k]] == truth[q][:, None]))
        out[f"stored_{k}"] = float(np.mean(truth[aff.neighbours[q, :k]] == truth[q][:, None]))
    ninth = [np.flatnonzero(truth[order[r]] == truth[q[r]]) for r in range(len(q))]
    out["rank_9th_partner"] = float(np.median([x[min(8, len(x) - 1)] for x in ninth if len(x)]))
    out["recall10"] = float(np.mean([len(set(order[r, :10]) & set(aff.neighbours[q[r], :10])) / 10
                                     for r in range(len(q))]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=DEFAULT)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    rows = []
    for data in args.data:
        root = tempfile.mkdtemp(prefix="tg-purity-")
        store = str(Path(root) / "store")
        try:
            summary, wall, peak = cli(["--data", data, "--store", store, "--samples", str(args.samples),
                                       "--evaluate", "none", "--pairs", "sparse"])
            row = {"data": data, "T": len(summary["tasks"]), "wall": round(wall, 1),  # type: ignore[arg-type]
                   "ari": summary["ground_truth_ari"], "groups": len(summary["groups"]),  # type: ignore[arg-type]
                   "date": time.strftime("%Y-%m-%d")} | purity(store, summary, args.queries, 0)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_result("affinity_purity.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    lines = ["# Does the affinity know the planted groups? (`bench/affinity_purity.py`)", "",
             f"Machine: {machine_line()}", "",
             "Share of each task's k nearest in its planted group: on the exact dense SWOLA distances "
             f"({args.queries} random tasks against all) and in the stored neighbour lists (`--pairs sparse`).", "",
             "| data | T | true 1 / 3 / 9 | stored 1 / 3 / 9 | 9th planted partner, median rank | recall@10 | "
             "groups | ARI |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['data']}` | {r['T']} | {r['true_1']:.3f} / {r['true_3']:.3f} / {r['true_9']:.3f} | "
                     f"{r['stored_1']:.3f} / {r['stored_3']:.3f} / {r['stored_9']:.3f} | "
                     f"{r['rank_9th_partner']:.0f} | {r['recall10']:.3f} | {r['groups']} | {r['ari']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print("wrote", write_result("affinity_purity.md", text))


if __name__ == "__main__":
    main()
