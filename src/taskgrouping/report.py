"""The run report: markdown text and a heatmap of the affinity ordered by group (no file I/O here)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskgrouping.methods.base import AffinityMatrix, positions
from taskgrouping.models.evaluate import CONTROLS, SETTINGS

WEAK_SILHOUETTE = 0.25
"""Below this silhouette the groups are reported as no clear structure (Kaufman and Rousseeuw's
"no substantial structure" range)."""

CHANCE_Z = 1.645
"""A binary task whose single-task test AUROC is not above 0.5 by this many standard errors
(one-sided 5%, Mann-Whitney's null variance) is flagged as at chance."""


def colour_limits(m: np.ndarray, kind: str) -> tuple[float | None, float | None]:
    """The heatmap's colour range for a square matrix ``m``: the bulk of its off-diagonal values.

    5th percentile to the maximum for a distance, minimum to the 95th percentile for a
    gain: the diagonal (0 for a distance) and a near-duplicate pair would otherwise
    stretch the scale so far that every other cell looks alike; cells beyond it saturate.
    ``(None, None)`` for a 1 x 1 matrix or no finite values.
    """
    n = m.shape[0]
    off = m[~np.eye(n, dtype=bool)]
    off = off[np.isfinite(off)]
    if not off.size:
        return None, None
    lo, hi = np.percentile(off, [5, 100]) if kind == "distance" else np.percentile(off, [0, 95])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def serving_order(affinity: AffinityMatrix, groups: list[list[str]],
                  served: dict[str, int] | None = None) -> tuple[list[str], list[int]]:
    """Tasks ordered by (serving) group, and the positions where one group ends and the next begins."""
    if served is not None:  # with helpers a task sits in several groups: place it by the one serving it
        groups = [[t for t in g if served.get(t) == gi] for gi, g in enumerate(groups)]
    order = [t for g in groups for t in g]
    placed = set(order)
    order += [t for t in affinity.tasks if t not in placed]
    bounds, pos = [], 0
    for g in groups[:-1]:
        pos += len(g)
        bounds.append(pos)
    return order, bounds


LABELLED_TASKS_MAX = 80
"""Up to this many tasks the heatmap is a matplotlib figure with every task named; past it, a raster."""

_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float64)
"""Nine evenly spaced colours of the viridis colour map (dark to light), interpolated linearly."""

def _colours(t: np.ndarray, reverse: bool) -> np.ndarray:
    """uint8 RGB of ``t`` in [0, 1] (clipped) on viridis, 256 levels (reversed: light for 0); NaN is grey."""
    x = np.linspace(0.0, 1.0, 256) * (len(_VIRIDIS) - 1)
    i = np.minimum(x.astype(np.int64), len(_VIRIDIS) - 2)
    f = (x - i)[:, None]
    lut = np.rint(_VIRIDIS[i] * (1.0 - f) + _VIRIDIS[i + 1] * f).astype(np.uint8)
    lut = np.vstack([lut[::-1] if reverse else lut, [[128, 128, 128]]])  # entry 256: NaN
    level = np.clip(np.rint(np.nan_to_num(t, nan=0.0) * 255.0), 0, 255).astype(np.int64)
    level[np.isnan(t)] = 256
    out: np.ndarray = lut[level]
    return out


