"""Bring your own model and data (issue 11): every rejection through the CLI with its message."""

import textwrap

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from taskgrouping.cli import main

FACTORIES = textwrap.dedent('''
    import torch
    from torch import nn

    def make(shape):
        return nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def boom(shape):
        raise ValueError("no GPU weights here")

    def not_a_module(shape):
        return 42

    def flat_out(shape):
        return nn.Conv2d(shape[0], 2, 3)
''')


def _tensor_table(tmp_path, n=60, shape=(3, 8, 8)):
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape), dtype=np.float32)
    table = pa.table({"img": pa.FixedShapeTensorArray.from_numpy_ndarray(x),
                      "y_a": pa.array(rng.integers(0, 2, n)), "y_b": pa.array(rng.integers(0, 2, n))})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    return str(path)


def _pngs(tmp_path, n=30, sizes=None):
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(n):
        h, w = sizes[i] if sizes else (8, 8)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    table = tmp_path / "attrs.csv"
    pl.DataFrame({"image_id": [f"img/{i:03d}.png" for i in range(n)],
                  "Smiling": rng.choice([-1, 1], n), "Bald": rng.choice([-1, 1], n)}).write_csv(table)
    return str(table)


def _rejected(tmp_path, capsys, args, message):
    store = tmp_path / "store"
    rc = main(["run", *args, "--store", str(store)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert err.count("\n") == 1, err
    assert not store.exists()


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "trunks.py"
    path.write_text(FACTORIES)
    return str(path)


def test_factory_rejections(tmp_path, capsys, factory):
    data = _tensor_table(tmp_path)
    cases = [
        ([f"{tmp_path}/nope.py:make"], f"no such file {tmp_path}/nope.py"),
        ([f"{factory}:absent"], "has no function 'absent'"),
        ([f"{factory}:boom"], "the factory raised ValueError: no GPU weights here"),
        ([f"{factory}:not_a_module"], "the factory returned int, not a torch.nn.Module"),
        ([f"{factory}:flat_out"], "the module must map (N, *input_shape) to (N, F); for N = 2 it returned (2, 2, 6, 6)"),
        (["nomodule_xyz:make"], "cannot import nomodule_xyz"),
        (["oops"], "--trunk 'oops': use mlp, cnn, resnet, PATH.py:FUNCTION or package.module:FUNCTION"),
    ]
    for trunk, message in cases:
        _rejected(tmp_path, capsys, ["--data", data, "--trunk", *trunk], message)


def test_checkpoint_rejections(tmp_path, capsys, factory):
    from safetensors.torch import save_file

    data = _tensor_table(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.safetensors"
    save_file({"0.weight": torch.zeros(4, 3, 3, 3), "9.bias": torch.zeros(2)}, str(other))
    pickled = tmp_path / "model.pt"
    torch.save({"obj": object()}, pickled)  # weights_only=True refuses to unpickle an object
    for ckpt, message in ((bad, f"--checkpoint {bad}: does not load as a state dict"),
                          (other, f"--checkpoint {other}: does not match the trunk"),
                          (pickled, f"--checkpoint {pickled}: does not load as a state dict"),
                          (tmp_path / "gone.pt", f"--checkpoint {tmp_path / 'gone.pt'}: no such file")):
        _rejected(tmp_path, capsys, ["--data", data, "--trunk", f"{factory}:make", "--checkpoint", str(ckpt)],
                  message)
    _rejected(tmp_path, capsys, ["--data", data, "--trunk", f"{factory}:make", "--checkpoint", str(other)],
              "missing key '0.bias'")


def test_input_rejections(tmp_path, capsys):
    data = _tensor_table(tmp_path)
    _rejected(tmp_path, capsys, ["--data", data, "--input-shape", "3,4,4"],
              "--input-shape 3,4,4 does not match tensor column 'img' of shape 3,8,8")
    vec = tmp_path / "v.csv"
    pl.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0), "y_a": np.arange(40) % 2}).write_csv(vec)
    _rejected(tmp_path, capsys, ["--data", str(vec), "--input-shape", "1,3"],
              "--input-shape 1,3 multiplies to 3, but the features hold 2 values per row")
    _rejected(tmp_path, capsys, ["--data", str(vec), "--trunk", "cnn"],
              "--trunk cnn needs image inputs (C, H, W); these inputs have shape (2,)")
    _rejected(tmp_path, capsys, ["--data", data, "--trunk", "cnn", "--trunks", "2"],
              "--trunks averages seeded MLP trunks; with --trunk or --checkpoint use --trunks 1")
    _rejected(tmp_path, capsys, ["--data", data, "--sketch", "wide"],
              "--sketch must be auto, none or a positive integer K, got 'wide'")


