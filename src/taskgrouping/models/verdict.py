"""Intervals of total losses from repeated trainings, paired comparisons and the verdict (methods.md section 7).

A setting's total loss on a part (selection or test) is the sum over tasks of each
task's mean per-sample loss on its own rows of that part, averaged over the R repeated
trainings. Its uncertainty has two sources, both estimated:

* training noise (initialisation, batch order, early stopping): the variance of the
  R per-repeat totals, divided by R (needs R >= 2);
* the evaluation sample (which rows happened to be held out): the influence-function
  (sandwich) variance over rows of the repeat-averaged losses, which counts a row that
  several tasks share once, with its covariance.

The 95% interval is the mean +- t * se, with Welch-Satterthwaite degrees of freedom.
Differences between two settings are paired: the same rows and the same repeat index,
so most of the sample noise cancels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
"""Confidence level of every interval."""

PartLosses = dict[str, np.ndarray]
"""One setting on one part: task -> (R, n_task) per-sample losses, rows in the part's order."""


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval; ``se`` combines training and sample noise, ``df`` their degrees of freedom."""

    mean: float
    lo: float
    hi: float
    se: float
    df: float

    def to_list(self) -> list[float]:
        """``[lo, hi]``."""
        return [self.lo, self.hi]


def estimate(per_task: PartLosses, rows: dict[str, np.ndarray]) -> Estimate:
    """Mean total loss over repeats and its interval, from per-sample losses (see the module's docstring).

    ``per_task[t]`` is (R, n_t): repeat r's loss on each of task t's rows ``rows[t]``
    (row indices of the dataset; a row shared by several tasks is one sample). Tasks
    with no rows contribute nothing.
    """
    # the t quantile from scipy.special: importing scipy.stats would cost every run's report 0.3 s more
    from scipy import special

    tasks = [t for t in per_task if per_task[t].shape[1] > 0]
    if not tasks:
        return Estimate(0.0, 0.0, 0.0, 0.0, float("inf"))
    repeats = {per_task[t].shape[0] for t in tasks}
    if len(repeats) != 1:
        raise ValueError(f"every task needs the same number of repeats, got {sorted(repeats)}")
    r = repeats.pop()
    totals = np.sum([per_task[t].astype(np.float64).mean(axis=1) for t in tasks], axis=0)  # (R,)
    mean = float(totals.mean())
    v_train = float(totals.var(ddof=1)) / r if r > 1 else 0.0
    idx, infl = [], []
    for t in tasks:
        avg = per_task[t].astype(np.float64).mean(axis=0)
        n = avg.size
        scale = np.sqrt(n / (n - 1.0)) if n > 1 else 0.0  # unbiased for one task on its own
        idx.append(np.asarray(rows[t], dtype=np.int64))
        infl.append((avg - avg.mean()) * scale / n)
    z = np.bincount(np.concatenate(idx), weights=np.concatenate(infl))
    v_sample = float(np.sum(z * z))
    df_sample = max(1.0, float(min(per_task[t].shape[1] for t in tasks)) - 1.0)
    var = v_train + v_sample
    if var <= 0.0:
        return Estimate(mean, mean, mean, 0.0, float("inf"))
    denom = (v_train**2 / (r - 1) if r > 1 else 0.0) + v_sample**2 / df_sample
    df = var**2 / denom if denom > 0 else float("inf")
    q = float(special.stdtrit(df, 0.5 + LEVEL / 2)) if np.isfinite(df) else float(special.ndtri(0.5 + LEVEL / 2))
    se = float(np.sqrt(var))
    return Estimate(mean, mean - q * se, mean + q * se, se, float(df))


def difference(a: PartLosses, b: PartLosses, rows: dict[str, np.ndarray]) -> Estimate:
    """Paired estimate of total(a) - total(b) over the same rows and repeat indices."""
    missing = set(a) ^ set(b)
    if missing:
        raise ValueError(f"both settings must cover the same tasks; differ on {sorted(missing)[:3]}")
    return estimate({t: a[t].astype(np.float64) - b[t].astype(np.float64) for t in a}, rows)


@dataclass(frozen=True)
class Cost:
    """What a setting costs to serve every task: models, trainable parameters, inference FLOPs per sample."""

    models: int
    parameters: int
    flops: int

    def to_dict(self) -> dict[str, int]:
        """``{"models", "parameters", "flops"}``."""
        return {"models": self.models, "parameters": self.parameters, "flops": self.flops}


def _models(n: int) -> str:
    return "1 model" if n == 1 else f"{n} models"


def decide(selection: dict[str, Estimate], pairwise: dict[tuple[str, str], Estimate], costs: dict[str, Cost],
           controls: tuple[str, ...] = ("random",), grouped: str = "grouped") -> dict[str, Any]:
    """The verdict: among settings whose selection loss cannot be told from the best, the one with fewest models.

    ``selection[s]`` is each setting's selection total; ``pairwise[(a, b)]`` the paired
    selection difference a - b (for every ordered pair of evaluated settings). A setting
    is tied with the best when the interval of its difference from the best reaches 0.
    Among tied settings the fewest models win (then a baseline over the groups when
    the counts are equal, as they are then the same models; then the lower loss).
    Controls are never recommended.

    ``pays``: ``yes`` when the groups are recommended and beat beyond the interval both
    all-together (the cheapest alternative, one model) and random groups of the same
    sizes (the same number of models, tasks placed blindly); ``no`` when another setting
    is recommended (it is better, or as good with fewer models), or when random groups
    do as well (the number of models helps, not which tasks share one); ``undecided``
    when the groups are recommended and beat random groups but cannot be told from
    all-together, or no baseline was trained.
    """
    cands = [s for s in selection if s not in controls]
    if not cands:
        return {"setting": None, "models": None, "parameters": None, "pays": "undecided",
                "reason": "only controls were evaluated"}
    best = min(cands, key=lambda s: selection[s].mean)
    tied = [s for s in cands if s == best or pairwise[(s, best)].lo <= 0.0]
    choice = min(tied, key=lambda s: (costs[s].models, s == grouped, selection[s].mean))
    out: dict[str, Any] = {"setting": choice, "models": costs[choice].models,
                           "parameters": costs[choice].parameters}
    others = [s for s in cands if s != grouped]

    def diff(a: str, b: str) -> str:
        d = pairwise[(a, b)]
        return f"{a} - {b} = {d.mean:+.4f}, 95% interval [{d.lo:+.4f}, {d.hi:+.4f}]"

    if grouped not in cands or not others:
        out |= {"pays": "undecided", "reason": "no baseline was trained to compare the groups with"
                if grouped in cands else "the groups were not evaluated"}
        return out
    if choice != grouped:
        if choice == best:
            why = (f"{choice} ({_models(costs[choice].models)}) has the lowest selection loss"
                   + ("" if grouped in tied else f" and the groups are worse beyond the interval ({diff(grouped, choice)})")
                   + ("" if grouped not in tied else f"; the groups cannot be told from it ({diff(grouped, choice)}) "
                      "and need more models"))
        else:
            why = (f"{choice} ({_models(costs[choice].models)}) cannot be told from the best setting ({best}) on "
                   f"selection loss and needs the fewest models ({diff(choice, best)})")
        out |= {"pays": "no", "reason": why}
        return out
    control = next((c for c in controls if c in selection), None)
    if control is not None and pairwise[(grouped, control)].hi >= 0.0:
        out |= {"pays": "no", "reason": f"random groups of the same sizes do as well as the groups "
                                        f"({diff(grouped, control)}): what helps is the number of models, not "
                                        "which tasks share one"}
    elif "all_together" in cands and pairwise[(grouped, "all_together")].hi < 0.0:
        out |= {"pays": "yes", "reason": f"the groups ({_models(costs[grouped].models)}) beat all-together "
                                         f"({diff(grouped, 'all_together')}) and random groups of the same sizes "
                                         + (f"({diff(grouped, control)}) " if control else "")
                                         + "beyond the interval, and no setting is better beyond it"}
    else:
        vs = "all_together" if "all_together" in cands else others[0]
        out |= {"pays": "undecided", "reason": f"the groups are recommended (fewest models among the settings as "
                                               f"good as the best) but cannot be told from {vs} ({diff(grouped, vs)})"}
    return out


@dataclass
class SettingsAnalysis:
    """Every evaluated setting's totals with intervals, the paired comparisons, costs and the verdict."""

    repeats: int
    test: dict[str, Estimate]
    selection: dict[str, Estimate]
    per_task: dict[tuple[str, str], Estimate]
    """(setting, task) -> the task's test loss over repeats, with its interval."""
    comparisons: dict[str, dict[str, Estimate]]
    """baseline -> {"selection", "test"}: the paired difference grouped - baseline."""
    costs: dict[str, Cost]
    verdict: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The JSON-able part of the run summary (``metrics`` is the mean test total, as always)."""
        def paired(e: Estimate) -> dict[str, Any]:
            return {"difference": e.mean, "ci": e.to_list()}

        return {
            "metrics_ci": {s: e.to_list() for s, e in self.test.items()},
            "selection_metrics": {s: e.mean for s, e in self.selection.items()},
            "selection_ci": {s: e.to_list() for s, e in self.selection.items()},
            "comparisons": {b: {part: paired(e) for part, e in parts.items()} for b, parts in self.comparisons.items()},
            "costs": {s: c.to_dict() for s, c in self.costs.items()},
            "verdict": self.verdict,
            "repeats": self.repeats,
        }


HeldoutReader = Any
"""``key -> {task: {"selection": (rows, losses), "test": (rows, losses)}}`` (a model's held-out losses)."""


def analyse(group_results: dict[str, list[dict[str, Any]]], read_heldout: HeldoutReader,
            controls: tuple[str, ...] = ("random",)) -> SettingsAnalysis:
    """Intervals, comparisons, costs and the verdict from the trained models of every setting and repeat.

    ``group_results[setting]`` lists the setting's models: ``repeat``, model ``key``, the
    tasks it ``serves`` and its ``cost`` (``parameters``, ``flops``).
    """
    cache: dict[str, Any] = {}

    def heldout(key: str) -> Any:
        if key not in cache:
            cache[key] = read_heldout(key)
        return cache[key]

    losses: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {}
    rows: dict[str, dict[str, np.ndarray]] = {"selection": {}, "test": {}}
    repeats = 0
    for setting, entries in group_results.items():
        by_part: dict[str, dict[str, list[np.ndarray]]] = {"selection": {}, "test": {}}
        for e in sorted(entries, key=lambda e: int(e.get("repeat", 0))):
            repeats = max(repeats, int(e.get("repeat", 0)) + 1)
            per = heldout(e["key"])
            for t in e["serves"]:
                for part in ("selection", "test"):
                    r, loss = per[t][part]
                    known = rows[part].setdefault(t, r)
                    if known.shape != r.shape or not np.array_equal(known, r):
                        raise ValueError(f"task {t!r}: the {part} rows differ between models (data changed?)")
                    by_part[part].setdefault(t, []).append(loss)
        losses[setting] = by_part
    arrays = {s: {part: {t: np.stack(v) for t, v in tasks.items()} for part, tasks in parts.items()}
              for s, parts in losses.items()}
    test = {s: estimate(a["test"], rows["test"]) for s, a in arrays.items()}
    selection = {s: estimate(a["selection"], rows["selection"]) for s, a in arrays.items()}
    per_task = {(s, t): estimate({t: v}, {t: rows["test"][t]}) for s, a in arrays.items() for t, v in a["test"].items()}
    pairwise = {(a, b): difference(arrays[a]["selection"], arrays[b]["selection"], rows["selection"])
                for a in arrays for b in arrays if a != b}
    comparisons = {b: {"selection": pairwise[("grouped", b)],
                       "test": difference(arrays["grouped"]["test"], arrays[b]["test"], rows["test"])}
                   for b in arrays if b != "grouped" and "grouped" in arrays}
    costs = {}
    for s, entries in group_results.items():
        first = [e for e in entries if int(e.get("repeat", 0)) == 0]
        costs[s] = Cost(len(first), sum(int(e["cost"]["parameters"]) for e in first),
                        sum(int(e["cost"]["flops"]) for e in first))
    verdict = decide(selection, pairwise, costs, controls)
    return SettingsAnalysis(repeats, test, selection, per_task, comparisons, costs, verdict)
