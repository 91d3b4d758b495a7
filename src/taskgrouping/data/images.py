"""Image files named in a column of the label table (how CelebA ships): check, decode, content key.

Paths are relative to ``root`` (default: the table's folder) unless absolute. Every
image is decoded with Pillow to RGB float32 in [0, 1], shaped (3, H, W): the first
image's size unless ``size`` is given (then every image is resized to it); without
``size``, an image of another size is refused naming it. Checking reads only the
headers; decoding reads every file (with a log line every tenth).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskgrouping.errors import InputError

log = logging.getLogger("taskgrouping")


@dataclass(frozen=True)
class ImageSpec:
    """``--images COLUMN``, ``--image-root DIR`` and ``--image-size H,W``."""

    column: str
    root: str | None = None
    size: tuple[int, int] | None = None


def image_paths(names: list[object], spec: ImageSpec, source: str) -> list[Path]:
    """The files a column names, resolved against the root; a null or missing file is refused naming it."""
    root = Path(spec.root).expanduser() if spec.root else Path(source).expanduser().resolve().parent
    out = []
    for row, name in enumerate(names):
        if name is None or str(name).strip() == "":
            raise InputError(f"{source}: image column {spec.column!r} is empty at row {row}")
        path = Path(str(name)).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise InputError(f"{source}: image {path} (row {row}, column {spec.column!r}) does not exist")
        out.append(path)
    return out


def check_images(paths: list[Path], spec: ImageSpec) -> tuple[int, int, int]:
    """(3, H, W) of the inputs, from the image headers only.

    A file that is no image, or of a different size when no ``size`` is given, is
    refused naming it.
    """
    from PIL import Image, UnidentifiedImageError

    first: tuple[int, int] | None = None
    for path in paths:
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path}: not an image Pillow can read ({type(exc).__name__})") from None
        if first is None:
            first = (h, w)
        elif spec.size is None and (h, w) != first:
            raise InputError(f"{path}: image is {h}x{w} (HxW), the first image is {first[0]}x{first[1]}; pass "
                             "--image-size H,W to resize them all")
    assert first is not None
    h, w = spec.size if spec.size is not None else first
    return (3, int(h), int(w))


def content_key(paths: list[Path], shape: tuple[int, int, int]) -> str:
    """sha256 of every image file's bytes (in order) and the decoded shape: the decode cache's key."""
    digest = hashlib.sha256(str(shape).encode())
    for path in paths:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


def decode_images(paths: list[Path], shape: tuple[int, int, int]) -> np.ndarray:
    """(n, 3 * H * W) float32 in [0, 1]: RGB, resized (bilinear) to ``shape`` where needed, C order."""
    from PIL import Image

    _, h, w = shape
    out = np.empty((len(paths), 3 * h * w), np.float32)
    tenth = max(1, len(paths) // 10)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
            out[i] = (np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1).reshape(-1)
        if (i + 1) % tenth == 0 or i + 1 == len(paths):
            log.info("images: %d/%d decoded", i + 1, len(paths))
    return out


ImageCache = Callable[[str, Callable[[], np.ndarray]], np.ndarray]
"""``cache(key, decode)``: the decoded images stored under ``key``, decoding (and storing) them if absent."""
