"""Built-in datasets: digits (real), digits-images, synthetic, shapes, subsets and mmaml.

``builtin:digits`` is scikit-learn's bundled digits (``digits-images`` keeps the 1 x 8 x 8
shape), ``builtin:synthetic`` has planted groups, ``builtin:shapes`` generated images
with planted attribute families.

Options follow the name after a colon: ``builtin:synthetic:tasks=16,groups=4,samples=2000,noise=0.3``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from taskgrouping.data.dataset import Dataset, TaskSpec
from taskgrouping.errors import InputError

CLOSED_LOOP_DIGITS = (0, 4, 6, 8, 9)
"""Digits drawn with a closed loop (the STG-MTL style derived task)."""


def _binary(name: str) -> TaskSpec:
    return TaskSpec(name, "binary", 2, ("0", "1"), "built-in")


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' (1797, 64) pixels and (1797,) labels, as ``sklearn.datasets.load_digits`` gives them.

    Read from the file scikit-learn ships (``datasets/data/digits.csv.gz``) without
    importing scikit-learn: that import took 0.65 s of an identical rerun's 4 s on
    2 cores, and nothing else in such a run needs it. Falls back to ``load_digits``
    where the file is not found.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(base) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            raw = np.loadtxt(path, delimiter=",")
            return raw[:, :-1], raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data), np.asarray(bunch.target, np.int64)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images) as a 15-task benchmark.

    Tasks: ``is_0`` .. ``is_9`` (one-vs-rest), ``even``, ``ge_5`` (at least 5),
    ``closed_loop`` (0, 4, 6, 8, 9), ``not_3`` (the exact complement of ``is_3``) and
    ``random`` (labels drawn with ``seed``, unrelated to the image).
    """
    pixels, d = _digits_arrays()
    x = pixels.astype(np.float32)
    cols: dict[str, np.ndarray] = {f"is_{k}": (d == k) for k in range(10)}
    cols["even"] = d % 2 == 0
    cols["ge_5"] = d >= 5
    cols["closed_loop"] = np.isin(d, CLOSED_LOOP_DIGITS)
    cols["not_3"] = d != 3
    cols["random"] = np.random.default_rng(seed).random(d.size) < 0.5
    names = list(cols)
    labels = np.stack([cols[n].astype(np.float32) for n in names], axis=1)
    return Dataset(
        features=x,
        labels=labels,
        tasks=[_binary(n) for n in names],
        feature_names=[f"px_{i}" for i in range(x.shape[1])],
        source="builtin:digits",
    )


