"""The report step: write the run's folder and publish its Prefect artifacts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from taskgrouping.hashing import stable_hash
from taskgrouping.models.evaluate import CONTROLS, SETTINGS, setting_totals
from taskgrouping.models.verdict import analyse
from taskgrouping.report import chance_tasks, changes_markdown, heatmap_png, render_report
from taskgrouping.selectors.base import Grouping, adjusted_rand
from taskgrouping.storage import Store
from taskgrouping.storage.integrity import intact_bytes, recorded
from taskgrouping.storage.store import atomic_write_bytes
from taskgrouping.versions import data_label, grouping_changes, lineage_key

AFFINITY_TABLE_MAX = 100
"""Largest task count whose affinity matrix is published as a UI table."""


HEATMAP_CODE = "2"
"""Bump when :func:`~taskgrouping.report.heatmap_png` draws differently (stored heatmaps are keyed by it)."""


def _heatmap(st: Store, affinity_path: Path, affinity: Any, grouping: Grouping, label: str) -> tuple[bytes, Path | None]:
    """The run's heatmap PNG: from the store when the same affinity file, groups and label were drawn before.

    Drawing it takes 0.5 s for 15 tasks (matplotlib's import and render; past 80 tasks a
    raster, 0.08 s at 1,000); an identical rerun copies it. The key is the affinity file's recorded checksum with the groups, so a
    changed matrix or grouping draws a new one.
    """
    digest = recorded(affinity_path)
    path = None
    if digest is not None:
        path = st.heatmap_path(stable_hash("heatmap", HEATMAP_CODE, digest, grouping.groups,
                                           sorted(grouping.served.items()), label))
        cached = intact_bytes(path)
        if cached is not None:
            return cached, path
    png = heatmap_png(affinity, grouping.groups, grouping.served, label=label)
    if path is not None:
        atomic_write_bytes(path, png)
    return png, path


def graph_summary(info: dict[str, Any], graph: Any, labels: Any, rows: list[dict[str, Any]],
                  regroup: dict[str, Any] | None) -> dict[str, Any]:
    """The summary's ``graph``: how k and the partition were chosen, modularity, and each task's nearest partner.

    ``info`` is the selection's diagnostics; after an incremental regroup (or any selection
    that did not build the graph) the graph's own facts come from ``graph``, the one the
    report built, and ``chosen`` says how the groups were kept.
    """
    from taskgrouping.selectors.graph import PRUNE, graph_modularity

    out = {"neighbours": graph.k, "neighbour_rule": graph.rule, "edges": int(len(graph.edges)), "prune": PRUNE,
           "isolated": [graph.tasks[i] for i in graph.isolated()]}
    for k in ("chosen", "rule", "candidates"):
        if k in info:
            out[k] = info[k]
    if "chosen" not in out and regroup:
        out["chosen"] = f"{regroup.get('mode', 'kept')}: {regroup.get('reason', '')}"
        out["rule"] = "the previous version's groups, new tasks placed by the task graph"
    out["modularity"] = graph_modularity(graph, labels)
    return out | {"nearest": {r["task"]: [r["partner"], r["value"]] for r in rows if r["rank"] == 1}}


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def report_step(config: dict[str, Any], run_id: str, tasks: list[str], selection: dict[str, Any],
                affinity_path: str, group_results: dict[str, list[dict[str, Any]]],
                counts: dict[str, int], seconds: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
    """Assemble metrics, write ``runs/<run_id>/`` and publish artifacts; return the run summary."""
    t_report = time.perf_counter()
    st = Store(config["store"])
    affinity = st.read_affinity(Path(affinity_path))
    grouping = Grouping(groups=selection["groups"], served=selection["served"], info=selection["info"],
                        objective=selection.get("objective"))
    rows: list[dict[str, Any]] = []
    for setting, groups in group_results.items():
        index: dict[int, int] = {}
        for g in groups:
            repeat = int(g.get("repeat", 0))
            gi = index[repeat] = index.get(repeat, -1) + 1
            for r in g["results"]:
                rows.append({"setting": setting, "group": gi, "repeat": repeat, **r})
    totals = setting_totals(rows)
    analysis = analyse(group_results, st.read_model_heldout, CONTROLS) if group_results else None
    ari = None
    truth = extra.get("ground_truth")
    if truth and all(t in truth for t in tasks):
        ari = adjusted_rand([truth[t] for t in tasks], grouping.labels(tasks))

    run_dir = st.run_dir(run_id)
    png, stored_png = _heatmap(st, Path(affinity_path), affinity, grouping, f"{config['method']} {affinity.kind}")
    artifacts = {  # the affinity and heatmap are the store's files, linked (a copy where links are refused)
        "affinity": str(st.copy_file(Path(affinity_path), run_dir / "affinity.parquet")),
        "groups": str(st.write_groups(run_id, grouping)),
        "metrics": str(st.write_metrics(run_id, rows)),
        "report": str(run_dir / "report.md"),
        "heatmap": str(st.copy_file(stored_png, run_dir / "heatmap.png") if stored_png is not None
                       else st.write_run_file(run_id, "heatmap.png", png)),
    }
    graph, graph_info = None, None
    if config["selector"] == "graph" and len(tasks) > 1:
        from taskgrouping.selectors.graph import build_graph, neighbour_rows

        task_graph = build_graph(affinity)
        graph = neighbour_rows(affinity, task_graph)
        artifacts["neighbours"] = str(st.write_neighbours(run_id, graph))
        graph_info = graph_summary(selection["info"], task_graph, grouping.labels(affinity.tasks), graph,
                                   selection.get("regroup"))
    summary: dict[str, Any] = {
        "run_id": run_id,
        "store": str(st.root),
        "method": config["method"],
        "selector": config["selector"],
        "tasks": tasks,
        "groups": grouping.groups,
        "served": grouping.served,
        "artifacts": artifacts,
        "counts": counts,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "metrics": {s: totals[s]["test_loss"] if s in totals else None for s in SETTINGS},
        "val_metrics": {s: totals[s]["val_loss"] for s in totals},
        "metrics_ci": {}, "selection_metrics": {}, "selection_ci": {}, "comparisons": {}, "costs": {},
        "verdict": {"setting": None, "models": None, "parameters": None, "pays": "undecided",
                    "reason": "no models were trained (--evaluate none)"},
        "repeats": config.get("repeats", 1),
        "ground_truth_ari": ari,
        "selection": selection["info"],
        "probe_bytes_per_task": extra.get("probe_bytes_mean"),
        "method_info": extra.get("method_info"),
        "objective": grouping.objective,
        "data": config["data"],
        "seed": config["seed"],
        "settings": config,
        "features": extra.get("features", []),
        "task_kinds": {t: k["kind"] for t, k in (extra.get("task_kinds") or {}).items()},
        "models": extra.get("models", {}),
        "setting_models": extra.get("setting_models", {}),
        "trunk": extra.get("trunk"),
        "fidelity": extra.get("fidelity"),
        "warnings": list(extra.get("warnings") or []),
        "dataset_key": extra.get("dataset_key"),
        "probe_samples": extra.get("probe_samples"),
        "at_chance": sorted(chance_tasks(rows, extra.get("test_counts") or {})),
        "regroup": selection.get("regroup"),
        "distance": extra.get("distance"),
        "head": extra.get("head"),
        "meta_training": extra.get("meta_training"),
        "graph": graph_info,
        "pairs": extra.get("pairs"),
    }
    if analysis is not None:
        summary |= analysis.summary()
    if summary["meta_training"]:
        v = summary["meta_training"]["verdict"]
        summary["verdict"] = {"setting": None, "models": None, "parameters": None, "pays": v["pays"],
                              "reason": v["reason"]}
    summary["recommended"] = summary["verdict"]["setting"] if len(totals) > 1 else None
    # a new grouping version when the grouping (or the task set) changed since the last one
    lineage = lineage_key(config["data"], config["method"], config["selector"], config.get("lineage"))
    previous = st.latest_version(lineage)
    current = {"tasks": tasks, "groups": grouping.groups, "served": grouping.served}
    changes = grouping_changes(previous, current)
    if changes["changed"]:
        version = st.add_version(lineage, current | {
            "run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "data": config["data"],
            "method": config["method"], "selector": config["selector"], "changes": changes,
            "lineage_name": config.get("lineage"),
            "previous_version": previous["version"] if previous else None})
    else:
        version = previous["version"] if previous else 0
    summary |= {"version": version, "previous_version": previous["version"] if previous else None,
                "changes": changes, "lineage": lineage, "lineage_name": config.get("lineage")}
    report_s = time.perf_counter() - t_report
    seconds = {k: v for k, v in seconds.items() if k != "total"} | {
        "report": report_s, "total": seconds["total"] + report_s}
    summary["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    info = {"data": config["data"], "seed": config["seed"], "samples": config["samples"], "ari": ari,
            "selection": selection["info"], "probe_samples": extra.get("probe_samples"),
            "train_rows": extra.get("train_rows"), "task_kinds": extra.get("task_kinds"),
            "chance": chance_tasks(rows, extra.get("test_counts") or {}),
            "per_task_ci": {} if analysis is None else {k: (e.mean, (e.hi - e.lo) / 2) for k, e in analysis.per_task.items()}}
    info["neighbours"] = graph
    text = render_report(summary, affinity, rows, totals, info)
    st.write_run_file(run_id, "report.md", text.encode())
    st.write_run_file(run_id, "summary.json", json.dumps(summary, indent=2).encode())
    _publish(summary, rows, totals, text, affinity)
    return summary


def _publish(summary: dict[str, Any], rows: list[dict[str, Any]], totals: dict[str, dict[str, float]],
             text: str, affinity: Any) -> None:
    """Groups, affinity, the four-setting table, the changes and the report as Prefect artifacts (the UI)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    suffix = artifact_suffix(summary)
    create_table_artifact(
        key=f"taskgrouping-groups-{suffix}",
        table=[{"group": gi, "tasks": ", ".join(g)} for gi, g in enumerate(summary["groups"])],
        description=f"Task groups of run {summary['run_id']}",
    )
    ci, costs = summary.get("metrics_ci") or {}, summary.get("costs") or {}
    create_table_artifact(
        key=f"taskgrouping-settings-{suffix}",
        table=[{"setting": s, "models": costs.get(s, {}).get("models"),
                "total_selection_loss": round(v["sel_loss"], 5), "total_test_loss": round(v["test_loss"], 5),
                "test_ci_low": round(ci[s][0], 5) if s in ci else None,
                "test_ci_high": round(ci[s][1], 5) if s in ci else None}
               for s, v in totals.items()],
        description="Total loss per evaluation setting (summed over tasks, mean over repeats; 95% intervals)",
    )
    if getattr(affinity, "sparse", False):
        create_markdown_artifact(
            key=f"taskgrouping-affinity-{suffix}",
            markdown=f"The neighbour affinity of {len(affinity.tasks)} tasks ({affinity.k} nearest partners each, "
                     f"exact distances) is in `{summary['artifacts']['affinity']}` (long form: task_a, task_b, "
                     "value, kind, rank).",
            description=f"Affinity of run {summary['run_id']}",
        )
    elif len(affinity.tasks) <= AFFINITY_TABLE_MAX:
        create_table_artifact(
            key=f"taskgrouping-affinity-{suffix}",
            table={"task": affinity.tasks} | {b: [round(float(v), 6) for v in affinity.values[:, j]]
                                              for j, b in enumerate(affinity.tasks)},
            description=f"Affinity ({affinity.kind}; row = receiver, column = source) of run {summary['run_id']}",
        )
    else:  # a T x T table is too large for the UI (a million cells at 1,000 tasks)
        create_markdown_artifact(
            key=f"taskgrouping-affinity-{suffix}",
            markdown=f"The {len(affinity.tasks)} x {len(affinity.tasks)} affinity ({affinity.kind}) is in "
                     f"`{summary['artifacts']['affinity']}` (long form: task_a, task_b, value, kind); "
                     f"tables are published up to {AFFINITY_TABLE_MAX} tasks.",
            description=f"Affinity of run {summary['run_id']}",
        )
    create_markdown_artifact(key=f"taskgrouping-changes-{suffix}", markdown=changes_markdown(summary),
                             description="What changed since the previous grouping version")
    image = heatmap_data_url(summary)
    if image is not None:
        from prefect.artifacts import create_image_artifact

        create_image_artifact(image_url=image, key=f"taskgrouping-heatmap-{suffix}",
                              description=f"Affinity heatmap of run {summary['run_id']}, tasks ordered by group")
        text = text.replace(f"]({HEATMAP_LINK})", f"]({image})")
    create_markdown_artifact(key=f"taskgrouping-report-{suffix}", markdown=text, description="Run report")
    emit_grouping_event(summary)