def png_bytes(rgb: np.ndarray, text: dict[str, str] | None = None,
              labels: Sequence[tuple[int, int, str]] = ()) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (h, w, 3) uint8, written by Pillow.

    ``labels`` ``(top, left, text)`` are drawn in black (Pillow's default font), ``text``
    goes into tEXt chunks (keyword: text).
    """
    from PIL import Image, ImageDraw, PngImagePlugin

    img = Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for top, left, label in labels:
        draw.text((left, top), label, fill=(0, 0, 0))
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=1)  # level 1: 4x faster than 6, files ~20% larger
    return buf.getvalue()


def raster_heatmap(m: np.ndarray, bounds: list[int], kind: str, label: str) -> bytes:
    """The heatmap of many tasks as a raster PNG: a cell per pair, red lines between groups, a colour scale.

    Past :data:`LABELLED_TASKS_MAX` tasks no name fits, and matplotlib takes 0.6 s (its
    import and a 1,000 x 1,000 image resampled into the axes, which also blurs cells
    together). Here each pair is ``max(1, 800 // n)`` pixels square, a one-pixel red
    line sits between groups (no cell hidden under it), and the colour bar on the right
    is labelled with its two ends; 1,000 tasks take about 30 ms. The title and the scale
    are also in the PNG's text chunks.
    """
    n = m.shape[0]
    vmin, vmax = colour_limits(m, kind)
    lo, hi = (0.0, 1.0) if vmin is None or vmax is None else (vmin, vmax)
    s = max(1, 800 // max(1, n))
    cells = _colours((m - lo) / (hi - lo), reverse=kind == "distance")
    cells = np.repeat(np.repeat(cells, s, axis=0), s, axis=1)
    cut = [b * s for b in bounds]  # insert a red line before each group's first cell, rows and columns
    red = np.array([220, 30, 30], np.uint8)
    cells = np.insert(cells, cut, red, axis=0)
    cells = np.insert(cells, cut, red, axis=1)
    size = cells.shape[0]
    top_text, bottom_text = f"{hi:.3g}", f"{lo:.3g}"
    text_w = 8 * max(len(top_text), len(bottom_text))
    margin, gap, bar = 10, 12, 16
    img = np.full((size + 2 * margin, margin + size + gap + bar + 6 + text_w + margin, 3), 255, np.uint8)
    img[margin : margin + size, margin : margin + size] = cells
    ramp = np.linspace(1.0, 0.0, size)[:, None]  # top: the high end
    x0 = margin + size + gap
    img[margin : margin + size, x0 : x0 + bar] = _colours(np.repeat(ramp, bar, axis=1), reverse=kind == "distance")
    return png_bytes(img, {"Title": "Task affinity, ordered by group",
                           "Description": f"{label} (off-diagonal scale: {lo:.6g} at the bottom of the bar, "
                                          f"{hi:.6g} at the top; {n} tasks, {len(bounds) + 1} groups)"},
                     labels=[(margin, x0 + bar + 6, top_text), (margin + size - 10, x0 + bar + 6, bottom_text)])


def heatmap_png(affinity: AffinityMatrix, groups: list[list[str]], served: dict[str, int] | None = None,
                label: str | None = None) -> bytes:
    """A PNG heatmap of the affinity with tasks ordered by (serving) group and group borders drawn.

    Up to :data:`LABELLED_TASKS_MAX` tasks: a matplotlib figure with names; past it,
    :func:`raster_heatmap` (no matplotlib import).
    """
    if getattr(affinity, "sparse", False):
        return neighbour_heatmap(affinity, groups, served, label)
    order, bounds = serving_order(affinity, groups, served)
    idx = positions(affinity.tasks, order)
    if len(order) > LABELLED_TASKS_MAX:
        return raster_heatmap(affinity.values[np.ix_(idx, idx)], bounds, affinity.kind, label or affinity.kind)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = affinity.values[np.ix_(idx, idx)]
    n = len(order)
    size = 4 + 0.28 * n
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    vmin, vmax = colour_limits(m, affinity.kind)
    im = ax.imshow(m, cmap="viridis_r" if affinity.kind == "distance" else "viridis", vmin=vmin, vmax=vmax)
    shown = [t if len(t) <= 40 else t[:39] + "…" for t in order]  # long names would squeeze the plot away
    ax.set_xticks(range(n), labels=shown, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels=shown, fontsize=7)
    for pos in bounds:
        ax.axhline(pos - 0.5, color="red", lw=1)
        ax.axvline(pos - 0.5, color="red", lw=1)
    beyond = "neither" if vmin is None or vmax is None else \
        {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
            (bool((m < vmin).any()), bool((m > vmax).any()))]
    fig.colorbar(im, ax=ax, label=(label or affinity.kind) + " (off-diagonal scale)", extend=beyond)
    ax.set_title("Task affinity, ordered by group")
    buf = io.BytesIO()
    with warnings.catch_warnings():  # task names in scripts the bundled font lacks render as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


SPARSE_HEATMAP_TASKS = 600
"""A neighbour affinity's heatmap shows the groups holding the first this many tasks (in group order)."""


def neighbour_heatmap(affinity: Any, groups: list[list[str]], served: dict[str, int] | None,
                      label: str | None) -> bytes:
    """The heatmap of a neighbour affinity: the within-group blocks a person can read, not T x T cells.

    Tasks in (serving) group order, whole groups up to :data:`SPARSE_HEATMAP_TASKS` tasks;
    a cell is a stored pair's exact distance, grey where the pair is not stored (neither
    task is among the other's nearest partners).
    """
    order, _ = serving_order(affinity, groups, served)
    if served is not None:
        groups = [[t for t in g if served.get(t) == gi] for gi, g in enumerate(groups)]
    shown: list[str] = []
    bounds: list[int] = []
    for g in groups:
        if shown and len(shown) + len(g) > SPARSE_HEATMAP_TASKS:
            break
        if shown:
            bounds.append(len(shown))
        shown += g[:SPARSE_HEATMAP_TASKS]
    idx = np.asarray(positions(affinity.tasks, shown), np.int64)
    n = len(idx)
    i, j = np.repeat(idx, n), np.tile(idx, n)
    values, hit = affinity.pair_values(i, j)
    m = np.where(hit, values, np.nan).reshape(n, n)
    np.fill_diagonal(m, 0.0)
    what = f"{label or affinity.kind}: nearest partners only, {n} of {len(affinity.tasks)} tasks"
    return raster_heatmap(m, bounds, affinity.kind, what)


def _group_quality(affinity: Any, members: list[str]) -> float:
    """Cohesion for distances; mean off-diagonal gain within the group for gains (NaN for one task)."""
    if affinity.kind == "distance":
        return affinity.cohesion(members)
    if len(members) < 2:
        return float("nan")
    idx = positions(affinity.tasks, members)
    sub = affinity.values[np.ix_(idx, idx)]
    return float(sub[~np.eye(len(idx), dtype=bool)].mean())


def changes_markdown(summary: dict[str, Any]) -> str:
    """What changed since the previous grouping version, as markdown."""
    c, prev, version = summary["changes"], summary.get("previous_version"), summary.get("version")
    if prev is None:
        return f"First grouping of this data, method and selector: version {version}, {len(summary['tasks'])} tasks."
    if not c["changed"]:
        return f"No change since version {prev}: same tasks, same groups."
    lines = [f"Version {version} (previous: {prev}).", ""]
    if c["tasks_added"]:
        lines.append("Tasks added: " + ", ".join(f"`{t}`" for t in c["tasks_added"]))
    if c["tasks_removed"]:
        lines.append("Tasks removed: " + ", ".join(f"`{t}`" for t in c["tasks_removed"]))
    if c["moved"]:
        lines += ["", "| task that moved | was served with | now served with |", "|---|---|---|"]
        lines += [f"| `{m['task']}` | {', '.join(m['from']) or '(alone)'} | {', '.join(m['to']) or '(alone)'} |"
                  for m in c["moved"]]
    else:
        lines.append("No task present in both versions changed group.")
    return "\n".join(lines)


def chance_tasks(rows: list[dict[str, Any]], refs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Tasks whose single-task test result is not significantly better than a trivial predictor (one-sided 5%).

    ``refs[task]`` describes the task's test split:

    * binary, ``[positives, negatives]`` (or ``{"kind": "binary", "counts": [...]}``): the
      AUROC against 0.5, whose standard error for an uninformative score is
      ``sqrt((n1 + n0 + 1) / (12 n1 n0))``;
    * ``{"kind": "multiclass", "counts": [per class]}``: the accuracy against the majority
      class's rate ``p0``, standard error ``sqrt(p0 (1 - p0) / n)``;
    * ``{"kind": "regression", "z": z, "rmse_mean": r}``: the paired z of the per-sample
      squared errors of the training mean minus the model's (computed by the flow from the
      model's held-out losses), and the mean's RMSE.

    Returns ``{task: {"metric", "value", "reference"}}`` (the trivial predictor's value).
    """
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = r["task"]
        if r["setting"] != "single_task" or t not in refs or int(r.get("repeat", 0)) != 0 or r.get("metric") is None:
            continue
        ref = refs[t]
        if isinstance(ref, list | tuple):
            ref = {"kind": "binary", "counts": list(ref)}
        kind = ref.get("kind")
        if kind == "binary" and r.get("metric_name") == "auroc":
            n1, n0 = ref["counts"]
            if n1 < 1 or n0 < 1:
                continue
            se = float(np.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0)))
            if (r["metric"] - 0.5) / se < CHANCE_Z:
                out[t] = {"metric": "AUROC", "value": float(r["metric"]), "reference": 0.5}
        elif kind == "multiclass" and r.get("metric_name") == "accuracy":
            counts = [int(c) for c in ref["counts"]]
            n = sum(counts)
            if n < 1:
                continue
            p0 = max(counts) / n
            se = float(np.sqrt(max(p0 * (1 - p0), 1e-12) / n))
            if (r["metric"] - p0) / se < CHANCE_Z:
                out[t] = {"metric": "accuracy", "value": float(r["metric"]), "reference": p0}
        elif kind == "regression" and r.get("metric_name") == "rmse" and ref.get("z") is not None:
            if float(ref["z"]) < CHANCE_Z:
                out[t] = {"metric": "RMSE", "value": float(r["metric"]), "reference": float(ref["rmse_mean"])}
    return out


def _chance_text(t: str, c: dict[str, Any]) -> str:
    trivial = {"AUROC": "", "accuracy": f", majority class {c['reference']:.2f}",
               "RMSE": f", the training mean's {_short(c['reference'])}"}.get(c["metric"], "")
    value = _short(c["value"]) if c["metric"] == "RMSE" else f"{c['value']:.2f}"
    return f"`{t}` ({c['metric']} {value}{trivial})"


def run_line(summary: dict[str, Any]) -> str:
    """One line for a console: the run, its grouping version and what changed."""
    c = summary["changes"]
    version = f"version {summary['version']}"
    if summary.get("previous_version") is None:
        what = "first grouping"
    elif not c["changed"]:
        what = "no change"
    else:
        parts = []
        if c["tasks_added"]:
            parts.append(f"{len(c['tasks_added'])} tasks added")
        if c["tasks_removed"]:
            parts.append(f"{len(c['tasks_removed'])} removed")
        parts.append(f"{len(c['moved'])} moved")
        what = f"previous {summary['previous_version']}: " + ", ".join(parts)
    verdict = summary.get("recommended")
    pays = (summary.get("verdict") or {}).get("pays")
    meta = (f"; meta-learning: one init per group pays: {pays}" if summary.get("meta_training") else "")
    return (f"run {summary['run_id']}: {version} ({what}); {len(summary['tasks'])} tasks in "
            f"{len(summary['groups'])} groups" + (f"; recommended: {verdict}" if verdict else "")
            + (f" (grouping pays: {pays})" if verdict and pays else "") + meta
            + f"; report {summary['artifacts']['report']}")


META_SETTINGS = {"all": "one init for all tasks", "grouped": "one init per found group",
                 "random": "one init per random partition (same sizes)", "planted": "one init per planted family"}


def meta_what_to_do(summary: dict[str, Any]) -> str:
    """The opening paragraph of a ``--training meta`` run."""
    m, v = summary["meta_training"], summary["verdict"]
    n, k = len(summary["tasks"]), len(summary["groups"])
    if v["pays"] == "yes":
        head = (f"**What to do:** meta-train one initialisation per group ({k} inits for {n} tasks) and let a new "
                "task pick its init by leave-one-out on its support set. Grouping pays: ")
    elif v["pays"] == "undecided":
        head = "**What to do:** undecided: "
    else:
        head = ("**What to do:** the found groups are not worth their own initialisations: several inits help by "
                "themselves, but ")
    return (head + v["reason"] + f". Measured on {len(m['held_out'])} held-out tasks, adapting from each init on "
            f"K = {', '.join(str(s) for s in m['shots'])} support points; intervals are over the held-out tasks.")


def meta_section(summary: dict[str, Any]) -> list[str]:
    """The ``--training meta`` table: query loss per setting and K, and the groups' paired differences."""
    m = summary["meta_training"]
    shots = [str(s) for s in m["shots"]]
    lines = ["## Meta-learning on held-out tasks", "",
             "| setting | inits | " + " | ".join(f"K = {s}: query loss (95% CI)" for s in shots) + " |",
             "|---|---:|" + "---:|" * len(shots)]
    for name, per in m["settings"].items():
        cells = [f"{per[s]['mean']:.4g} [{per[s]['low']:.4g}, {per[s]['high']:.4g}]" for s in shots]
        lines.append(f"| {META_SETTINGS.get(name, name)} | {per[shots[0]]['inits']} | " + " | ".join(cells) + " |")
    if m.get("differences"):
        lines += ["", "Groups minus each other setting (paired over held-out tasks; negative = the groups' inits "
                  "have lower query loss):", "",
                  "| groups minus | " + " | ".join(f"K = {s} (95% CI)" for s in shots) + " |",
                  "|---|" + "---:|" * len(shots)]
        for name, per in m["differences"].items():
            cells = [f"{per[s]['mean']:+.4g} [{per[s]['low']:+.4g}, {per[s]['high']:+.4g}]" for s in shots]
            lines.append(f"| {META_SETTINGS.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", f"Loss: {m['loss']}, on each held-out task's query points after adapting on K support points "
              "from the init it picks by leave-one-out on its support set (a random setting averages over its "
              "partitions). Meta-training is first-order MAML, every init from the same seeded start "
              "(settings in the run's `meta_train`).", ""]
    return lines


def _short(v: Any) -> Any:
    """A diagnostic value for people: floats to 3 significant digits."""
    return float(f"{v:.3g}") if isinstance(v, float) else v


def _fixed(v: float, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, or 3 significant digits when that would print a non-zero as 0 (-0.000)."""
    text = f"{v:.{digits}f}"
    if v != 0 and float(text) == 0:
        return f"{v:.3g}"
    return text


def _count(n: float) -> str:
    """A large count for people: 1,234 / 12.3k / 4.56M / 7.89G (never ``1.03e+03k``)."""
    if abs(n) < 10_000:
        return f"{int(n):,}"
    for div, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        text = f"{n / div:.3g}"
        if "e" not in text and abs(float(text)) < 1000:
            return f"{text}{unit}"
    return f"{n:.3g}"


def settings_table(summary: dict[str, Any], totals: dict[str, dict[str, float]]) -> str:
    """The four-setting markdown table: cost, selection and test loss with 95% intervals, the verdict marked."""
    best = (summary.get("verdict") or {}).get("setting")
    sel_ci, test_ci, costs = (summary.get(k) or {} for k in ("selection_ci", "metrics_ci", "costs"))
    lines = ["| setting | models | parameters | FLOPs / sample | selection loss (95% CI) | test loss (95% CI) "
             "| test vs best other |", "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(v: float, ci: list[float] | None) -> str:
        return f"{v:.4f}" if not ci else f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"

    for s in SETTINGS:
        if s not in totals:
            continue
        others = [totals[o]["test_loss"] for o in totals if o != s]
        rel = f"{(totals[s]['test_loss'] / min(others) - 1.0) * 100:+.1f}%" if others else "–"
        mark = " **(recommended)**" if s == best and len(totals) > 1 else " (control)" if s in CONTROLS else ""
        c = costs.get(s, {})
        lines.append(f"| {s}{mark} | {c.get('models', '')} | {_count(c['parameters']) if c else ''} | "
                     f"{_count(c['flops']) if c else ''} | {cell(totals[s]['sel_loss'], sel_ci.get(s))} | "
                     f"{cell(totals[s]['test_loss'], test_ci.get(s))} | {rel} |")
    return "\n".join(lines)


def comparisons_table(summary: dict[str, Any]) -> list[str]:
    """Paired differences grouped - baseline on the selection and test parts, with their intervals."""
    comp = summary.get("comparisons") or {}
    if not comp:
        return []
    lines = ["| groups minus | on selection (95% CI) | on test (95% CI) | on test |", "|---|---:|---:|---|"]
    for b in SETTINGS:
        if b not in comp:
            continue
        sel, test = comp[b]["selection"], comp[b]["test"]
        word = ("groups better" if test["ci"][1] < 0 else "groups worse" if test["ci"][0] > 0
                else "no difference beyond the noise")
        lines.append(f"| {b}{' (control)' if b in CONTROLS else ''} | {sel['difference']:+.4f} "
                     f"[{sel['ci'][0]:+.4f}, {sel['ci'][1]:+.4f}] | {test['difference']:+.4f} "
                     f"[{test['ci'][0]:+.4f}, {test['ci'][1]:+.4f}] | {word} |")
    return lines


def what_to_do(summary: dict[str, Any], totals: dict[str, dict[str, float]]) -> str:
    """One paragraph a manager can act on: what to train, whether grouping pays, how sure we are."""
    v = summary.get("verdict") or {}
    n, k = len(summary["tasks"]), len(summary["groups"])
    repeats = int(summary.get("repeats") or 1)
    if not totals:
        return (f"**What to do:** the {n} tasks fall into {k} groups by their affinity. No models were trained "
                "(`--evaluate none`), so nothing says whether training in groups beats one model or one per task: "
                "run with `--evaluate all` before acting on the groups.")
    if len(totals) == 1 or v.get("setting") is None:
        return (f"**What to do:** only the groups' models were trained ({k} models for {n} tasks), so there is "
                "no baseline to compare with; run with `--evaluate all` to know whether grouping pays.")
    noise = (f"{repeats} trainings per setting" if repeats > 1 else
             "one training per setting (the intervals cover the evaluation sample, not training noise: "
             "use `--repeats 3` or more before a decision that matters)")
    setting, models = v["setting"], v["models"]
    if v["pays"] == "yes":
        head = (f"**What to do:** train the {n} tasks as the {k} groups below ({models} models). Grouping pays: "
                "the groups beat one model for all tasks and random groups of the same sizes beyond the noise, "
                "and nothing beats the groups.")
    elif v["pays"] == "no" and setting == "grouped":
        head = (f"**What to do:** train {models} models, as the groups below if you like, but the grouping itself "
                f"does not pay: {v['reason']}.")
    elif v["pays"] == "no":
        plan = {"all_together": f"one model for all {n} tasks",
                "single_task": f"one model per task ({n} models)"}.get(setting, setting)
        head = f"**What to do:** train {plan}. Grouping does not pay here: {v['reason']}."
    else:
        head = (f"**What to do:** the groups below ({models} models) are the cheapest setting as good as the best, "
                f"but it is not settled that they beat one model for all tasks: {v['reason']}. Train them if "
                "fewer models matter; more repeats (`--repeats`) would settle it.")
    return head + f" Based on {noise}; chosen on the selection split, which no model early-stopped on."


def _probe_samples(info: dict[str, Any]) -> str:
    """How many probe samples were used, and why when fewer than asked for."""
    used, asked, train = info.get("probe_samples"), info["samples"], info.get("train_rows")
    if used is None:
        return f"{asked} probe samples"
    if used < asked:
        return (f"{used} probe samples (all {train} training rows: the split keeps 60% of the rows for training; "
                f"--samples asked for {asked})")
    return f"{used} probe samples (of {train} training rows)"


def _head_line(head: dict[str, Any], tasks: int) -> str:
    """Which C the SWOLA heads were fitted with, and how it was chosen."""
    c = f"{head['c']:g}"
    if head.get("given"):
        return f"Probe heads: C = {c} for every task (given)."
    grid = ", ".join(f"{g:g}" for g in head["grid"])
    scored = head.get("scored", 0)
    fresh = ("every task scored in this run" if scored >= tasks else
             f"{scored} task{'s' if scored != 1 else ''} scored in this run, the rest from the store")
    return (f"Probe heads: one C = {c} for every task, the best mean held-out loss over all {tasks} tasks in a "
            f"shared {head['folds']}-fold cross-validation over C in {{{grid}}} ({fresh}).")


def _kinds_section(kinds: dict[str, dict[str, str]]) -> list[str]:
    """Each task's kind and why (inferred or set by --task-kind); summarised past 50 tasks."""
    lines = ["## Task kinds", "", "Change one with `--task-kind NAME=binary|multiclass|regression`.", ""]
    if len(kinds) <= 50:
        lines += ["| task | kind | why |", "|---|---|---|"]
        lines += [f"| `{t}` | {k['kind']} | {k.get('reason', '')} |" for t, k in kinds.items()]
    else:
        tally: dict[tuple[str, str], int] = {}
        for k in kinds.values():
            tally[(k["kind"], k.get("reason", ""))] = tally.get((k["kind"], k.get("reason", "")), 0) + 1
        lines += ["| kind | why | tasks |", "|---|---|---:|"]
        lines += [f"| {kind} | {why} | {n} |" for (kind, why), n in sorted(tally.items())]
    return lines + [""]


GRAPH_ROWS = 30
"""The report's neighbour table shows this many tasks; ``neighbours.parquet`` has them all."""


def graph_section(graph: dict[str, Any], rows: list[dict[str, Any]], kind: str) -> list[str]:
    """What the task graph saw: k and its rule, the chosen partition and why, modularity, each task's partners."""
    value = "distance" if kind == "distance" else "mutual gain"
    lines = ["## Task graph", "",
             f"Each task is joined to its {graph.get('neighbours')} nearest partners ({graph.get('neighbour_rule')}), "
             f"weighted by a local-scale kernel; {graph.get('edges')} edges were kept (an edge must be short on the "
             f"scale of both its tasks, `d^2 <= {graph.get('prune')}^2 sigma_i sigma_j`"
             + (", and join tasks of positive mutual gain" if kind != "distance" else "") + ").", "",
             f"Partition: {graph.get('chosen')}. Chosen by {graph.get('rule')}.", "",
             f"Modularity of the groups on this graph: **{float(graph.get('modularity') or 0.0):.3f}**.", ""]
    alone = graph.get("isolated") or []
    if alone:
        why = "no partner is near on both tasks' scales" + ("" if kind == "distance" else
                                                            ", or no partner gains both ways")
        lines += [f"Left alone ({why}): "
                  + ", ".join(f"`{t}`" for t in alone[:20]) + (f" and {len(alone) - 20} more" if len(alone) > 20 else "")
                  + ".", ""]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["task"], []).append(r)
    if by:
        lines += [f"Nearest partners ({value}; \"(pruned)\" marks a partner the graph did not join; "
                  "`neighbours.parquet` has every task):", "", "| task | partners |", "|---|---|"]
        for t, rs in list(by.items())[:GRAPH_ROWS]:
            cells = ", ".join(f"`{r['partner']}` {r['value']:.3g}{'' if r['edge'] else ' (pruned)'}"
                              for r in sorted(rs, key=lambda r: r["rank"]))
            lines.append(f"| `{t}` | {cells} |")
        if len(by) > GRAPH_ROWS:
            lines.append(f"| ... | {len(by) - GRAPH_ROWS} more tasks in `neighbours.parquet` |")
        lines.append("")
    return lines


def fidelity_line(fid: dict[str, Any], method: str) -> str:
    """The report's line on how well this run's affinity predicts the transfer measured by pair trainings."""
    sp = fid.get("spearman")
    shown = "undefined (a constant matrix)" if sp is None or not np.isfinite(sp) else f"**{sp:+.2f}**"
    own = (" (HOA's own trainings: its matrix is their validation losses, the reference their selection rows)"
           if method == "hoa" else "")
    return (f"**Fidelity**: this `{method}` affinity's Spearman correlation with the measured transfer "
            f"`L_j(alone) - L_j(with i)` over {fid['pairs']} ordered pairs is {shown}; top-{fid['k']} partner "
            f"precision {fid['topk']:.2f}. Measured from {fid['source']}{own}; {fid['nonzero']:.0%} of the measured transfers "
            "are non-zero beyond their 95% interval (bench/fidelity.py compares every method).")


def trunk_line(trunk: dict[str, Any]) -> str:
    """The report's line naming the trunk every probe and model used, its size and its checkpoint."""
    shape = trunk.get("input_shape")
    shown = "x".join(map(str, shape)) if shape else "?"
    params = trunk.get("parameters")
    size = f", {params:,} trunk parameters per model" if isinstance(params, int) else ""
    given = f"`{trunk.get('name')}`" if trunk.get("name") == trunk.get("resolved") else \
        f"`{trunk.get('resolved')}` (`--trunk {trunk.get('name')}`)"
    start = (f"; every probe and model starts from the checkpoint `{trunk['checkpoint']}`" if trunk.get("checkpoint")
             else "; no checkpoint: a seeded initialisation")
    return f"Trunk {given} on inputs of shape {shown}{size}{start}."


def render_report(summary: dict[str, Any], affinity: AffinityMatrix, rows: list[dict[str, Any]],
                  totals: dict[str, dict[str, float]], info: dict[str, Any]) -> str:
    """The markdown report of one run."""
    opening = meta_what_to_do(summary) if summary.get("meta_training") else what_to_do(summary, totals)
    title = "taskgrouping evaluate" if summary.get("selector") == "given" else "taskgrouping run"
    lines = [f"# {title} {summary['run_id']}", "", opening, ""]
    lines.append(f"Data `{info['data']}`, {len(summary['tasks'])} tasks, method `{summary['method']}`, "
                 f"selector `{summary['selector']}`, seed {info['seed']}, {_probe_samples(info)}.")
    lines.append("")
    head = summary.get("head")
    if head:
        lines += [_head_line(head, len(summary["tasks"])), ""]
    distance = summary.get("distance") or {}
    if distance.get("why"):
        lines += [f"**Tasks that share too few samples**: {distance['why']} (distance: {distance['probe']}, the "
                  "energy distance between the tasks' per-sample convergence signatures).", ""]
    elif distance.get("probe"):
        lines += [f"Distance: {distance['probe']} (each task probed on its own samples).", ""]
    if summary.get("meta_training"):
        lines += meta_section(summary)
    features = summary.get("features") or []
    if features:
        feats = ", ".join(f"`{f}`" for f in features[:20]) + (f" and {len(features) - 20} more"
                                                               if len(features) > 20 else "")
        lines += [f"Features ({len(features)}): {feats}. Label columns (`y_*` or named by `--tasks`) are never "
                  "features unless `--features` names them.", ""]
    trunk = summary.get("trunk")
    if trunk:
        lines += [trunk_line(trunk), ""]
    fid = summary.get("fidelity")
    if fid:
        lines += [fidelity_line(fid, summary.get("method", "")), ""]
    warned = summary.get("warnings") or []
    if warned:
        what = {"id": "ID-like", "constant": "constant", "dropped": "left out", "imputed": "imputed",
                "skipped": "task left out"}
        lines += [f"**Column warnings** ({len(warned)}; which columns are used changes only with `--features`, "
                  "`--tasks`, `--impute` or `--skip-unusable-tasks`):", "", "| column | what | why |", "|---|---|---|"]
        lines += [f"| `{w['column']}` | {what.get(w['kind'], w['kind'])} | {w['message']} |" for w in warned[:50]]
        if len(warned) > 50:
            lines.append(f"| ... | | {len(warned) - 50} more in the summary's `warnings` |")
        lines.append("")
    if totals:
        v = summary.get("verdict") or {}
        lines += ["## Recommendation", ""]
        if v.get("setting") is not None and len(totals) > 1:
            lines += [f"Recommended: **{v['setting']}** ({v['models']} model{'s' if v['models'] != 1 else ''}, "
                      f"{_count(v['parameters'])} parameters); "
                      f"grouping pays: **{v['pays']}**, because {v['reason']}.", ""]
        lines += [settings_table(summary, totals), ""]
        comp = comparisons_table(summary)
        if comp:
            lines += ["Paired differences (the same rows and repeats; negative = the groups have lower loss):", "",
                      *comp, ""]
        repeats = int(summary.get("repeats") or 1)
        lines += ["Losses are summed over tasks (binary: BCE, multi-class: cross-entropy, regression: squared "
                  "error on standardised targets) and averaged over " + (f"{repeats} trainings" if repeats > 1 else
                  "one training") + ". Every task trains on the same 60% of rows; each task's other labelled rows "
                  "are divided into validation (early stopping, 10%), selection (the verdict, 15%) and test "
                  "(reported only, 15%), by class for classification tasks. The rule: among settings whose "
                  "selection loss cannot be told from the best (the 95% interval of the difference reaches 0), "
                  "recommend the one with the fewest models; `random` (random groups of the same sizes, a new "
                  "partition per repeat) is a control and never recommended. Intervals combine training noise "
                  "(between repeats) and the evaluation sample (between rows).", ""]
    sil = (info.get("selection") or {}).get("silhouette")
    if isinstance(sil, float) and np.isfinite(sil) and sil < WEAK_SILHOUETTE and len(summary["groups"]) > 1:
        lines += [f"**No clear group structure**: the groups' silhouette is {sil:.2f} (below "
                  f"{WEAK_SILHOUETTE}); the tasks are about as close to other groups as to their own, so treat "
                  "the groups as a weak preference and let the table above decide.", ""]
    chance = info.get("chance") or {}
    if chance:
        flagged = ", ".join(_chance_text(t, c) for t, c in chance.items())
        lines += [f"**At chance**: {flagged}: trained alone, the model does no better on the test samples than "
                  "chance: a binary task's ranking than a coin, a multi-class task's accuracy than always the "
                  "majority class, a regression than the training mean (one-sided 5%). They stay in the groups the affinity chose (a task nothing predicts "
                  "neither helps nor is helped much, and moving it would change the selection); if they are "
                  "noise, leave them out with `--tasks '" + ",".join(f"!{t}" for t in chance) + "'`.", ""]
    if affinity.kind == "distance":
        lines += ["## Groups", "", "| group | tasks | cohesion (mean within D / mean D) |", "|---:|---|---:|"]
    else:
        lines += ["## Groups", "", "| group | tasks | mean within-group gain |", "|---:|---|---:|"]
    served = summary["served"]
    helpers = False
    for gi, g in enumerate(summary["groups"]):
        shown = []
        for t in g:
            helpers |= served[t] != gi
            shown.append(f"`{t}`" if served[t] == gi else f"(`{t}`)")
        quality = "– (one task)" if len(g) < 2 else _fixed(_group_quality(affinity, g))
        lines.append(f"| {gi} | {', '.join(shown)} | {quality} |")
    lines.append("")
    if helpers:
        lines += ["A task in parentheses trains with that group as a helper; it is served by another.", ""]
    if "changes" in summary:
        lines += ["## Changes since the last version", "", changes_markdown(summary), ""]
    regroup = summary.get("regroup") or {}
    if regroup.get("mode") in ("incremental", "full"):
        how = ("incremental: " if regroup["mode"] == "incremental" else "full selection: ") + regroup["reason"]
        lines += [f"Regrouping {how}. (`--regroup full` always selects from scratch.)", ""]
    if info.get("ari") is not None:
        lines += [f"Adjusted Rand index against the planted groups: **{info['ari']:.3f}**", ""]
    sel = info.get("selection", {})
    if sel:
        diag = {k: _short(v) for k, v in sel.items()
                if k in ("k", "silhouette", "exact", "budget", "overlap", "oracle")}
        if summary.get("objective") is not None:
            diag["objective"] = _short(float(summary["objective"]))
        lines += ["Selector diagnostics: " + ", ".join(f"{k} = {v}" for k, v in diag.items()), ""]
    if summary.get("graph"):
        lines += graph_section(summary["graph"], info.get("neighbours") or [], affinity.kind)
    lines += ["![affinity heatmap](heatmap.png)", ""]  # tasks/report.py HEATMAP_LINK
    by = {(r["setting"], r["task"]): r for r in rows if int(r.get("repeat", 0)) == 0}
    kinds = info.get("task_kinds") or {}
    if rows:
        lines += ["## Per task (test)", "", "Mean test loss ± the half-width of its 95% interval; the metric is "
                  "the first training's.", "",
                  "| task | kind | " + " | ".join(SETTINGS) + " | metric (grouped) |",
                  "|---|---|" + "---:|" * (len(SETTINGS) + 1)]
    ci = info.get("per_task_ci") or {}
    for t in summary["tasks"] if rows else []:
        cells = [(f"{ci[(s, t)][0]:.4f} ± {ci[(s, t)][1]:.4f}" if (s, t) in ci else f"{by[(s, t)]['test_loss']:.4f}")
                 if (s, t) in by else "" for s in SETTINGS]
        g = by.get(("grouped", t))
        metric = f"{g['metric_name']} {g['metric']:.3f}" if g and g["metric"] is not None else ""
        lines.append(f"| `{t}` | {kinds.get(t, {}).get('kind', '')} | " + " | ".join(cells) + f" | {metric} |")
    lines.append("")
    if kinds:
        lines += _kinds_section(kinds)
    c = summary["counts"]
    lines += ["## Work", "",
              f"Probes computed {c['probes_computed']}, reused {c['probes_reused']}; pairs computed "
              f"{c['pairs_computed']}, reused {c['pairs_reused']}; groups trained {c['groups_trained']}, "
              f"reused {c['groups_reused']}.", ""]
    pairs = summary.get("pairs") or {}
    if pairs.get("form") == "neighbours":
        t = len(summary["tasks"])
        lines += [f"Sparse affinity (`--pairs {summary['settings'].get('pairs', 'auto')}`): each task's "
                  f"{pairs['stored']} nearest partners, found among {pairs['candidates']} candidates from "
                  f"{pairs['sketch_width']}-wide sketches, with exact distances for {pairs['pairs_exact']:,} pairs "
                  f"({100 * pairs['pairs_exact'] / max(1, t * (t - 1) // 2):.2f}% of all {t * (t - 1) // 2:,}).", ""]
    lines += ["| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary["seconds"].items()]
    return "\n".join(lines) + "\n"