def synthetic(
    tasks: int = 16,
    groups: int = 4,
    samples: int = 2000,
    noise: float = 0.3,
    features: int = 32,
    rank: int = 3,
    jitter: float = 0.35,
    complement: int = 0,
    random: int = 0,
    missing: float = 0.0,
    seed: int = 0,
    sizes: str | None = None,
) -> Dataset:
    """Binary tasks with planted groups; the ground truth is kept in ``Dataset.ground_truth``.

    Each group ``g`` owns a random nonlinear latent ``z_g = tanh(x A_g)`` of width ``rank``.
    A task of group ``g`` thresholds ``z_g w_t + noise * eps`` with ``w_t`` the group's
    direction plus ``jitter`` times a task-specific one, at a task-specific prevalence
    (30 to 70 %). Tasks of one group share their latent, tasks of different groups use
    unrelated ones. Group membership is shuffled, so task names reveal nothing.

    Extras: ``complement`` tasks that are exact complements (1 - y) of planted tasks
    (ground truth: their twin's group), and ``random`` tasks with random labels (their
    own group id, -1, -2, ...). ``missing`` is the fraction of labels removed at random.
    ``sizes`` (e.g. ``"2/12/4"``) plants groups of unequal sizes (then ``tasks`` and
    ``groups`` are its sum and length).
    """
    counts = _group_sizes(sizes) if sizes is not None else None
    if counts is not None:
        tasks, groups = sum(counts), len(counts)
    if tasks < 1 or groups < 1 or groups > tasks:
        raise InputError(f"builtin:synthetic: need 1 <= groups <= tasks, got tasks={tasks}, groups={groups}")
    if samples < 40:
        raise InputError(f"builtin:synthetic: samples={samples} is too small (at least 40)")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features))
    mats = [rng.standard_normal((features, rank)) * (2.0 / np.sqrt(features)) for _ in range(groups)]
    bases = [rng.standard_normal(rank) for _ in range(groups)]
    latents = [np.tanh(x @ a) for a in mats]
    planted = np.repeat(np.arange(groups), counts) if counts is not None else np.arange(tasks) % groups
    assign = rng.permutation(planted)
    names = [f"y_{i:02d}" for i in range(tasks)]
    cols: list[np.ndarray] = []
    truth: dict[str, int] = {}
    for i, g in enumerate(assign):
        w = bases[g] + jitter * rng.standard_normal(rank)
        score = latents[g] @ w
        score = (score - score.mean()) / (score.std() + 1e-12)
        score = score + noise * rng.standard_normal(samples)
        thr = np.quantile(score, rng.uniform(0.3, 0.7))
        cols.append((score > thr).astype(np.float32))
        truth[names[i]] = int(g)
    for k in range(complement):
        twin = k % tasks
        name = f"y_not_{twin:02d}"
        names.append(name)
        cols.append(1.0 - cols[twin])
        truth[name] = truth[names[twin]]
    for k in range(random):
        name = f"y_random_{k}"
        names.append(name)
        cols.append((rng.random(samples) < 0.5).astype(np.float32))
        truth[name] = -(k + 1)
    labels = np.stack(cols, axis=1).astype(np.float32)
    if missing > 0:
        labels[rng.random(labels.shape) < missing] = np.nan
    return Dataset(
        features=x.astype(np.float32),
        labels=labels,
        tasks=[_binary(n) for n in names],
        feature_names=[f"x_{i}" for i in range(features)],
        source="builtin:synthetic",
        ground_truth=truth,
    )


def digits_images(seed: int = 0) -> Dataset:
    """:func:`digits` with each input kept as the 1 x 8 x 8 image it is (for image trunks)."""
    ds = digits(seed)
    ds.input_shape = (1, 8, 8)
    return ds