HEATMAP_LINK = "heatmap.png"
"""How ``report.md`` links its heatmap (beside it in the run folder); the UI's report gets the image inline."""

INLINE_MAX = 4 * 2**20
"""Largest heatmap PNG (bytes) put inline in the UI's report and image artifact."""


def artifact_suffix(summary: dict[str, Any]) -> str:
    """The lineage part of the run's artifact keys: each grouping's history is its own in the UI.

    Prefect keys hold lowercase letters, digits and dashes: the lineage name (or the data's
    file name or built-in), the method and the selector, made so, then 8 characters of the
    lineage key (two data files of one name stay apart).
    """
    import re

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")

    name = slug(summary.get("lineage_name") or data_label(str(summary["data"])))[:40].strip("-")
    return f"{name}-{slug(summary['method'])}-{slug(summary['selector'])}-{str(summary['lineage'])[:8]}"


def heatmap_data_url(summary: dict[str, Any]) -> str | None:
    """The run's heatmap as a ``data:image/png;base64,...`` URL (None when missing or over :data:`INLINE_MAX`)."""
    import base64

    path = Path(str((summary.get("artifacts") or {}).get("heatmap", "")))
    if not path.is_file() or path.stat().st_size > INLINE_MAX:
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def emit_grouping_event(summary: dict[str, Any]) -> None:
    """``taskgrouping.grouping.changed`` (or ``.unchanged``) for the run's lineage, with what changed and the verdict.

    The resource is ``taskgrouping.lineage.<lineage key>`` (named by :func:`artifact_suffix`), related to
    the flow run, so an automation can match one lineage or all (``deployments/README.md``).
    """
    from prefect.events import emit_event
    from prefect.runtime import flow_run

    c = summary["changes"]
    verdict = summary.get("verdict") or {}
    related = [{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.role": "flow-run"}] \
        if flow_run.id else []
    emit_event(
        event=f"taskgrouping.grouping.{'changed' if c['changed'] else 'unchanged'}",
        resource={"prefect.resource.id": f"taskgrouping.lineage.{summary['lineage']}",
                  "prefect.resource.name": artifact_suffix(summary)},
        related=related,
        payload={"run_id": summary["run_id"], "store": summary.get("store"), "data": summary["data"],
                 "version": summary.get("version"),
                 "previous_version": summary.get("previous_version"), "groups": summary["groups"],
                 "tasks_added": c.get("tasks_added", []), "tasks_removed": c.get("tasks_removed", []),
                 "moved": c.get("moved", []), "verdict": {k: verdict.get(k) for k in ("setting", "pays", "reason")}},
    )
