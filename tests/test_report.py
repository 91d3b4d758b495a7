"""The report with helper tasks (overlapping groups) and gain matrices."""

import numpy as np

from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.models.evaluate import evaluation_jobs
from taskgrouping.report import heatmap_png, render_report


def test_overlapping_groups_are_evaluated_once_per_task_and_shown_as_helpers():
    tasks = ["a", "b", "c", "d"]
    groups = [["a", "b", "c"], ["c", "d"]]
    served = {"a": 0, "b": 0, "c": 1, "d": 1}
    jobs = evaluation_jobs(tasks, groups, served, seed=0)
    for setting, setting_jobs in jobs.items():
        assert sorted(t for j in setting_jobs for t in j.serves) == tasks, setting
    assert jobs["grouped"][0].members == ("a", "b", "c") and jobs["grouped"][0].serves == ("a", "b")
    assert sorted(len(j.serves) for j in jobs["random"]) == [2, 2]  # sizes of the served sets
    weighted = evaluation_jobs(tasks, groups, served, seed=0, weights=[[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.9, 1.0]])
    assert all(j.members == tuple(tasks) for j in weighted["grouped"])
    assert weighted["grouped"][1].weights == (0.1, 0.2, 0.9, 1.0)

    gain = AffinityMatrix(tasks, np.arange(16.0).reshape(4, 4) - 8, "gain")
    rows = [{"setting": s, "task": t, "val_loss": 1.0, "sel_loss": 1.0, "test_loss": 1.0, "metric_name": "auroc",
             "metric": 0.5} for s in ("grouped", "all_together", "single_task", "random") for t in tasks]
    totals = {s: {"val_loss": 4.0, "sel_loss": 4.0, "test_loss": 4.0}
              for s in ("grouped", "all_together", "single_task", "random")}
    summary = {"run_id": "r", "tasks": tasks, "groups": groups, "served": served, "method": "hoa",
               "selector": "network", "objective": 1.5, "counts": {k: 0 for k in (
                   "probes_computed", "probes_reused", "pairs_computed", "pairs_reused", "groups_trained",
                   "groups_reused")}, "seconds": {"total": 1.0}}
    text = render_report(summary, gain, rows, totals, {"data": "x", "seed": 0, "samples": 8,
                                                       "selection": {"exact": True, "k": 2}})
    assert "| 1 | (`c`)" not in text and "| 0 | `a`, `b`, (`c`) |" in text
    assert "helper" in text and "objective = 1.5" in text and "mean within-group gain" in text
    png = heatmap_png(gain, groups, served, label="hoa gain")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_baselines_or_models_says_so():
    """``--evaluate grouped`` has no baseline to recommend against; ``none`` has no loss table at all."""
    tasks = ["a", "b", "c"]
    dist = AffinityMatrix(tasks, np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0], [2.0, 2.0, 0.0]]), "distance")
    summary = {"run_id": "r", "tasks": tasks, "groups": [["a", "b"], ["c"]], "served": {"a": 0, "b": 0, "c": 1},
               "method": "swola", "selector": "spectral", "counts": {k: 0 for k in (
                   "probes_computed", "probes_reused", "pairs_computed", "pairs_reused", "groups_trained",
                   "groups_reused")}, "seconds": {"total": 1.0}}
    info = {"data": "x", "seed": 0, "samples": 8}
    rows = [{"setting": "grouped", "task": t, "val_loss": 1.0, "sel_loss": 1.5, "test_loss": 2.0,
             "metric_name": "auroc", "metric": 0.5} for t in tasks]
    grouped = render_report(summary, dist, rows, {"grouped": {"val_loss": 3.0, "sel_loss": 4.5, "test_loss": 6.0}},
                            info)
    assert "there is no baseline to compare with" in grouped and "(recommended)" not in grouped
    assert "| grouped |  |  |  | 4.5000 | 6.0000 | – |" in grouped and "## Per task (test)" in grouped
    none = render_report(summary, dist, [], {}, info)
    assert "No models were trained" in none and "## Per task" not in none and "| setting" not in none
    assert "| 0 | `a`, `b` |" in none  # the groups are still reported


