"""Seconds per probe against the number of tasks T on the ``cnn`` trunk: per-task backward passes or the trunk's maps.

A probe on a trunk other than the MLP is ``g_{t,i} = J_i^T delta_{t,i}`` per sample. Two ways:

* **per task** (the engine before this bench): one backward pass per (sample, task) and,
  for a sketch, one Cauchy projection ``S_i g`` of the P-wide gradient per (sample, task);
  the trunk's work grows with T.
* **maps** (:func:`taskgrouping.methods.probe_engine.sketch_maps`): F backward passes and one
  projection per sample, once, then every task's sketch is ``delta_{t,i} @ maps[i]``.
  Exact gradients: ``delta @ J_i`` from the F feature gradients of each sample
  (:func:`~taskgrouping.methods.probe_engine.factored_grads`) against a pass per task.

Heads are fitted at one fixed C in both (the head fit is the same work either way, timed
apart). Inputs: ``builtin:shapes`` images (3 x S x S), the probe samples of a run.

    .venv/bin/python bench/probe_trunk.py [--tasks 16 64 256 1024] [--samples 512] [--size 32]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/selectors.py shadows the standard library's selectors (which subprocess imports): this folder last
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine_line, write_result  # noqa: E402

from taskgrouping.data.dataset import TaskSpec  # noqa: E402
from taskgrouping.methods import probe_engine as pe  # noqa: E402
from taskgrouping.methods.swola import (  # noqa: E402
    SwolaSettings,
    head_cotangents,
    probe_tasks,
    probe_trunk_any,
    task_heads,
)


def problem(n: int, size: int, t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[TaskSpec]]:
    """Shapes images and T binary tasks: thresholded random mixtures of the four hidden factors plus noise."""
    from taskgrouping.data.builtins import shapes

    ds = shapes(samples=n, size=size, per=1, seed=seed)
    rng = np.random.default_rng(seed)
    mix = ds.labels @ rng.standard_normal((ds.labels.shape[1], t)) + 0.5 * rng.standard_normal((n, t))
    y = (mix > np.median(mix, axis=0)).astype(np.float32)
    return ds.features.astype(np.float32), y, [TaskSpec(f"t{k}", "binary", 2, ("0", "1")) for k in range(t)]


def per_task(x: np.ndarray, y: np.ndarray, tasks: list[TaskSpec], s: SwolaSettings, shape: tuple[int, ...],
             k: int | None) -> float:
    """Seconds of the per-task engine (chunks of 64 tasks, as the flow's probe steps): cotangents, passes, projections."""
    t0 = time.perf_counter()
    xt = torch.as_tensor(x)
    trunk = probe_trunk_any(s, 0, shape, xt)
    for c in range(0, len(tasks), 64):
        part, yp = tasks[c : c + 64], y[:, c : c + 64]
        with torch.no_grad():
            h = trunk(xt)
        heads = task_heads(h.numpy().astype(np.float64), yp, part, s, 0, s.head_c)
        cot = head_cotangents(h, torch.as_tensor(yp), torch.ones_like(torch.as_tensor(yp)), part,
                              heads).transpose(0, 1).contiguous()
        for start, g in pe.per_sample_grads(trunk, xt, cot):
            g.abs().sum(dim=2, dtype=torch.float64)
            if k is not None:
                for i in range(g.shape[0]):
                    pe.cauchy_project(g[i], start + i, k, 0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--per-task-max", type=int, default=256, help="largest T the per-task engine is timed at")
    ap.add_argument("--exact-max", type=int, default=64, help="largest T exact gradients are timed at (T n P floats)")
    ap.add_argument("--from-log", metavar="FILE", help="only write the table from a run's printed lines")
    args = ap.parse_args()
    if args.from_log:
        lines = [json.loads(x.replace("'", '"')) for x in Path(args.from_log).read_text().splitlines()
                 if x.startswith("{")]
        head = next(x for x in lines if "maps_once_s" in x)
        render([x for x in lines if "T" in x], head["maps_once_s"], head["P"], head["F"], head["maps_mib"], args)
        return
    torch.manual_seed(0)
    shape = (3, args.size, args.size)
    x, y, tasks = problem(args.samples, args.size, max(args.tasks))
    sk = SwolaSettings(trunk="cnn", sketch=str(args.k), head_c=0.2)
    ex = SwolaSettings(trunk="cnn", sketch="none", head_c=0.2)
    xt = torch.as_tensor(x)
    trunk = probe_trunk_any(sk, 0, shape, xt)
    p, f = pe.n_params(trunk), int(trunk(xt[:1]).shape[1])
    t0 = time.perf_counter()
    maps = pe.sketch_maps(trunk, xt, args.k, 0)
    t_maps = time.perf_counter() - t0
    rows = []
    for t in args.tasks:
        row: dict[str, object] = {"T": t}
        t0 = time.perf_counter()
        probe_tasks(x, y[:, :t], tasks[:t], sk, 0, input_shape=shape, maps=maps)
        row["maps_s"] = time.perf_counter() - t0
        if t <= args.per_task_max:
            row["per_task_s"] = per_task(x, y[:, :t], tasks[:t], sk, shape, args.k)
        if t <= args.exact_max:
            t0 = time.perf_counter()
            probe_tasks(x, y[:, :t], tasks[:t], ex, 0, input_shape=shape)  # factored once T > F
            row["exact_s"] = time.perf_counter() - t0
            row["exact_per_task_s"] = per_task(x, y[:, :t], tasks[:t], ex, shape, None)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(json.dumps({"maps_once_s": t_maps, "P": p, "F": f, "maps_mib": maps.numel() * 4 / 2**20}), flush=True)
    render(rows, t_maps, p, f, maps.numel() * 4 / 2**20, args)


def render(rows: list[dict[str, object]], t_maps: float, p: int, f: int, maps_mib: float,
           args: argparse.Namespace) -> None:
    """Write ``bench/results/probe_trunk.md`` from the measured rows."""
    def ms(v: object, t: int) -> str:
        return "" if v is None else f"{1000 * float(v) / t:.1f}"  # type: ignore[arg-type]

    lines = [
        "# Seconds per probe against T on the `cnn` trunk (`bench/probe_trunk.py`)", "",
        f"Machine: {machine_line()}", "",
        f"`builtin:shapes` images 3x{args.size}x{args.size}, {args.samples} probe samples, the `cnn` trunk "
        f"(P = {p:,} trainable parameters, F = {f} features), heads at one fixed C. Sketch width k = {args.k}.", "",
        f"**maps**: the trunk's per-sample sketch maps, computed once in {t_maps:.1f} s (F backward passes and one "
        f"projection per sample; {maps_mib:.0f} MiB, kept in the store), then each task's sketch is "
        "one (k x F) product per sample. **per task**: one backward pass and one P-wide Cauchy projection per "
        "(sample, task), in chunks of 64 tasks (the engine before). **exact**: gradient probes (T n P floats), "
        "factored (`delta @ J_i`) once T > F, against one backward pass per (sample, task).", "",
        "`first run`: the maps' one-time cost plus the probes (from F tasks on; below F a run projects each "
        "gradient as it goes, the per-task column).", "",
        "| T | sketch, maps: s | ms per probe | first run, maps included: s | sketch, per task: s | ms per probe "
        "| speed-up (first run) | exact, factored: s | exact, per task: s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    def sec(v: object, digits: int = 1) -> str:
        return "" if v is None else f"{float(v):.{digits}f}"  # type: ignore[arg-type]

    for r in rows:
        t = int(r["T"])  # type: ignore[call-overload]
        pt = r.get("per_task_s")
        first = t_maps + float(r["maps_s"]) if t >= f else pt  # type: ignore[arg-type]
        speed = f"{float(pt) / float(r['maps_s']):.0f}x ({float(pt) / float(first):.1f}x)" if pt else ""  # type: ignore[arg-type]
        lines.append(f"| {t} | {sec(r['maps_s'], 2)} | {ms(r['maps_s'], t)} | {sec(first)} | {sec(pt)} | {ms(pt, t)} | "
                     f"{speed} | {sec(r.get('exact_s'))} | {sec(r.get('exact_per_task_s'))} |")
    lines += ["", f"Maps once: {t_maps:.1f} s. Blank: not timed (past `--per-task-max` / `--exact-max`)."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_result("probe_trunk.md", text)


if __name__ == "__main__":
    main()
