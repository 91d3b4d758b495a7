"""Hostile input: names that look like paths or are very long, and extreme values."""

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from taskgrouping.data.dataset import prepare
from taskgrouping.data.load import load_dataset
from taskgrouping.errors import InputError

HOSTILE = ["y/../../escape", "y ..", "y with spaces", "y_ünïcödé_任务", "y_" + "a" * 300, "y_\\back"]


def _hostile_frame(n=240, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    cols = {f"f {i}/..": x[:, i] for i in range(4)}
    for j, name in enumerate(HOSTILE):
        cols[name] = (x[:, j % 4] + 0.3 * rng.standard_normal(n) > 0).astype(np.int64)
    return pl.DataFrame(cols)


def test_extreme_feature_and_label_values_are_standardised(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    frame = pl.DataFrame({"f_big": rng.standard_normal(n) * 1e30, "f_small": rng.standard_normal(n) * 1e-30,
                          "y_reg": rng.standard_normal(n) * 1e30, "y_bin": rng.integers(0, 2, n)})
    path = tmp_path / "extreme.parquet"
    frame.write_parquet(path)
    data = prepare(load_dataset(str(path)), 0, 64)
    assert np.isfinite(data.x).all() and np.isfinite(data.y).all()
    train = data.split == 0
    np.testing.assert_allclose(data.x[train].std(axis=0), 1.0, rtol=1e-3)  # both scales standardised
    assert abs(data.y[train, 0].std() - 1.0) < 1e-3


@pytest.mark.parametrize("column, message", [
    ("f_huge", "feature column 'f_huge' has 40 values beyond ±3.4e+38 (the float32 range features are kept in)"),
    ("y_huge", "task column 'y_huge' has values beyond ±3.4e+38 (the float32 range labels are kept in)"),
])
def test_values_beyond_float32_are_rejected_naming_the_column(tmp_path, column, message):
    frame = pl.DataFrame({"f_ok": np.arange(40.0), "y_bin": np.arange(40) % 2,
                          column: np.linspace(1.0, 2.0, 40) * 1e300})
    path = tmp_path / "huge.parquet"
    frame.write_parquet(path)
    with pytest.raises(InputError, match=re.escape(message)):
        load_dataset(str(path))


def test_hostile_task_names_never_reach_store_paths(prefect_api, tmp_path):
    """Task and column names with /, .., spaces, unicode or 300 characters: kept as names, never as paths."""
    from taskgrouping.config import RunConfig
    from taskgrouping.flows.regroup import run_regroup
    from taskgrouping.methods.swola import SwolaSettings
    from taskgrouping.models.train import TrainSettings
    from taskgrouping.storage.integrity import verify_store

    path = tmp_path / "hostile.parquet"
    _hostile_frame().write_parquet(path)
    store = tmp_path / "store"
    cfg = RunConfig(data=str(path), tasks=",".join(HOSTILE),
                    store=str(store), samples=96, groups=2, workers=1, evaluate="grouped",
                    swola=SwolaSettings(hidden=8), train=TrainSettings(hidden=8, max_epochs=4, patience=2))
    summary = run_regroup(cfg, "hostile")
    assert sorted(summary["tasks"]) == sorted(HOSTILE)
    assert sorted(t for g in summary["groups"] for t in g) == sorted(HOSTILE)
    files = [p for p in store.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(store.resolve()) for p in files)
    assert not (tmp_path / "escape").exists()
    for p in files:  # no task or column name became part of any path below the store
        rel = str(p.relative_to(store))
        assert not any(name in rel for name in ("escape", "spaces", "ünïcödé", "a" * 50, "back"))
    assert verify_store(store)[1] == []
    assert json.loads((store / "runs" / "hostile" / "summary.json").read_text())["tasks"] == summary["tasks"]
    assert Path(summary["artifacts"]["report"]).read_text().count("y_ünïcödé_任务") >= 1


def test_a_run_that_would_not_fit_in_memory_says_so_up_front():
    from taskgrouping.methods.swola import SwolaSettings
    from taskgrouping.resources import check_swola_fits, swola_memory

    gib = 2**30
    check_swola_fits(1000, 512, SwolaSettings(), available=8 * gib)  # the benchmarked size fits easily
    assert 0.3 * gib < sum(swola_memory(1000, 512, SwolaSettings()).values()) < 0.7 * gib  # measured: 0.55 GiB
    with pytest.raises(InputError, match=r"a SWOLA affinity over 20000 tasks with 512 probe samples needs about "
                                         r"\d+\.\d GiB \(probes .*\), more than 80% of the 24\.0 GiB available"):
        check_swola_fits(20000, 512, SwolaSettings(), available=24 * gib)