def test_heatmap_colour_range_ignores_the_diagonal_and_a_near_duplicate_pair():
    import numpy as np

    from taskgrouping.report import colour_limits

    rng = np.random.default_rng(0)
    d = rng.uniform(1.5, 2.0, (12, 12))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    d[0, 1] = d[1, 0] = 1e-6  # a complement twin
    lo, hi = colour_limits(d, "distance")
    off = d[~np.eye(12, dtype=bool)]
    assert 1.5 <= lo < np.sort(off)[10] and hi == off.max()  # the twin and the zero diagonal saturate
    lo_g, hi_g = colour_limits(-d, "gain")
    assert lo_g == (-off).min() and hi_g < -1.5
    assert colour_limits(np.zeros((1, 1)), "distance") == (None, None)
    assert colour_limits(np.ones((3, 3)), "distance") == (0.5, 1.5)


def test_run_line_names_the_verdict():
    from taskgrouping.report import run_line

    summary = {"run_id": "r1", "version": 2, "previous_version": 1, "tasks": ["a", "b", "c"],
               "groups": [["a", "b"], ["c"]], "artifacts": {"report": "/s/runs/r1/report.md"},
               "changes": {"changed": True, "tasks_added": ["c"], "tasks_removed": [], "moved": []},
               "recommended": "grouped", "verdict": {"setting": "grouped", "pays": "yes"}}
    line = run_line(summary)
    assert line == ("run r1: version 2 (previous 1: 1 tasks added, 0 moved); 3 tasks in 2 groups; "
                    "recommended: grouped (grouping pays: yes); report /s/runs/r1/report.md")
    assert "pays" not in run_line(summary | {"recommended": None})


def test_an_identical_heatmap_is_copied_from_the_store_and_a_changed_one_drawn_again(tmp_path, monkeypatch):
    import pytest

    from taskgrouping.selectors.base import Grouping
    from taskgrouping.storage import Store
    from taskgrouping.storage.integrity import DamagedFile
    from taskgrouping.tasks import report as report_step

    drawn = []

    def counting(*args, **kwargs):
        drawn.append(args[1])
        return heatmap_png(*args, **kwargs)

    monkeypatch.setattr(report_step, "heatmap_png", counting)
    st = Store(str(tmp_path / "store"))
    tasks = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    v = rng.random((4, 4))
    aff = AffinityMatrix(tasks, (v + v.T) / 2, "distance")
    path = st.write_affinity(st.affinity_path("k1"), aff)
    two = Grouping(groups=[["a", "b"], ["c", "d"]], served={"a": 0, "b": 0, "c": 1, "d": 1})
    first, stored = report_step._heatmap(st, path, aff, two, "swola distance")
    again, stored_again = report_step._heatmap(st, path, aff, two, "swola distance")
    assert again == first and len(drawn) == 1 and first.startswith(b"\x89PNG")
    assert stored == stored_again and stored.read_bytes() == first  # the store's file, for the run to link
    one = Grouping(groups=[tasks], served={t: 0 for t in tasks})
    assert report_step._heatmap(st, path, aff, one, "swola distance")[0] != first  # other groups: drawn
    aff2 = AffinityMatrix(tasks, aff.values * 2, "distance")
    path2 = st.write_affinity(st.affinity_path("k2"), aff2)
    report_step._heatmap(st, path2, aff2, two, "swola distance")  # other matrix: drawn
    assert len(drawn) == 3 and len(list((st.root / "heatmaps").glob("*.png"))) == 3
    for png in (st.root / "heatmaps").glob("*.png"):  # damaged copies are drawn again, never served
        png.write_bytes(b"not a png")
    assert report_step._heatmap(st, path, aff, two, "swola distance")[0] == first and len(drawn) == 4

    copy = st.copy_file(path, tmp_path / "run" / "affinity.parquet")
    assert copy.read_bytes() == path.read_bytes() and st.read_affinity(copy).tasks == tasks
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DamagedFile):
        st.copy_file(path, tmp_path / "run" / "again.parquet")
    assert not (tmp_path / "run" / "again.parquet").exists()


