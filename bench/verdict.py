"""How often the verdict agrees with the test ranking: the old rule against the selection split and repeats.

For each data set and seed: SWOLA groups (library, spectral, auto k), then every
setting (grouped, all_together, single_task, random) trained ``--repeats`` times with
derived seeds, exactly as the flow trains them (``train_group``, the same splits).
From the same models, three rules choose a setting:

* ``before``: the lowest total early-stopping validation loss of one training (what
  the tool did before the selection split: the digits demo then recommended
  single_task while it was worse on test);
* ``after, R=1``: the verdict (methods.md section 7) on the selection split from one
  training, what ``taskgrouping run`` does by default;
* ``after, R``: the verdict from all repeats.

The truth is the test ranking averaged over all repeats. A choice *agrees* when it is
the test-best setting, is *acceptable* when its paired test difference from the
test-best cannot be told from 0 (95%), and its *regret* is its test loss over the
best one's. Controls are never candidates. Writes ``bench/results/verdict.md``.

    python bench/verdict.py [--seeds 3] [--repeats 3] [--workers 2] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/selectors.py shadows the standard library's selectors (which multiprocessing imports): this folder last
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from common import machine_line, write_result  # noqa: E402

CASES = [
    # name, data spec (with {seed} for the generator's seed), trunk width
    ("digits", "builtin:digits", 64),
    ("synthetic", "builtin:synthetic:seed={seed}", 64),
    ("synthetic small trunk", "builtin:synthetic:samples=800,seed={seed}", 16),
    ("synthetic 24 tasks, 3 groups", "builtin:synthetic:tasks=24,groups=3,samples=1200,seed={seed}", 32),
    ("unrelated tasks", "builtin:synthetic:tasks=8,groups=8,samples=1200,seed={seed}", 32),
]

_DATA: dict[str, Any] = {}


def _init(spec: str, seed: int) -> None:
    import torch

    from taskgrouping.data.dataset import prepare
    from taskgrouping.data.load import load_dataset

    torch.set_num_threads(1)
    _DATA["data"] = prepare(load_dataset(spec), seed, 512)


def _train(job: tuple[list[int], dict[str, Any], int]) -> tuple[list[dict[str, Any]], Any, dict[str, int]]:
    from taskgrouping.models.train import TrainSettings, train_group

    members, settings, seed = job
    _, results, info = train_group(_DATA["data"], members, TrainSettings(**settings), seed)
    return results, info["heldout"], {"parameters": info["parameters"], "flops": info["flops"]}


def one_case(spec: str, hidden: int, seed: int, repeats: int, workers: int) -> dict[str, Any]:
    """Groups, then every setting R times; the three rules' choices against the test ranking."""
    from taskgrouping.api import TaskGrouper
    from taskgrouping.data.load import load_dataset
    from taskgrouping.models.evaluate import CONTROLS, evaluation_jobs, repeat_seed, setting_totals
    from taskgrouping.models.verdict import analyse, difference

    ds = load_dataset(spec)
    names = ds.task_names
    t0 = time.perf_counter()
    tg = TaskGrouper(hidden=hidden, random_state=seed).fit(ds.features, {t: ds.labels[:, j] for j, t in enumerate(names)})
    group_s = time.perf_counter() - t0
    jobs: dict[str, list[Any]] = {}
    for r in range(repeats):
        for setting, sj in evaluation_jobs(names, tg.groups_, tg.served_, seed, repeat=r).items():
            jobs.setdefault(setting, []).extend(sj)
    unique: dict[tuple[tuple[int, ...], int], None] = {}
    for sj in jobs.values():
        for j in sj:
            unique[(tuple(sorted(names.index(m) for m in j.members)), repeat_seed(seed, j.repeat))] = None
    settings = {"hidden": hidden}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(spec, seed)) as pool:
        outs = dict(zip(unique, pool.map(_train, [(list(m), settings, s) for m, s in unique]), strict=True))
    train_s = time.perf_counter() - t0
    store = {f"{m}|{s}": out for (m, s), out in outs.items()}

    def entries(max_repeat: int) -> dict[str, list[dict[str, Any]]]:
        res: dict[str, list[dict[str, Any]]] = {}
        for setting, sj in jobs.items():
            for j in sj:
                if j.repeat >= max_repeat:
                    continue
                key = f"{tuple(sorted(names.index(m) for m in j.members))}|{repeat_seed(seed, j.repeat)}"
                results, _, cost = store[key]
                res.setdefault(setting, []).append({"key": key, "serves": list(j.serves), "repeat": j.repeat,
                                                    "cost": cost, "results": [x for x in results if x["task"] in j.serves]})
        return res

    def read(key: str) -> Any:
        return store[key][1]

    full = analyse(entries(repeats), read, CONTROLS)
    one = analyse(entries(1), read, CONTROLS)
    rows = [dict(r, setting=s, repeat=e["repeat"]) for s, es in entries(1).items() for e in es for r in e["results"]]
    totals = setting_totals(rows)
    cands = [s for s in full.test if s not in CONTROLS]
    before = min(cands, key=lambda s: totals[s]["val_loss"])
    test_best = min(cands, key=lambda s: full.test[s].mean)
    # the paired test difference of every candidate from the test-best (all repeats)
    ent = entries(repeats)

    def test_losses(setting: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        per: dict[str, list[np.ndarray]] = {}
        rows_: dict[str, np.ndarray] = {}
        for e in sorted(ent[setting], key=lambda e: e["repeat"]):
            for t in e["serves"]:
                r, loss = read(e["key"])[t]["test"]
                rows_[t] = r
                per.setdefault(t, []).append(loss)
        return {t: np.stack(v) for t, v in per.items()}, rows_

    best_losses, test_rows = test_losses(test_best)

    def judged(choice: str) -> dict[str, Any]:
        d = difference(test_losses(choice)[0], best_losses, test_rows)
        return {"choice": choice, "agree": choice == test_best, "acceptable": choice == test_best or d.lo <= 0,
                "regret": 100.0 * (full.test[choice].mean / full.test[test_best].mean - 1.0),
                "models": full.costs[choice].models, "best_models": full.costs[test_best].models}

    return {"groups": len(tg.groups_), "ari": _ari(ds, tg), "test_best": test_best,
            "test": {s: full.test[s].mean for s in full.test},
            "before": judged(before), "after1": judged(one.verdict["setting"]) | {"pays": one.verdict["pays"]},
            "afterR": judged(full.verdict["setting"]) | {"pays": full.verdict["pays"]},
            "seconds": {"group": group_s, "train": train_s}, "models": len(unique)}


def _ari(ds: Any, tg: Any) -> float | None:
    if not ds.ground_truth:
        return None
    from sklearn.metrics import adjusted_rand_score

    labels = {t: gi for gi, g in enumerate(tg.groups_) for t in g if tg.served_[t] == gi}
    return float(adjusted_rand_score([ds.ground_truth[t] for t in tg.tasks_], [labels[t] for t in tg.tasks_]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="one seed, two repeats, the first two cases")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    cases = CASES[:2] if args.quick else CASES
    seeds = range(1 if args.quick else args.seeds)
    repeats = 2 if args.quick else args.repeats
    lines = ["# Verdict against the test ranking: before and after the selection split", "", machine_line(), "",
             f"{len(cases)} data sets x {len(seeds)} seeds; every setting trained {repeats} times. Choices: "
             "`before` = lowest early-stopping validation loss of one training (the old rule); `after R=1` = the "
             f"verdict on the selection split from one training (the CLI default); `after R={repeats}` = the verdict "
             f"from {repeats} trainings. Truth: test loss averaged over {repeats} trainings. *agree*: the choice is "
             "the test-best setting; *ok*: its paired test difference from the test-best cannot be told from 0; "
             "*regret*: its test loss over the best's.", "",
             f"| data | seed | groups | ARI | test-best | before | after R=1 | after R={repeats} | pays (R={repeats}) "
             "| models | s |", "|---|---:|---:|---:|---|---|---|---|---|---:|---:|"]
    tally: dict[str, list[dict[str, Any]]] = {"before": [], "after1": [], "afterR": []}
    for name, spec, hidden in cases:
        for seed in seeds:
            out = one_case(spec.format(seed=seed), hidden, seed, repeats, args.workers)
            for k in tally:
                tally[k].append(out[k])

            def show(j: dict[str, Any]) -> str:
                return f"{j['choice']} ({'=' if j['agree'] else 'ok' if j['acceptable'] else 'x'}, {j['regret']:+.1f}%)"

            ari = "–" if out["ari"] is None else f"{out['ari']:.2f}"
            row = (f"| {name} | {seed} | {out['groups']} | {ari} | {out['test_best']} | {show(out['before'])} | "
                   f"{show(out['after1'])} | {show(out['afterR'])} | {out['afterR']['pays']} | {out['models']} | "
                   f"{sum(out['seconds'].values()):.0f} |")
            print(row, flush=True)
            lines.append(row)
    lines += ["", "| rule | agree | ok | mean regret | worst regret | models chosen / the test-best's |",
              "|---|---:|---:|---:|---:|---:|"]
    for k, label in (("before", "before (early-stopping validation, 1 training)"),
                     ("after1", "after, R=1 (selection split)"), ("afterR", f"after, R={repeats}")):
        js = tally[k]
        lines.append(f"| {label} | {sum(j['agree'] for j in js)}/{len(js)} | {sum(j['acceptable'] for j in js)}/{len(js)} "
                     f"| {np.mean([j['regret'] for j in js]):+.2f}% | {max(j['regret'] for j in js):+.2f}% "
                     f"| {sum(j['models'] for j in js) / sum(j['best_models'] for j in js):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(write_result("verdict.md", text))


if __name__ == "__main__":
    main()