def test_image_file_rejections(tmp_path, capsys):
    table = _pngs(tmp_path, sizes=[(8, 8)] * 29 + [(10, 8)])
    _rejected(tmp_path, capsys, ["--data", table, "--images", "image_id"],
              f"{tmp_path}/img/029.png: image is 10x8 (HxW), the first image is 8x8; pass --image-size H,W")
    (tmp_path / "img" / "003.png").write_text("not a png")
    _rejected(tmp_path, capsys, ["--data", table, "--images", "image_id", "--image-size", "8,8"],
              f"{tmp_path}/img/003.png: not an image Pillow can read")
    (tmp_path / "img" / "003.png").unlink()
    _rejected(tmp_path, capsys, ["--data", table, "--images", "image_id", "--image-size", "8,8"],
              f"image {tmp_path}/img/003.png (row 3, column 'image_id') does not exist")
    _rejected(tmp_path, capsys, ["--data", table, "--images", "photo"],
              "--images names column 'photo', which is not in the table")
    _rejected(tmp_path, capsys, ["--data", table, "--image-size", "8,8"],
              "--image-root and --image-size apply with --images COLUMN")


def test_images_are_decoded_to_rgb_in_unit_range_and_cached_by_content(tmp_path):
    from PIL import Image

    from taskgrouping.data.images import ImageSpec
    from taskgrouping.data.load import load_dataset

    table = _pngs(tmp_path, n=24)
    calls = []
    cache: dict[str, np.ndarray] = {}

    def remember(key, decode):
        if key not in cache:
            calls.append(key)
            cache[key] = decode()
        return cache[key]

    ds = load_dataset(table, images=ImageSpec("image_id"), image_cache=remember)
    assert ds.input_shape == (3, 8, 8) and ds.task_names == ["Smiling", "Bald"]
    assert [t.kind for t in ds.tasks] == ["binary", "binary"] and ds.tasks[0].classes == ("-1", "1")
    ref = np.asarray(Image.open(tmp_path / "img" / "005.png").convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(ds.features[5].reshape(3, 8, 8), ref.transpose(2, 0, 1))
    load_dataset(table, images=ImageSpec("image_id"), image_cache=remember)
    assert len(calls) == 1  # a rerun reads the cache
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "005.png")
    again = load_dataset(table, images=ImageSpec("image_id"), image_cache=remember)
    assert len(calls) == 2 and not again.features[5].any()  # changed bytes, new content key
    small = load_dataset(table, images=ImageSpec("image_id", size=(4, 6)))
    assert small.input_shape == (3, 4, 6) and small.features.shape == (24, 72)


def test_the_library_distance_refuses_tasks_on_disjoint_rows_naming_the_pair():
    """``swola_affinity`` (the library's paired distance) names the pair; a run switches to swola-meta."""
    from taskgrouping.api import swola_affinity
    from taskgrouping.errors import InputError

    rng = np.random.default_rng(0)
    n = 200
    x = rng.standard_normal((n, 3))
    y = {"y_a": np.where(np.arange(n) < 100, rng.integers(0, 2, n), np.nan),
         "y_b": np.where(np.arange(n) >= 100, rng.integers(0, 2, n), np.nan), "y_c": rng.integers(0, 2, n)}
    with pytest.raises(InputError, match="tasks 'y_a' and 'y_b' share 0 labelled probe samples \\(1 pairs share "
                                         "fewer than 30\\); SWOLA's paired distance needs samples labelled for "
                                         "both: use method swola-meta"):
        swola_affinity(x, y, n_samples=128, hidden=8)