def test_past_80_tasks_the_heatmap_is_a_raster_with_group_lines_a_scale_and_no_matplotlib():
    import io
    import subprocess
    import sys

    from PIL import Image

    from taskgrouping.report import LABELLED_TASKS_MAX, _colours

    n = 90
    labels = np.arange(n) % 3  # three planted groups, interleaved in the task order
    rng = np.random.default_rng(0)
    d = np.where(labels[:, None] == labels[None, :], 1.0, 5.0) + 0.1 * rng.random((n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    tasks = [f"t{i:02d}" for i in range(n)]
    aff = AffinityMatrix(tasks, d, "distance")
    groups = [[t for t, g in zip(tasks, labels, strict=True) if g == k] for k in range(3)]
    png = heatmap_png(aff, groups, label="swola distance")
    img = Image.open(io.BytesIO(png))
    assert n > LABELLED_TASKS_MAX and img.mode == "RGB"
    s = 800 // n  # pixels per cell
    size = n * s + 2  # two red lines between three groups
    rgb = np.asarray(img)
    assert img.size[1] == size + 20
    m0 = 10  # margin
    red = np.array([220, 30, 30])
    for line in (30 * s, 60 * s + 1):  # after group 0's cells, then group 1's (and the first line)
        assert (rgb[m0 + line, m0 : m0 + size] == red).all() and (rgb[m0 : m0 + size, m0 + line] == red).all()
    near, far = rgb[m0 + 1, m0 + s + 1], rgb[m0 + 1, m0 + 30 * s + 5]  # within group 0; group 0 against 1
    assert near.sum() > far.sum()  # close tasks light (viridis reversed for distances), far ones dark
    bar = m0 + size + 12 + 8
    np.testing.assert_array_equal(rgb[m0, bar], _colours(np.array([1.0]), reverse=True)[0])  # top: the high end
    np.testing.assert_array_equal(rgb[m0 + size - 1, bar], _colours(np.array([0.0]), reverse=True)[0])
    assert "off-diagonal scale" in img.info["Description"] and img.info["Title"].startswith("Task affinity")
    np.testing.assert_array_equal(_colours(np.array([np.nan]), reverse=False)[0], [128, 128, 128])
    code = ("import numpy as np, sys; from taskgrouping.methods.base import AffinityMatrix; "
            "from taskgrouping.report import heatmap_png; t=[f't{i}' for i in range(100)]; "
            "heatmap_png(AffinityMatrix(t, np.ones((100, 100)) - np.eye(100), 'distance'), [t]); "
            "print('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_run_files_are_links_to_the_store_or_copies_where_links_are_refused(tmp_path, monkeypatch):
    """A run folder's affinity is the store's file (one inode); a file system without links gets a copy."""
    import os

    from taskgrouping.storage import Store
    from taskgrouping.storage.integrity import intact

    st = Store(str(tmp_path / "store"))
    aff = AffinityMatrix(["a", "b"], np.array([[0.0, 1.0], [1.0, 0.0]]), "distance")
    source = st.write_affinity(st.affinity_path("k"), aff)
    linked = st.copy_file(source, st.run_dir("r1") / "affinity.parquet")
    assert os.stat(linked).st_ino == os.stat(source).st_ino and intact(linked) and intact(source)

    def refuse(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    copied = st.copy_file(source, st.run_dir("r2") / "affinity.parquet")
    assert os.stat(copied).st_ino != os.stat(source).st_ino
    assert copied.read_bytes() == source.read_bytes() and intact(copied)