SHAPE_KINDS = ("circle", "square", "triangle")


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """(n,) hues in [0, 1) -> (n, 3) RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + h[:, None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def shapes(samples: int = 2000, size: int = 32, per: int = 4, noise: float = 0.05, seed: int = 0) -> Dataset:
    """Generated RGB images of one object each, with attribute tasks driven by four hidden factors.

    Every image (3 x ``size`` x ``size``, values in [0, 1], a dark noisy background) shows
    one object whose hidden factors are drawn independently: its shape (circle, square,
    triangle), its size (radius 12-30 % of the image), its horizontal position and its
    colour (hue). Each factor drives a family of ``per`` binary attribute tasks (like
    CelebA's attribute families): for shape, ``is_circle``, ``is_square``, ``is_triangle``
    and ``has_corners``, then more thresholds of the shape code; for size, position and
    colour, thresholds at quantiles spread over 25-75 %. Each label is flipped with
    probability ``noise``. The planted groups (one per factor) are kept for the ARI.
    """
    if samples < 40 or size < 8 or per < 1:
        raise InputError(f"builtin:shapes: need samples >= 40, size >= 8, per >= 1; got {samples}, {size}, {per}")
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, samples)
    radius = rng.uniform(0.12, 0.30, samples) * size
    cx = rng.uniform(0.3, 0.7, samples) * size
    cy = rng.uniform(0.3, 0.7, samples) * size
    hue = rng.uniform(0.0, 0.8, samples)
    grid = np.arange(size) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    r = radius[:, None, None]
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    triangle = (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.6)
    mask = np.where(kind[:, None, None] == 0, circle, np.where(kind[:, None, None] == 1, square, triangle))
    colour = _hsv_to_rgb(hue, 0.8, 0.9)  # (n, 3)
    img = np.clip(0.1 + 0.05 * rng.standard_normal((samples, 3, size, size)), 0.0, 1.0)
    img = np.where(mask[:, None], colour[:, :, None, None], img).astype(np.float32)

    factors = {"shape": kind.astype(float), "size": radius, "position": cx, "colour": hue}
    cols: dict[str, np.ndarray] = {}
    truth: dict[str, int] = {}
    for g, (factor, value) in enumerate(factors.items()):
        if factor == "shape":
            named = {"is_circle": kind == 0, "is_square": kind == 1, "is_triangle": kind == 2, "has_corners": kind != 0}
            extra = [(f"shape_code_gt_{q}", kind > q) for q in (0, 1)]
            chosen = (list(named.items()) + extra * per)[:per]
        else:
            quantiles = np.linspace(0.25, 0.75, per) if per > 1 else np.array([0.5])
            chosen = [(f"{factor}_gt_q{int(round(100 * q))}", value > np.quantile(value, q)) for q in quantiles]
        for name, y in chosen:
            base, k = name, 2
            while name in cols:
                name, k = f"{base}_{k}", k + 1
            flip = rng.random(samples) < noise
            cols[name] = np.where(flip, ~y, y).astype(np.float32)
            truth[name] = g
    names = list(cols)
    return Dataset(
        features=img.reshape(samples, -1),
        labels=np.stack([cols[n] for n in names], axis=1),
        tasks=[_binary(n) for n in names],
        feature_names=[f"px_{i}" for i in range(3 * size * size)],
        source="builtin:shapes",
        ground_truth=truth,
        input_shape=(3, size, size),
    )


def subsets(
    tasks: int = 18,
    groups: int = 4,
    samples: int = 2000,
    features: int = 24,
    subset: int = 5,
    vary: float = 0.6,
    noise: float = 0.5,
    missing: float = 0.3,
    complement: int = 1,
    random: int = 1,
    mixed: int = 1,
    seed: int = 0,
) -> Dataset:
    """Tasks driven by hidden nonlinear features of feature subsets; a family unlike :func:`synthetic`.

    Each group ``g`` picks ``subset`` of the ``features`` inputs (groups may share
    inputs) and builds three hidden features from them, each a different nonlinearity
    of a random projection of the subset: ``sin(2u)``, ``|u| - E|u|``, ``u v`` (a product
    of two projections), ``relu(u) - E relu(u)`` or ``tanh(3u)``, standardised. A task of
    group ``g`` reads its group's hidden features with its own weights: the group's
    readout times ``1 - v`` plus a task-specific one times ``v``, ``v`` drawn in
    ``[0, vary]`` per task (readouts vary within a group), plus ``noise``. With
    ``mixed`` the task is binary (60%), three-class by quantiles (20%) or a regression
    target (20%); otherwise binary. Each task loses a fraction of its labels drawn in
    ``[0, missing]``, at random. ``complement`` tasks are ``1 - y`` of binary planted
    tasks (ground truth: the twin's group); ``random`` tasks have random binary labels
    (their own group, -1, -2, ...). Group membership is shuffled.
    """
    if tasks < 1 or groups < 1 or groups > tasks:
        raise InputError(f"builtin:subsets: need 1 <= groups <= tasks, got tasks={tasks}, groups={groups}")
    if samples < 40:
        raise InputError(f"builtin:subsets: samples={samples} is too small (at least 40)")
    if not 1 <= subset <= features:
        raise InputError(f"builtin:subsets: need 1 <= subset <= features, got subset={subset}, features={features}")
    if not 0.0 <= missing < 1.0 or not 0.0 <= vary <= 1.0:
        raise InputError(f"builtin:subsets: need 0 <= missing < 1 and 0 <= vary <= 1, got missing={missing}, "
                         f"vary={vary}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features))

    def hidden_feature(xs: np.ndarray, kind: int) -> np.ndarray:
        u = xs @ rng.standard_normal(xs.shape[1]) / np.sqrt(xs.shape[1])
        if kind == 0:
            f = np.sin(2.0 * u)
        elif kind == 1:
            f = np.abs(u)
        elif kind == 2:
            f = u * (xs @ rng.standard_normal(xs.shape[1]) / np.sqrt(xs.shape[1]))
        elif kind == 3:
            f = np.maximum(u, 0.0)
        else:
            f = np.tanh(3.0 * u)
        return (f - f.mean()) / (f.std() + 1e-12)

    hidden = []
    for _ in range(groups):
        xs = x[:, rng.choice(features, size=subset, replace=False)]
        hidden.append(np.stack([hidden_feature(xs, int(k)) for k in rng.choice(5, size=3, replace=False)], axis=1))
    readouts = [rng.standard_normal(3) for _ in range(groups)]
    assign = rng.permutation(np.arange(tasks) % groups)
    names = [f"y_{i:02d}" for i in range(tasks)]
    cols: list[np.ndarray] = []
    specs: list[TaskSpec] = []
    truth: dict[str, int] = {}
    for i, g in enumerate(assign):
        v = rng.uniform(0.0, vary)
        w = (1.0 - v) * readouts[g] + v * rng.standard_normal(3)
        score = hidden[g] @ w
        score = (score - score.mean()) / (score.std() + 1e-12) + noise * rng.standard_normal(samples)
        kind = rng.choice(["binary", "multiclass", "regression"], p=[0.6, 0.2, 0.2]) if mixed else "binary"
        if kind == "binary":
            cols.append((score > np.quantile(score, rng.uniform(0.3, 0.7))).astype(np.float32))
            specs.append(_binary(names[i]))
        elif kind == "multiclass":
            cols.append(np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype(np.float32))
            specs.append(TaskSpec(names[i], "multiclass", 3, ("0", "1", "2")))
        else:
            cols.append(score.astype(np.float32))
            specs.append(TaskSpec(names[i], "regression", 1))
        truth[names[i]] = int(g)
    binary = [i for i, sp in enumerate(specs) if sp.kind == "binary"]
    for k in range(complement if binary else 0):
        twin = binary[k % len(binary)]
        name = f"y_not_{twin:02d}"
        names.append(name)
        cols.append(1.0 - cols[twin])
        specs.append(_binary(name))
        truth[name] = truth[names[twin]]
    for k in range(random):
        name = f"y_random_{k}"
        names.append(name)
        cols.append((rng.random(samples) < 0.5).astype(np.float32))
        specs.append(_binary(name))
        truth[name] = -(k + 1)
    labels = np.stack(cols, axis=1).astype(np.float32)
    if missing > 0:
        rates = rng.uniform(0.0, missing, size=labels.shape[1])
        labels[rng.random(labels.shape) < rates] = np.nan
    return Dataset(
        features=x.astype(np.float32),
        labels=labels,
        tasks=specs,
        feature_names=[f"x_{i}" for i in range(features)],
        source="builtin:subsets",
        ground_truth=truth,
    )


MMAML_FAMILIES = ("sin", "line", "quad", "tanh", "abs")
"""MMAML's regression families, in the order ``modes=2|3|5`` takes them."""


def _mmaml_function(family: str, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """One task of ``family`` with its parameters drawn (MMAML's ranges, meta-learning.md)."""
    if family == "sin":
        a, p = rng.uniform(0.1, 5.0), rng.uniform(0.0, np.pi)
        return lambda x: a * np.sin(x - p)
    if family == "line":
        m, c = rng.uniform(-3.0, 3.0, 2)
        return lambda x: m * x + c
    if family == "quad":
        a, sign, c, b = rng.uniform(0.02, 0.15), rng.choice([-1.0, 1.0]), rng.uniform(-3, 3), rng.uniform(-3, 3)
        return lambda x: sign * a * (x - c) ** 2 + b
    m, c, b = rng.uniform(-3.0, 3.0, 3)
    if family == "tanh":
        return lambda x: m * np.tanh(x - c) + b
    return lambda x: m * np.abs(x - c) + b


def mmaml(modes: int = 3, train: int = 6, heldout: int = 20, samples: int = 200, query: int = 100,
          noise: float = 0.3, seed: int = 0) -> Dataset:
    """MMAML's multimodal regression: tasks that share no samples, one family per mode.

    ``modes`` 2, 3 or 5 takes the first families of :data:`MMAML_FAMILIES` (sin
    ``A sin(x - p)``, line ``m x + c``, quadratic ``+-a (x - c)^2 + b``, ``m tanh(x - c) + b``,
    ``m |x - c| + b``). Each family has ``train`` training tasks, each with its own 20 to
    ``samples`` points (x uniform on [-5, 5], Gaussian noise ``noise``), and ``heldout``
    held-out tasks with ``10 + query`` points each (a K-shot support set, K <= 10, is
    drawn from them at evaluation). One feature ``x``; a row is labelled for its own task
    only. Training tasks are ``sin_00``, ...; held-out ones ``test_sin_00``, ...
    (:attr:`Dataset.held_out`). The planted family of every task is the ground truth.
    """
    if modes not in (2, 3, 5):
        raise InputError(f"builtin:mmaml: modes={modes}; MMAML's sets have 2, 3 or 5 modes")
    if train < 1 or heldout < 0 or samples < 20 or query < 1 or noise < 0:
        raise InputError("builtin:mmaml: need train >= 1, heldout >= 0, samples >= 20, query >= 1, noise >= 0")
    rng = np.random.default_rng(seed)
    families = MMAML_FAMILIES[:modes]
    blocks: list[tuple[str, int, np.ndarray, np.ndarray]] = []
    for part, count in (("", train), ("test_", heldout)):
        for f, family in enumerate(families):
            for i in range(count):
                fn = _mmaml_function(family, rng)
                n = int(rng.integers(20, samples + 1)) if not part else 10 + query
                x = rng.uniform(-5.0, 5.0, n)
                blocks.append((f"{part}{family}_{i:02d}", f, x, fn(x) + noise * rng.standard_normal(n)))
    rows = sum(b[2].size for b in blocks)
    features = np.empty((rows, 1), np.float32)
    labels = np.full((rows, len(blocks)), np.nan, np.float32)
    start = 0
    for j, (_, _, x, y) in enumerate(blocks):
        features[start : start + x.size, 0] = x
        labels[start : start + x.size, j] = y
        start += x.size
    names = [b[0] for b in blocks]
    return Dataset(
        features=features,
        labels=labels,
        tasks=[TaskSpec(n, "regression", 1, (), "built-in") for n in names],
        feature_names=["x"],
        source="builtin:mmaml",
        ground_truth={b[0]: b[1] for b in blocks},
        held_out=tuple(n for n in names if n.startswith("test_")),
    )


def _group_sizes(sizes: str) -> list[int]:
    """``"2/12/4"`` -> ``[2, 12, 4]``; every size a positive integer."""
    try:
        counts = [int(p) for p in sizes.split("/")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise InputError(f"builtin:synthetic: sizes={sizes!r} must be positive group sizes joined by '/', e.g. 2/12/4")
    return counts


BUILTINS: dict[str, Callable[..., Dataset]] = {"digits": digits, "digits-images": digits_images,
                                               "synthetic": synthetic, "shapes": shapes, "subsets": subsets,
                                               "mmaml": mmaml}
_INT_OPTS = {"tasks", "groups", "samples", "features", "rank", "complement", "random", "seed", "size", "per",
             "subset", "mixed", "modes", "train", "heldout", "query"}
_FLOAT_OPTS = {"noise", "jitter", "missing", "vary"}
_STR_OPTS = {"sizes"}
_ALLOWED = {"digits": {"seed"}, "digits-images": {"seed"}, "shapes": {"samples", "size", "per", "noise", "seed"},
            "synthetic": {"tasks", "groups", "samples", "features", "rank", "complement", "random", "seed", "noise",
                          "jitter", "missing", "sizes"},
            "subsets": {"tasks", "groups", "samples", "features", "subset", "vary", "noise", "missing", "complement",
                        "random", "mixed", "seed"},
            "mmaml": {"modes", "train", "heldout", "samples", "query", "noise", "seed"}}


def load_builtin(spec: str) -> Dataset:
    """Load ``builtin:NAME[:k=v,...]``."""
    body = spec[len("builtin:"):]
    name, _, opts = body.partition(":")
    if name not in BUILTINS:
        raise InputError(f"unknown built-in dataset {name!r}; known: {', '.join(sorted(BUILTINS))}")
    kwargs: dict[str, int | float | str] = {}
    allowed = _ALLOWED[name]
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in allowed:
            raise InputError(f"{spec}: unknown option {item!r}; options: {', '.join(sorted(allowed))}")
        if key in _STR_OPTS:
            kwargs[key] = value
            continue
        try:
            kwargs[key] = int(value) if key in _INT_OPTS else float(value)
        except ValueError:
            raise InputError(f"{spec}: option {key} needs a number, got {value!r}") from None
    ds = BUILTINS[name](**kwargs)
    ds.source = spec
    return ds
