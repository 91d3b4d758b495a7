"""Side by side: cost and grouping quality of every affinity method and selector, in one run.

Same data, same trunk and training settings, same machine, one process for every
affinity (timed one after another, nothing else running), so the times compare:

* **to affinity**: seconds from the prepared data to the T x T matrix, and the ratio to
  SWOLA (fitted head) on the same data in this run. TAG and data maps include their
  joint training; HOA its T single-task and T(T-1)/2 pair trainings.
* **peak MiB**: peak resident memory above the start of that affinity computation.
* **grouped / all / single / random**: total test loss (summed over tasks) of one model
  per chosen group, of one model on all tasks, of one model per task, and of random
  groups of the same sizes. With helpers (``network``), a group is counted only for
  the tasks it serves.
* **ARI**: adjusted Rand index of the chosen groups against the planted ones (synthetic).
* **regret** (at most 6 tasks): grouped test loss minus that of the exhaustive oracle,
  which trains every subset and picks the partition with the lowest total *validation*
  loss.

Groups are chosen with ``--groups auto`` (what a user gets by default). The evaluation
models are trained by a pool of worker processes (one torch thread each) after all
affinities are timed, and each distinct member set is trained once per dataset.

    .venv/bin/python bench/compare.py [--quick] [--workers 2]

Writes ``bench/results/compare.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/selectors.py shadows the standard library's selectors (which multiprocessing imports): this folder last
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from common import machine_line, timed, write_result  # noqa: E402

from taskgrouping.methods.base import AffinityMatrix  # noqa: E402

DATASETS = [
    ("synthetic A (4 groups + complement + random, seed 0)",
     "builtin:synthetic:tasks=12,groups=4,complement=1,random=1,seed=0"),
    ("synthetic B (3 groups, noise 1.0, jitter 0.8, seed 1)",
     "builtin:synthetic:tasks=12,groups=3,noise=1.0,jitter=0.8,seed=1"),
    ("synthetic C (6 tasks in 2 groups, seed 2)", "builtin:synthetic:tasks=6,groups=2,seed=2"),
    ("digits (15 tasks)", "builtin:digits"),
]
METHODS = ["swola", "swola-shared", "tag", "datamaps", "hoa", "principled"]
SELECTORS = ["spectral", "gat", "network", "mip"]
ORACLE_MAX_TASKS = 6

_DATA: Any = None  # the prepared data inside a pool worker


def _load(source: str, seed: int, samples: int) -> Any:
    from taskgrouping.data.dataset import prepare
    from taskgrouping.data.load import load_dataset

    return load_dataset(source), prepare(load_dataset(source), seed, samples)


def _init_worker(source: str, seed: int, samples: int) -> None:
    global _DATA
    import torch

    torch.set_num_threads(1)
    _DATA = _load(source, seed, samples)[1]


def _train(members: tuple[str, ...], train: dict[str, Any], seed: int) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    from taskgrouping.models.train import TrainSettings, train_group

    idx = [_DATA.task_names.index(t) for t in members]
    _, results, _ = train_group(_DATA, idx, TrainSettings(**train), seed)
    return members, results


@dataclass
class Models:
    """Trained models of one dataset by member set (each distinct set trained once)."""

    source: str
    seed: int
    samples: int
    train: dict[str, Any]
    workers: int
    results: dict[frozenset[str], dict[str, dict[str, Any]]] = field(default_factory=dict)

    def ensure(self, groups: list[tuple[str, ...]]) -> None:
        """Train every member set not trained yet (in the worker pool)."""
        todo = sorted({tuple(g) for g in groups if frozenset(g) not in self.results})
        if not todo:
            return
        with ProcessPoolExecutor(self.workers, initializer=_init_worker,
                                 initargs=(self.source, self.seed, self.samples)) as pool:
            for members, rows in pool.map(_train, todo, [self.train] * len(todo), [self.seed] * len(todo)):
                self.results[frozenset(members)] = {r["task"]: r for r in rows}

    def loss(self, members: tuple[str, ...], serves: tuple[str, ...], kind: str = "test_loss") -> float:
        got = self.results[frozenset(members)]
        return float(sum(got[t][kind] for t in serves))


def _measure_affinity(method: str, source: str, seed: int, samples: int,
                      train: dict[str, Any]) -> tuple[AffinityMatrix, dict[str, float], dict[Any, Any]]:
    """In a fresh process: load the data, then time one method's affinity and its peak memory.

    A fresh process per method, so that memory one method freed and the allocator kept
    does not hide the next one's peak. Returns the affinity, the measurement and the
    models the method trained (HOA's, reused by the evaluation).
    """
    from taskgrouping.models.train import TrainSettings


    _, data = _load(source, seed, samples)
    models = Models(source, seed, samples, train, 1)
    # warm up on two tasks first (lazy imports, first-call set-up), so only the work is timed
    two = replace(data, y=data.y[:, :2], tasks=data.tasks[:2], y_scale=data.y_scale[:2],
                  label_fps=data.label_fps[:2])
    affinity_of(method, two, seed, TrainSettings(**train), Models(source, seed, samples, train, 1))
    with timed() as m:
        affinity = affinity_of(method, data, seed, TrainSettings(**train), models)
    return affinity, m, models.results


def measure_affinity(method: str, source: str, seed: int, samples: int,
                     train: dict[str, Any]) -> tuple[AffinityMatrix, dict[str, float], dict[Any, Any]]:
    """:func:`_measure_affinity` in a child process (spawned: nothing inherited)."""
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measure_affinity, method, source, seed, samples, train).result()


def affinity_of(method: str, data: Any, seed: int, train: Any, models: Models) -> AffinityMatrix:
    """One method's affinity on the prepared data (what the timing covers)."""
    from taskgrouping.methods.datamaps import DatamapSettings, datamap_affinity
    from taskgrouping.methods.hoa import hoa_gains, pair_subsets
    from taskgrouping.methods.swola import SwolaSettings, swola_affinity
    from taskgrouping.methods.tag import TagSettings, tag_affinity
    from taskgrouping.models.train import train_group

    if method.startswith("swola"):
        s = SwolaSettings(head="shared" if method == "swola-shared" else "fitted")
        return swola_affinity(data.x[data.probe_idx], data.y[data.probe_idx], data.tasks, s, seed)
    if method == "tag":
        return tag_affinity(data, TagSettings(), train, seed)[0]
    if method == "principled":
        from taskgrouping.methods.principled import PrincipledSettings, principled_affinity

        return principled_affinity(data, PrincipledSettings(), train, seed)[0]
    if method == "datamaps":
        return datamap_affinity(data, DatamapSettings(), train, seed)[0]
    # HOA: every single and pair, trained here in this process so the time is comparable
    tasks = data.task_names
    losses: dict[frozenset[str], dict[str, float]] = {}
    for subset in [[t] for t in tasks] + pair_subsets(tasks):
        _, rows, _ = train_group(data, [tasks.index(t) for t in subset], train, seed)
        losses[frozenset(subset)] = {r["task"]: r["val_loss"] for r in rows}
        models.results[frozenset(subset)] = {r["task"]: r for r in rows}  # reused by the evaluation
    return hoa_gains(tasks, losses)


def oracle(tasks: list[str], models: Models, kind: str = "val_loss") -> tuple[float, list[list[str]]]:
    """The exhaustive oracle: every subset trained; the partition with the lowest total ``kind`` loss.

    Returns that partition's total *test* loss and its groups. On ``val_loss`` it is the
    oracle a user could run; on ``test_loss`` it is the best any grouping could score.
    """
    from taskgrouping.methods.hoa import all_task_subsets, subset_scores
    from taskgrouping.selectors.network import select_measured

    subsets = all_task_subsets(tasks)
    models.ensure([tuple(s) for s in subsets])
    measured = {frozenset(s): {t: models.results[frozenset(s)][t][kind] for t in s} for s in subsets}
    members, scores = subset_scores(tasks, measured)
    best = select_measured(tasks, members, scores, len(tasks), overlap=False)
    return sum(models.loss(tuple(g), tuple(g)) for g in best.groups), best.groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2, help="processes training the evaluation models")
    ap.add_argument("--quick", action="store_true", help="only synthetic C and swola/tag/principled (a smoke run)")
    ap.add_argument("--scaling", type=int, nargs="*", default=None, metavar="T",
                    help="only the cost-scaling table at these task counts (default 12 24 48 96), "
                         "appended to bench/results/compare.md")
    args = ap.parse_args()
    if args.scaling is not None:
        text = cost_scaling(args.scaling or [12, 24, 48, 96], args.seed, args.samples)
        print(text)
        path = Path(__file__).resolve().parent / "results" / "compare.md"
        old = path.read_text() if path.exists() else ""
        cut = old.find("\n## Cost as the task count grows")
        print("wrote", write_result("compare.md", (old if cut < 0 else old[:cut]).rstrip("\n") + "\n" + text))
        return
    from sklearn.metrics import adjusted_rand_score

    from taskgrouping.models.evaluate import evaluation_jobs
    from taskgrouping.models.train import TrainSettings
    from taskgrouping.selectors import get_selector

    datasets = DATASETS[2:3] if args.quick else DATASETS
    methods = ["swola", "tag", "principled"] if args.quick else METHODS
    train = TrainSettings()
    rows: list[dict[str, Any]] = []
    oracles: list[tuple[Any, ...]] = []
    for label, source in datasets:
        ds, data = _load(source, args.seed, args.samples)
        tasks = data.task_names
        models = Models(source, args.seed, args.samples, asdict(train), args.workers)
        costs: dict[str, dict[str, float]] = {}
        affinities: dict[str, AffinityMatrix] = {}
        for method in methods:
            affinities[method], m, trained = measure_affinity(method, source, args.seed, args.samples, asdict(train))
            models.results.update(trained)
            costs[method] = m
            print(f"{label}: {method} affinity {m['s']:.2f} s, +{m['extra_mib']:.0f} MiB", flush=True)
        groupings = {(method, sel): get_selector(sel)(affinities[method], None, args.seed)
                     for method in methods for sel in SELECTORS}
        if "principled" in methods:  # the method's own programme (Wang et al.), B chosen as for mip
            from taskgrouping.selectors import SelectSettings

            groupings[("principled", "mip (wang)")] = get_selector("mip", SelectSettings(objective="wang"))(
                affinities["principled"], None, args.seed)
        jobs = {key: evaluation_jobs(tasks, g.groups, g.served, args.seed) for key, g in groupings.items()}
        models.ensure([j.members for setting in jobs.values() for js in setting.values() for j in js])
        small = len(tasks) <= ORACLE_MAX_TASKS
        best_loss, best_groups = oracle(tasks, models) if small else (None, None)
        floor_loss, floor_groups = oracle(tasks, models, "test_loss") if small else (None, None)
        truth = ds.ground_truth
        for (method, sel), g in groupings.items():
            totals = {s: sum(models.loss(j.members, j.serves) for j in js) for s, js in jobs[(method, sel)].items()}
            ari = None
            if truth:
                known = [t for t in tasks if t in truth]
                labels = g.labels(tasks)
                ari = adjusted_rand_score([truth[t] for t in known], [labels[tasks.index(t)] for t in known])
            rows.append({"data": label, "method": method, "selector": sel, "seconds": costs[method]["s"],
                         "ratio": costs[method]["s"] / costs["swola"]["s"], "mib": costs[method]["extra_mib"],
                         "groups": len(g.groups), **totals, "ari": ari,
                         "regret": None if best_loss is None else totals["grouped"] - best_loss,
                         "gap": None if floor_loss is None else totals["grouped"] - floor_loss})
        if best_groups is not None:
            print(f"{label}: oracle (validation) groups {best_groups}, test loss {best_loss:.4f}; "
                  f"best on test {floor_groups}, {floor_loss:.4f}", flush=True)
            oracles.append((label, best_groups, best_loss, floor_groups, floor_loss))
        print(f"{label}: {len(models.results)} distinct models trained", flush=True)
    text = render(rows, oracles)
    print(text)
    if not args.quick:
        print("wrote", write_result("compare.md", text))


