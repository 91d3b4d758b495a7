"""Which affinity predicts real transfer? Every method's matrix against measured pairwise transfer.

The reference (:mod:`taskgrouping.methods.transfer`): every task trained alone and
every pair together, ``--repeats`` times, and ``transfer[j, i] = L_j(alone) - L_j(with
i)`` on j's selection rows (rows no training decision saw). For each data set, seed
and method:

* **Spearman**: rank correlation between the method's off-diagonal affinity (a
  distance negated, so larger = more alike for every method) and the measured transfer;
* **top-3**: the share of each task's 3 highest-affinity partners that are among its 3
  largest measured transfers (random: 3 / (T - 1));
* **seconds to affinity** from the prepared data, in this process, one method after
  another (HOA: its T + T(T-1)/2 trainings, the reference's first repeat, timed once).

``hoa`` is the ceiling: the same trainings, scored on the validation rows. Means and
95% intervals (t over seeds) per data set; the summary row averages the data sets.

    .venv/bin/python bench/fidelity.py [--seeds 0 1] [--repeats 2] [--quick]

Writes ``bench/results/fidelity.md`` and ``bench/results/fidelity.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/selectors.py shadows the standard library's selectors (which multiprocessing imports): this folder last
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import asdict  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from common import machine_line, write_result  # noqa: E402

DIGITS_12 = "is_0,is_1,is_2,is_3,is_4,is_5,is_6,is_7,is_8,is_9,even,ge_5"
DATASETS = [  # name, source, tasks, trunk
    ("synthetic (12 tasks, 3 planted groups)", "builtin:synthetic:tasks=12,groups=3,samples=800,seed={seed}", None,
     "auto"),
    ("subsets (10 + complement + random)", "builtin:subsets:tasks=10,samples=800,seed={seed}", None, "auto"),
    ("shapes (8 attributes, 16x16 images, cnn)", "builtin:shapes:samples=800,size=16,per=2,seed={seed}", None,
     "cnn"),
    ("digits (12 tasks)", "builtin:digits", DIGITS_12, "auto"),
    ("digits-images (12 tasks, cnn)", "builtin:digits-images", DIGITS_12, "cnn"),
    ("diabetes (scikit-learn's table: 6 blood serum measures and progression)", "sklearn:diabetes", None, "auto"),
]
METHODS = ["swola", "swola-shared", "tag", "datamaps", "principled", "hoa"]
"""The default methods; ``principled-adam`` (the Adam collection, 2-4x slower than SGD's) on request."""


def diabetes() -> Any:
    """scikit-learn's bundled diabetes table (442 patients) as 7 regression tasks on age, sex, BMI and blood pressure.

    The six blood serum measurements (s1..s6: total cholesterol, LDL, HDL, their ratio,
    triglycerides, glucose) and the disease progression a year on; related by biology
    (s1 and s2 nearly collinear, s3 against s4), not by construction. Ships with
    scikit-learn: nothing is downloaded.
    """
    from sklearn.datasets import load_diabetes

    from taskgrouping.data.dataset import Dataset, TaskSpec

    raw = load_diabetes(scaled=False)
    x, names = raw.data, list(raw.feature_names)
    inputs = [names.index(c) for c in ("age", "sex", "bmi", "bp")]
    serum = [c for c in names if len(c) == 2 and c[0] == "s" and c[1].isdigit()]  # s1..s6 (not "sex")
    labels = np.column_stack([x[:, names.index(c)] for c in serum] + [raw.target]).astype(np.float32)
    tasks = [TaskSpec(f"y_{c}", "regression", 1, (), "scikit-learn diabetes") for c in [*serum, "progression"]]
    return Dataset(x[:, inputs].astype(np.float32), labels, tasks, ["age", "sex", "bmi", "bp"], "sklearn:diabetes")


def load(source: str, tasks: str | None, seed: int) -> Any:
    from taskgrouping.data.load import load_dataset

    if source == "sklearn:diabetes":
        return diabetes()
    return load_dataset(source.format(seed=seed), tasks=tasks)


def _train_one(store: str, dataset_key: str, members: list[str], train: dict[str, Any], seed: int,
               key: str) -> bool:
    import torch

    from taskgrouping.tasks.steps import train_step

    torch.set_num_threads(1)
    return bool(train_step.fn(store, dataset_key, members, train, seed, "cpu", cache_key=key, run_id="fidelity")
                ["computed"])


def reference(store: Any, key: str, train: Any, seed: int, repeats: int, workers: int) -> tuple[Any, float]:
    """The measured transfer (trainings in a pool of ``workers`` processes) and the first repeat's seconds."""
    from taskgrouping.methods.transfer import measured_transfer, model_keys
    from taskgrouping.models.evaluate import repeat_seed

    wanted = model_keys(store, key, train, seed, repeats)
    ctx = multiprocessing.get_context("spawn")
    first = 0.0
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for r in range(repeats):
            t0 = time.perf_counter()
            jobs = [pool.submit(_train_one, str(store.root), key, list(m), asdict(train), repeat_seed(seed, r), k)
                    for (rr, m), k in wanted.items() if rr == r and not store.has_model(k)]
            for j in jobs:
                j.result()
            if r == 0:
                first = (time.perf_counter() - t0) * workers  # one process's worth: comparable with the others
    tr = measured_transfer(store, key, train, seed, repeats, train_missing=False)
    assert tr is not None
    return tr, first


def affinity_of(method: str, store: Any, key: str, data: Any, seed: int, train: Any, trunk: str) -> Any:
    """One method's affinity matrix on the prepared data (HOA from the reference's stored models)."""
    from taskgrouping.methods.datamaps import DatamapSettings, datamap_affinity
    from taskgrouping.methods.hoa import hoa_gains
    from taskgrouping.methods.principled import PrincipledSettings, principled_affinity
    from taskgrouping.methods.swola import SwolaSettings, swola_affinity
    from taskgrouping.methods.tag import TagSettings, tag_affinity
    from taskgrouping.methods.transfer import model_keys

    if method.startswith("swola"):
        s = SwolaSettings(head="shared" if method == "swola-shared" else "fitted", trunk=trunk, hidden=train.hidden)
        rows = data.probe_idx
        return swola_affinity(data.x[rows], data.y[rows], data.tasks, s, seed, "cpu", data.shape)
    if method == "tag":
        return tag_affinity(data, TagSettings(), train, seed)[0]
    if method.startswith("principled"):
        settings = PrincipledSettings(optimizer="adam" if method == "principled-adam" else "sgd")
        return principled_affinity(data, settings, train, seed)[0]
    if method == "datamaps":
        return datamap_affinity(data, DatamapSettings(), train, seed)[0]
    wanted = model_keys(store, key, train, seed, 1)
    losses = {frozenset(m): {r["task"]: r["val_loss"] for r in store.read_model_results(k)}
              for (_, m), k in wanted.items()}
    return hoa_gains(data.task_names, losses)


def _spearman_off(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    off = ~np.eye(len(a), dtype=bool)
    return float(spearmanr(a[off], b[off]).statistic)


def _ci(values: list[float]) -> tuple[float, float]:
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


def main() -> None:
    from taskgrouping.data.dataset import prepare
    from taskgrouping.methods.transfer import fidelity, measured_transfer
    from taskgrouping.models.train import TrainSettings
    from taskgrouping.storage import Store
    from taskgrouping.tasks.steps import store_prepared

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--repeats", type=int, default=2, help="trainings of each single and pair (the reference)")
    ap.add_argument("--samples", type=int, default=256, help="probe samples")
    ap.add_argument("--workers", type=int, default=2, help="processes training the reference")
    ap.add_argument("--quick", action="store_true", help="synthetic and diabetes, one seed (a smoke run)")
    ap.add_argument("--methods", nargs="+", default=METHODS, help=f"of {', '.join(METHODS)}, principled-adam")
    ap.add_argument("--datasets", nargs="+", default=None, metavar="WORD",
                    help="only the data sets whose name starts with one of these words")
    ap.add_argument("--add", action="store_true",
                    help="keep the measurements already in bench/results/fidelity.jsonl (other data sets or seeds) "
                         "and render the table from all of them")
    args = ap.parse_args()
    methods = list(args.methods)
    datasets = [d for d in DATASETS if not args.quick or d[1].startswith(("builtin:synthetic", "sklearn"))]
    if args.datasets:
        datasets = [d for d in datasets if d[0].split()[0] in args.datasets]
    seeds = args.seeds[:1] if args.quick else args.seeds
    train = TrainSettings(hidden=32, max_epochs=40, patience=8)
    raw_path = Path(__file__).resolve().parent / "results" / "fidelity.jsonl"
    measured: list[dict[str, Any]] = []
    if args.add and raw_path.exists():
        measured = [json.loads(line) for line in raw_path.read_text().splitlines() if line.strip()]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        for name, source, tasks, trunk in datasets:
            for seed in seeds:
                t_set = time.perf_counter()
                ds = load(source, tasks, seed)
                data = prepare(ds, seed, args.samples)
                st = Store(Path(tmp) / f"{abs(hash((source, seed)))}")
                key = store_prepared(st, data, args.samples)
                tr_settings = TrainSettings(**(asdict(train) | {"trunk": trunk}))
                tr, hoa_s = reference(st, key, tr_settings, seed, args.repeats, args.workers)
                for method in methods:
                    t0 = time.perf_counter()
                    aff = affinity_of(method, st, key, data, seed, tr_settings, trunk)
                    secs = hoa_s if method == "hoa" else time.perf_counter() - t0
                    f = fidelity(aff, tr, k=3)
                    measured = [m for m in measured if (m["dataset"], m["seed"], m["method"]) != (name, seed, method)]
                    measured.append({"dataset": name, "seed": seed, "method": method, "spearman": f["spearman"],
                                     "top3": f["topk"], "seconds": secs})
                    print(f"{name} seed {seed} {method}: Spearman {f['spearman']:+.3f}, top-3 {f['topk']:.2f}, "
                          f"{secs:.1f} s", flush=True)
                off = ~np.eye(len(tr.tasks), dtype=bool)
                sure = float(np.mean((tr.lo[off] > 0) | (tr.hi[off] < 0)))
                reliability = float("nan")
                if args.repeats >= 2:  # the reference against itself: repeat 0's matrix against repeat 1's
                    halves = [measured_transfer(st, key, tr_settings, seed, args.repeats, train_missing=False, only=r)
                              for r in (0, 1)]
                    if halves[0] is not None and halves[1] is not None:
                        reliability = _spearman_off(halves[0].mean, halves[1].mean)
                measured = [m for m in measured if (m["dataset"], m["seed"], m["method"]) != (name, seed, "reference")]
                measured.append({"dataset": name, "seed": seed, "method": "reference", "spearman": reliability,
                                 "top3": sure, "seconds": hoa_s})
                write_result("fidelity.jsonl", "".join(json.dumps(m) + "\n" for m in measured))
                print(f"{name} seed {seed}: {len(tr.tasks)} tasks, {sure:.0%} of measured transfers non-zero beyond "
                      f"their interval, repeat-to-repeat Spearman {reliability:+.3f}; {time.perf_counter() - t_set:.0f} s",
                      flush=True)
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for m in measured:
        cell = rows.setdefault((m["dataset"], m["method"]), {"spearman": [], "top3": [], "seconds": []})
        for k in ("spearman", "top3", "seconds"):
            cell[k].append(float("nan") if m[k] is None else float(m[k]))
    shown = [d for d in DATASETS if any(n == d[0] for n, _ in rows)]
    all_seeds = sorted({int(m["seed"]) for m in measured})
    text = report(rows, shown, all_seeds, args, time.perf_counter() - t_all, methods)
    print(text)
    write_result("fidelity.md", text)
    plot(rows, shown, methods)


def report(rows: dict[tuple[str, str], dict[str, list[float]]], datasets: list[Any], seeds: list[int],
           args: argparse.Namespace, total: float, methods: list[str]) -> str:
    lines = ["# Which affinity predicts real transfer (`bench/fidelity.py`)", "", machine_line(), "",
             f"Seeds {', '.join(map(str, seeds))}; the reference trains every single task and pair {args.repeats} "
             f"times; {args.samples} probe samples; hidden 32, at most 40 epochs. "
             + (f"This run took {total / 60:.1f} minutes" if total > 1 else "Rendered from earlier runs")
             + " (with `--add`, the table holds every measured data set: `bench/results/fidelity.jsonl`; each data set "
             "and seed took 3-6 minutes on 2 loaded cores, the image sets longer).", "",
             "Spearman between each method's off-diagonal affinity (distances negated) and the measured transfer "
             "`L_j(alone) - L_j(with i)` on selection rows; top-3 precision of each task's partners; seconds to "
             "affinity. Mean ± 95% half-width over seeds (none with one seed). The *reference* row is the measured "
             "transfer against itself: the Spearman of repeat 0's matrix with repeat 1's (how far any method can be "
             "expected to agree with it), and the share of its entries whose interval excludes 0.", "",
             "| data | method | Spearman | top-3 | seconds |", "|---|---|---:|---:|---:|"]

    def cell(values: list[float], fmt: str) -> str:
        m, h = _ci(values)
        return f"{m:{fmt}}" + ("" if not np.isfinite(h) else f" ± {h:.2f}")

    for name, *_ in datasets:
        ref = rows.get((name, "reference"))
        if ref:
            lines.append(f"| {name} | *reference: repeat 0 against repeat 1; share non-zero beyond its interval* | "
                         f"{cell(ref['spearman'], '+.3f')} | {cell(ref['top3'], '.2f')} | {cell(ref['seconds'], '.1f')} |")
        for method in methods:
            r = rows.get((name, method))
            if r:
                lines.append(f"| {name} | {method} | {cell(r['spearman'], '+.3f')} | {cell(r['top3'], '.2f')} | "
                             f"{cell(r['seconds'], '.1f')} |")
    lines += ["", "Mean over the data sets (each data set's seed mean, then the mean of those):", "",
              "| method | mean Spearman | data sets with Spearman > 0 | mean top-3 | mean seconds |",
              "|---|---:|---:|---:|---:|"]
    for method in methods:
        per = [rows[(n, method)] for n, *_ in datasets if (n, method) in rows]
        sp = [float(np.nanmean(r["spearman"])) for r in per]
        lines.append(f"| {method} | {np.nanmean(sp):+.3f} | {sum(1 for v in sp if v > 0)} of {len(sp)} | "
                     f"{np.mean([np.mean(r['top3']) for r in per]):.2f} | "
                     f"{np.mean([np.mean(r['seconds']) for r in per]):.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[tuple[str, str], dict[str, list[float]]], datasets: list[Any], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        means, low, high = [], [], []
        for name, *_ in datasets:
            v = [x for x in rows.get((name, method), {}).get("spearman", []) if np.isfinite(x)]
            m = float(np.mean(v)) if v else float("nan")
            means.append(m)
            low.append(m - min(v) if v else 0.0)  # the bars span the seeds' range (two seeds: a t interval is vast)
            high.append(max(v) - m if v else 0.0)
        xs = np.arange(len(datasets)) + (k - (len(methods) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=[low, high], label=method, capsize=2)
    for d, (name, *_) in enumerate(datasets):  # the reference against itself: how far any method can agree with it
        v = [x for x in rows.get((name, "reference"), {}).get("spearman", []) if np.isfinite(x)]
        if v:
            ax.hlines(float(np.mean(v)), d - 0.45, d + 0.45, colors="black", linestyles="dashed", lw=1,
                      label="reference, repeat vs repeat" if d == 0 else None)
    ax.set_ylim(-1, 1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(datasets)), [n.split(" (")[0] for n, *_ in datasets])
    ax.set_ylabel("Spearman with measured transfer\n(bars: the seeds' range)")
    ax.set_title("Which affinity predicts real transfer")
    ax.legend(ncol=4, fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(__file__).resolve().parent / "results" / "fidelity.png"
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
