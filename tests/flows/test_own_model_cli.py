"""Bring your own model and data through the CLI for real (issue 11): a factory trunk with BatchNorm and a
residual block, a checkpoint, a fixed_shape_tensor Parquet, and a folder of PNGs named in a CSV."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taskgrouping.cli import main

FAST = ["--samples", "64", "--max-epochs", "3", "--workers", "1", "--groups", "2"]


def _run(capsys, *args):
    rc = main(["run", *args, *FAST, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_factory_checkpoint_tensor_parquet_and_export(prefect_api, tmp_path, capsys, residual_factory):
    from safetensors.torch import save_file

    from taskgrouping import load_group_model
    from taskgrouping.data.builtins import shapes
    from taskgrouping.models.trunks import build_any_trunk

    ds = shapes(samples=200, size=8, per=1, seed=1)  # 4 tasks, one per factor
    x = ds.features.reshape(200, 3, 8, 8)
    table = pa.table({"img": pa.FixedShapeTensorArray.from_numpy_ndarray(x)}
                     | {f"y_{t}": pa.array(ds.labels[:, j].astype(int)) for j, t in enumerate(ds.task_names)})
    data = tmp_path / "shapes.parquet"
    pq.write_table(table, data)
    factory = residual_factory  # conv, BatchNorm, a residual block
    trunk = build_any_trunk(f"{factory}:make", (3, 8, 8), 8, 2, seed=5)  # "pretrained": another seed's weights
    ckpt = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.body.state_dict().items()}, str(ckpt))

    store = tmp_path / "store"
    args = ["--data", str(data), "--trunk", f"{factory}:make", "--checkpoint", str(ckpt), "--store", str(store),
            "--evaluate", "grouped"]
    s = _run(capsys, *args)
    assert s["tasks"] == [f"y_{t}" for t in ds.task_names] and s["features"] == ["img"]
    assert s["counts"]["probes_computed"] == 4 and len(s["groups"]) == 2
    meta = json.loads((store / "datasets" / s["dataset_key"] / "meta.json").read_text())
    assert meta["input_shape"] == [3, 8, 8]
    probe = pa.ipc.open_file(str(sorted((store / "probes").glob("*.arrow"))[0])).read_all()
    assert json.loads(probe.schema.metadata[b"taskgrouping"])["kind"] == "grad"

    # an identical checkpoint under a new name reuses every probe; changed weights recompute them
    same = tmp_path / "copy.safetensors"
    same.write_bytes(ckpt.read_bytes())
    again = _run(capsys, *[a if a != str(ckpt) else str(same) for a in args])
    assert again["counts"]["probes_computed"] == 0 and again["counts"]["groups_trained"] == 0
    changed = build_any_trunk(f"{factory}:make", (3, 8, 8), 8, 2, seed=6)
    save_file({k: v.contiguous() for k, v in changed.body.state_dict().items()}, str(same))
    fresh = _run(capsys, *[a if a != str(ckpt) else str(same) for a in args])
    assert fresh["counts"]["probes_computed"] == 4

    # the exported model takes images and reproduces the run's test metrics
    out = tmp_path / "export"
    assert main(["export", "--run", s["run_id"], "--store", str(store), "--out", str(out)]) == 0
    capsys.readouterr()
    from sklearn.metrics import roc_auc_score

    from taskgrouping.storage import Store

    prepared = Store(store).read_prepared(s["dataset_key"])  # each task's own test rows
    rows = {r["task"]: r for r in pq.read_table(s["artifacts"]["metrics"]).to_pylist() if r["setting"] == "grouped"}
    for gi, members in enumerate(s["groups"]):
        pred = load_group_model(out / f"group-{gi}").predict(x)
        for t in members:
            test = prepared.parts(prepared.task_names.index(t)) == 3
            y = ds.labels[test, ds.task_names.index(t[2:])]
            assert roc_auc_score(y, pred[t][test]) == pytest.approx(rows[t]["metric"], abs=1e-5)

    # the report names the trunk, its size and the checkpoint
    report = Path(s["artifacts"]["report"]).read_text()
    trunk_params = s["trunk"]["parameters"]
    assert trunk_params == sum(p.numel() for p in trunk.body.parameters())  # BatchNorm's statistics are not
    assert (f"Trunk `{factory}:make` on inputs of shape 3x8x8, {trunk_params:,} trunk parameters per model; every "
            f"probe and model starts from the checkpoint `{ckpt}`.") in report

    # the export is self-contained: with the factory file gone and the folder moved, it loads and predicts the same
    import shutil

    spec = json.loads((out / "group-0" / "model.json").read_text())
    assert spec["setting"] == "grouped" and spec["trunk"]["name"] == "trunk.py:make"
    assert spec["trunk_source"] == factory and (out / "group-0" / "trunk.py").read_text() == Path(factory).read_text()
    before = load_group_model(out / "group-0").predict(x)
    Path(factory).rename(tmp_path / "moved_away.py")
    moved = shutil.copytree(out / "group-0", tmp_path / "elsewhere" / "model")
    after = load_group_model(moved).predict(x)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_png_folder_named_in_a_csv(prefect_api, tmp_path, capsys):
    from PIL import Image

    from taskgrouping.data.builtins import shapes

    ds = shapes(samples=120, size=10, per=1, seed=2)
    folder = tmp_path / "img_align"
    folder.mkdir()
    names = []
    for i in range(120):
        img = (ds.features[i].reshape(3, 10, 10).transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:06d}.png")
        names.append(f"{i:06d}.png")
    attrs = tmp_path / "list_attr.csv"  # CelebA's layout: an id column and -1/1 attributes
    pl.DataFrame({"image_id": names} | {t: np.where(ds.labels[:, j] > 0, 1, -1)
                                        for j, t in enumerate(ds.task_names)}).write_csv(attrs)
    store = tmp_path / "store"
    args = ["--data", str(attrs), "--images", "image_id", "--image-root", str(folder), "--image-size", "8,8",
            "--store", str(store), "--evaluate", "none"]
    s = _run(capsys, *args)
    assert s["tasks"] == ds.task_names and set(s["task_kinds"].values()) == {"binary"}
    assert s["features"] == ["image_id"] and s["counts"]["probes_computed"] == 4
    cached = list((store / "images").glob("*.parquet"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = _run(capsys, *args, "--seed", "1")  # a new split re-samples but does not decode again
    assert again["counts"]["probes_computed"] == 4 and cached[0].stat().st_mtime_ns == stamp
    assert Path(s["artifacts"]["report"]).read_text().count("image_id") >= 1


def test_sketched_probes_share_the_trunks_stored_maps(prefect_api, tmp_path, capsys):
    """``--sketch K`` on images: the trunk's per-sample maps are computed once and every later task reuses them."""
    from taskgrouping.data.builtins import shapes

    ds = shapes(samples=150, size=8, per=2, seed=3)  # 8 tasks, two per factor
    x = ds.features.reshape(150, 3, 8, 8)
    table = pa.table({"img": pa.FixedShapeTensorArray.from_numpy_ndarray(x)}
                     | {t: pa.array(ds.labels[:, j].astype(int)) for j, t in enumerate(ds.task_names)})
    data = tmp_path / "shapes.parquet"
    pq.write_table(table, data)
    store = tmp_path / "store"
    # shared heads: a new task cannot move the joint head's C (which would re-probe every task); 4 features:
    # the 7 tasks of the first run are worth the maps (F = 4), the one task added later reads them
    args = ["--data", str(data), "--sketch", "16", "--head", "shared", "--hidden", "4", "--store", str(store),
            "--evaluate", "none"]
    first = _run(capsys, *args, "--tasks", ",".join(ds.task_names[:-1]))
    maps = list((store / "trunkmaps").glob("*.arrow"))
    assert len(maps) == 1 and first["counts"]["probes_computed"] == 7
    before = {p.name: p.read_bytes() for p in [*maps, *(store / "probes").glob("*.arrow")]}
    kinds = {json.loads(pa.ipc.open_file(str(p)).read_all().schema.metadata[b"taskgrouping"])["kind"]
             for p in (store / "probes").glob("*.arrow")}
    assert kinds == {"sketch"}
    args += ["--tasks", ",".join(ds.task_names)]
    second = _run(capsys, *args)  # one task more: its probe from the stored maps, nothing else rewritten
    assert second["counts"]["probes_computed"] == 1
    assert [p.name for p in (store / "trunkmaps").glob("*.arrow")] == [maps[0].name]
    assert all((store / ("trunkmaps" if name == maps[0].name else "probes") / name).read_bytes() == data_
               for name, data_ in before.items())
    exact = _run(capsys, *[a if a != "16" else "none" for a in args])  # another width: other probe keys
    assert exact["counts"]["probes_computed"] == 8