def cost_scaling(sizes: list[int], seed: int, samples: int) -> str:
    """Time to affinity of the methods that train at most one model, as the task count grows.

    SWOLA's cost is one probe per task on a fixed probe sample; TAG's grows with the
    joint training and with T lookahead passes per measured step. HOA (T^2/2
    trainings) is left out past the main table's sizes.
    """
    from taskgrouping.models.train import TrainSettings


    train = TrainSettings()
    _, warm = _load(f"builtin:synthetic:tasks=2,groups=2,seed={seed}", seed, samples)
    for method in ("swola", "swola-shared", "tag", "datamaps"):  # lazy imports and first-call set-up
        affinity_of(method, warm, seed, train, Models("", seed, samples, {}, 1))
    lines = ["", "## Cost as the task count grows (synthetic, T/4 planted groups)", "",
             "Time to affinity in seconds (and over SWOLA with the fitted head), one process, same machine "
             "and run.", "",
             "| T | swola (fitted) | swola (shared) | tag | tag / swola | datamaps | datamaps / swola |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for t in sizes:
        _, data = _load(f"builtin:synthetic:tasks={t},groups={max(2, t // 4)},seed={seed}", seed, samples)
        models = Models("", seed, samples, {}, 1)
        secs = {}
        for method in ("swola", "swola-shared", "tag", "datamaps"):
            with timed() as m:
                affinity_of(method, data, seed, train, models)
            secs[method] = m["s"]
        lines.append(f"| {t} | {secs['swola']:.2f} | {secs['swola-shared']:.2f} | {secs['tag']:.2f} | "
                     f"{secs['tag'] / secs['swola']:.1f}x | {secs['datamaps']:.2f} | "
                     f"{secs['datamaps'] / secs['swola']:.1f}x |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def render(rows: list[dict[str, Any]], oracles: list[tuple[Any, ...]]) -> str:
    lines = ["# Side by side: affinity methods and selectors", "", f"Machine: {machine_line()}", "",
             "Groups with `--groups auto`; losses are total test loss over tasks (lower is better); "
             "`x swola` is time to affinity over SWOLA (fitted head) on the same data in this run; "
             "regret is grouped test loss minus that of the exhaustive oracle (every subset trained, "
             "the partition with the lowest total validation loss), and gap is grouped test loss minus the best "
             "partition's *on test loss* (a floor no method can beat), both at most 6 tasks; peak MiB is resident "
             "memory above the start of the method, each method in a fresh process. Made by `bench/compare.py`.", "",
             "| data | method | selector | to affinity s | x swola | peak MiB | groups | grouped | all together "
             "| single task | random | ARI | regret | gap |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['method']} | {r['selector']} | {r['seconds']:.2f} | {r['ratio']:.1f} | "
            f"{r['mib']:.0f} | {r['groups']} | {r['grouped']:.4f} | {r['all_together']:.4f} | "
            f"{r['single_task']:.4f} | {r['random']:.4f} | {_num(r['ari'], '.3f')} | {_num(r['regret'], '+.4f')} | "
            f"{_num(r['gap'], '+.4f')} |")
    for label, val_groups, val_loss, test_groups, test_loss in oracles:
        lines += ["", f"{label}: the validation oracle chose {val_groups} (test loss {val_loss:.4f}); the best "
                      f"partition on test loss is {test_groups} ({test_loss:.4f})."]
    # per method: mean over datasets and selectors
    lines += ["", "## Per method (mean over datasets and selectors)", "",
              "| method | to affinity s (mean) | x swola (mean) | grouped / best baseline | ARI (mean) | "
              "regret (mean) |", "|---|---:|---:|---:|---:|---:|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        rel = [r["grouped"] / min(r["all_together"], r["single_task"], r["random"]) for r in mine]
        aris = [r["ari"] for r in mine if r["ari"] is not None]
        regrets = [r["regret"] for r in mine if r["regret"] is not None]
        per_data = {r["data"]: r for r in mine}
        lines.append(
            f"| {method} | {np.mean([r['seconds'] for r in per_data.values()]):.2f} | "
            f"{np.mean([r['ratio'] for r in per_data.values()]):.1f} | {np.mean(rel):.4f} | "
            f"{_num(float(np.mean(aris)) if aris else None, '.3f')} | "
            f"{_num(float(np.mean(regrets)) if regrets else None, '+.4f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
