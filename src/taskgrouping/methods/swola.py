"""SWOLA: sample-wise optimisation landscape affinity (the primary method).

Source: Thakur, Huang, Molaei, Wang, Clifton, "Efficient Task Grouping Through
Sample-wise Optimisation Landscape Analysis", arXiv 2412.04413 (IEEE TPAMI 2025).

From one fixed starting point theta0 every probe sample x_i defines, for task t, the
one-step optimum theta*_{t,i} = theta0 - lr * g_{t,i}, g_{t,i} = grad l_t(x_i) over the
shared (trunk) parameters. The affinity is the mean L1 distance between optima::

    D[a, b] = (lr / n_ab) * sum_{i labelled for a and b} || g_{a,i} - g_{b,i} ||_1

Factorised exact form (methods.md section 1): for a linear layer the per-sample
gradient is the outer product delta h^T, so with a frozen trunk (h shared by all
tasks)::

    || g^l_{a,i} - g^l_{b,i} ||_1 = || delta^l_{a,i} - delta^l_{b,i} ||_1 * (||h^{l-1}_i||_1 + 1)

A probe therefore stores only the backpropagated errors ``delta`` (n x H per trunk),
and D is a weighted L1 distance between them: O(n H) memory per task instead of
O(n P), exact. Each task is probed independently of every other task.

Choices (methods.md, marked "our choice"): an MLP trunk of ``layers`` x ``hidden``
seeded from ``seed``; head ``fitted`` (a per-task linear head fitted on the frozen
trunk features, all heads fitted in one batched solve with one L2 strength chosen
jointly for every task by a shared cross-validation, :mod:`taskgrouping.methods.heads`)
or ``shared`` (the same seeded head for every task); normalisation ``task`` (each task's per-sample gradients
divided by their mean L1 norm), ``sample`` or ``none``; D averaged over ``trunks``
independently seeded trunks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from taskgrouping.data.dataset import TaskSpec
from taskgrouping.hashing import derive_seed
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.methods.probe import Probe
from taskgrouping.models.trunk import build_trunk, resolve_device, trunk_linears
from taskgrouping.models.trunks import resolve_trunk_name

HeadMode = Literal["fitted", "shared"]
Normalisation = Literal["none", "task", "sample"]


@dataclass(frozen=True)
class SwolaSettings:
    """Settings of the SWOLA probe and distance.

    Attributes:
        hidden: trunk width (methods.md: width 64 recovered planted groups exactly).
        layers: number of linear layers in the trunk.
        head: ``fitted`` (default) or ``shared``.
        normalise: ``task`` (default), ``sample`` or ``none``.
        trunks: number of independently seeded trunks D is averaged over.
        lr: the one-step learning rate eta (a constant factor of D).
        head_cs: inverse L2 strengths C tried by the cross-validated head fit.
        head_folds: cross-validation folds for the head fit.
        head_fit: ``joint`` (default: one C for every task, chosen by a shared CV over the
            tasks, heads fitted in one batched solve) or ``per-task`` (scikit-learn's
            ``LogisticRegressionCV`` / ``RidgeCV`` per task, the behaviour before issue 14).
        head_c: the C every ``joint`` head uses; None = choose it over the tasks being
            probed. The flow chooses it over all the run's tasks and passes it here, so a
            probe does not depend on which tasks share its batch.
        block: tasks per block in the pairwise step (bounds its memory).
        trunk: ``auto``, ``mlp``, ``cnn``, ``resnet`` or a factory (:mod:`taskgrouping.models.trunks`);
            the MLP keeps the exact factorised probe, any other trunk uses
            :mod:`taskgrouping.methods.probe_engine`.
        checkpoint: a trunk state dict (theta0), or None for the seeded initialisation.
        trunk_fp: content hash of the factory source and checkpoint (part of every probe key).
        sketch: ``auto`` (exact gradients while n x P fits, else a Cauchy sketch of width 128),
            ``none`` (always exact) or an integer K (always a sketch of width K); other trunks only.
    """

    hidden: int = 64
    layers: int = 2
    head: HeadMode = "fitted"
    normalise: Normalisation = "task"
    trunks: int = 1
    lr: float = 1.0
    head_cs: tuple[float, ...] = (0.01, 0.05, 0.2, 1.0, 5.0)
    head_folds: int = 3
    head_fit: str = "joint"
    head_c: float | None = None
    block: int = 64
    trunk: str = "auto"
    checkpoint: str | None = None
    trunk_fp: str = ""
    sketch: str = "auto"

    def __post_init__(self) -> None:
        """Validate option values."""
        if self.head not in ("fitted", "shared"):
            raise ValueError(f"SWOLA head must be 'fitted' or 'shared', got {self.head!r}")
        if self.normalise not in ("none", "task", "sample"):
            raise ValueError(f"SWOLA normalise must be none|task|sample, got {self.normalise!r}")
        if self.trunks < 1 or self.hidden < 1 or self.layers < 1 or self.block < 1:
            raise ValueError("SWOLA trunks, hidden, layers and block must be positive")
        if self.head_fit not in ("joint", "per-task"):
            raise ValueError(f"--head-fit must be joint or per-task, got {self.head_fit!r}")
        if self.head_c is not None and not self.head_c > 0:
            raise ValueError(f"the head's C must be positive, got {self.head_c!r}")
        if self.sketch not in ("auto", "none") and not (self.sketch.isdigit() and int(self.sketch) >= 1):
            raise ValueError(f"--sketch must be auto, none or a positive integer K, got {self.sketch!r}")

    @property
    def joint_head(self) -> bool:
        """Whether heads are fitted in one batched solve with one C (``fitted`` + ``joint``)."""
        return self.head == "fitted" and self.head_fit == "joint"

    def probe_part(self) -> dict[str, object]:
        """The settings a probe depends on (normalisation and blocking do not).

        A joint head depends on its C, not on the grid it was chosen from.
        """
        part: dict[str, object] = {"hidden": self.hidden, "layers": self.layers, "head": self.head,
                                   "trunks": self.trunks, "head_cs": list(self.head_cs),
                                   "head_folds": self.head_folds}
        if self.joint_head:
            del part["head_cs"], part["head_folds"]
            part |= {"head_fit": "joint", "head_c": self.head_c}
        part |= self._trunk_part()
        return part

    def cv_part(self) -> dict[str, object]:
        """The settings one task's cross-validated head losses depend on (the features and the grid)."""
        return {"hidden": self.hidden, "layers": self.layers, "trunks": self.trunks,
                "head_cs": list(self.head_cs), "head_folds": self.head_folds} | self._trunk_part()

    def _trunk_part(self) -> dict[str, object]:
        part: dict[str, object] = {}
        if self.trunk not in ("auto", "mlp") or self.checkpoint is not None:  # MLP keys stay as they were
            part |= {"trunk": self.trunk.rpartition(":")[2], "trunk_fp": self.trunk_fp, "sketch": self.sketch}
        elif self.sketch != "auto":  # ``auto`` is the cnn on images: a sketch width changes its probes
            part["sketch"] = self.sketch
        return part


def generic_trunk(settings: SwolaSettings, input_shape: tuple[int, ...]) -> bool:
    """Whether probes on inputs of ``input_shape`` run on the probe engine (any trunk but the project's MLP)."""
    return resolve_trunk_name(settings.trunk, input_shape) != "mlp" or settings.checkpoint is not None


def probe_trunks(in_dim: int, settings: SwolaSettings, seed: int) -> list[nn.Sequential]:
    """The frozen trunks every probe of a run uses (same seed: same weights everywhere)."""
    out = []
    for r in range(settings.trunks):
        trunk = build_trunk(in_dim, settings.hidden, settings.layers, derive_seed(seed, "swola-trunk", r))
        trunk.requires_grad_(False)
        out.append(trunk)
    return out


def _forward_record(trunk: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Run the trunk, keeping each linear layer's input and (differentiable) output."""
    inputs: list[torch.Tensor] = []
    pre: list[torch.Tensor] = []
    h = x
    for lin in trunk_linears(trunk):
        inputs.append(h)
        z = lin(h)
        if not pre:
            z = z.detach().requires_grad_(True)
        pre.append(z)
        h = torch.relu(z)
    return h, pre, inputs


def layer_weights(x: torch.Tensor, trunks: list[nn.Sequential]) -> torch.Tensor:
    """(trunks, n, layers) per-sample weights ``||h^{l-1}_i||_1 + 1`` shared by every task."""
    rows = []
    with torch.no_grad():
        for trunk in trunks:
            _, _, inputs = _forward_record(trunk, x)
            rows.append(torch.stack([h.abs().sum(dim=1) + 1.0 for h in inputs], dim=1))
    return torch.stack(rows)


def fit_head(h: np.ndarray, y: np.ndarray, task: TaskSpec, settings: SwolaSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit a regularised linear head on frozen trunk features (``fitted`` mode).

    The L2 strength is chosen by cross-validation (``LogisticRegressionCV`` /
    ``RidgeCV``), since an over-fitted head shrinks residuals and blurs the affinity.

    Args:
        h: (n_labelled, H) trunk features of the labelled probe samples.
        y: (n_labelled,) labels (0/1, class index or standardised value).

    Returns:
        weight (out_dim, H) and bias (out_dim,), float32.
    """
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    hdim = h.shape[1]
    if task.kind == "regression":
        alphas = [1.0 / (2.0 * c) for c in settings.head_cs]
        reg = RidgeCV(alphas=alphas).fit(h, y)
        return reg.coef_.reshape(1, hdim).astype(np.float32), np.array([reg.intercept_], np.float32)

    labels = y.astype(np.int64)
    present, counts = np.unique(labels, return_counts=True)
    n_out = task.out_dim
    weight = np.zeros((n_out, hdim), np.float32)
    bias = np.zeros(n_out, np.float32)
    folds = int(min(settings.head_folds, counts.min())) if present.size > 1 else 0
    if present.size < 2 or folds < 2:
        # Too few labels of some class to cross-validate: a constant head at the smoothed prior.
        prior = (np.bincount(labels, minlength=task.n_classes) + 1.0) / (labels.size + task.n_classes)
        if task.kind == "binary":
            bias[0] = np.log(prior[1] / prior[0])
        else:
            bias[:] = np.log(prior)
        return weight, bias
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegressionCV(
            Cs=list(settings.head_cs), cv=folds, scoring="neg_log_loss", max_iter=500,
            random_state=derive_seed(seed, "head-cv"),
        ).fit(h, labels)
    if task.kind == "binary":
        weight[0] = clf.coef_[0]
        bias[0] = clf.intercept_[0]
    else:
        weight[:] = 0.0
        bias[:] = -20.0  # classes absent from the probe sample get (almost) zero probability
        for row, cls in enumerate(clf.classes_):
            if present.size == 2:  # sklearn returns one row for two classes
                sign = 1.0 if row == 1 else -1.0
                weight[cls] = 0.5 * sign * clf.coef_[0]
                bias[cls] = 0.5 * sign * clf.intercept_[0]
            else:
                weight[cls] = clf.coef_[row]
                bias[cls] = clf.intercept_[row]
    return weight, bias


def shared_head(hidden: int, task: TaskSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded head init every task of the same output width shares (``shared`` mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "shared-head", task.out_dim))
        lin = nn.Linear(hidden, task.out_dim)
    return lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()


def task_heads(h: np.ndarray, y: np.ndarray, tasks: list[TaskSpec], settings: SwolaSettings, seed: int,
               c: float | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every task's head on the features ``h`` (n, H); ``y`` (n, B), NaN = missing.

    ``shared``: the seeded init. ``fitted`` + ``joint``: one batched solve at C = ``c``
    (None: chosen over these tasks, :func:`taskgrouping.methods.heads.choose_c`).
    ``fitted`` + ``per-task``: :func:`fit_head` per task.
    """
    from taskgrouping.methods import heads

    if settings.head == "shared":
        return [shared_head(h.shape[1], t, seed) for t in tasks]
    if settings.joint_head:
        if c is None:
            c = heads.choose_c(heads.cv_losses(h, y, tasks, settings.head_cs, settings.head_folds, seed),
                               settings.head_cs)
        return heads.fit_heads(h, y, tasks, c)
    out = []
    for b, t in enumerate(tasks):
        lab = ~np.isnan(y[:, b])
        out.append(fit_head(h[lab].astype(np.float64), y[lab, b], t, settings, seed))
    return out


def trunk_features(x: np.ndarray, settings: SwolaSettings, seed: int, device: str = "cpu",
                   input_shape: tuple[int, ...] | None = None) -> list[np.ndarray]:
    """The frozen features (n, H) every head is fitted on, one array per probe trunk."""
    shape = tuple(input_shape) if input_shape is not None else (x.shape[1],)
    dev = resolve_device(device)
    xt = torch.as_tensor(x, dtype=torch.float32, device=dev)
    with torch.no_grad():
        if generic_trunk(settings, shape):
            trunk = probe_trunk_any(settings, seed, shape, xt)
            return [torch.cat([trunk(xt[i : i + 256]) for i in range(0, xt.shape[0], 256)]).cpu().numpy()]
        return [_forward_record(t.to(dev), xt)[0].cpu().numpy() for t in probe_trunks(x.shape[1], settings, seed)]


def head_cv(x: np.ndarray, y: np.ndarray, tasks: list[TaskSpec], settings: SwolaSettings, seed: int,
            device: str = "cpu", input_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """(B, len(head_cs)) each task's relative CV loss per C, averaged over the probe trunks.

    A task's row depends on that task alone (its labels, the probe rows and the
    settings), so the flow caches it per task; the joint C is
    :func:`taskgrouping.methods.heads.choose_c` over the rows of every task of a run.
    """
    from taskgrouping.methods import heads

    feats = trunk_features(x, settings, seed, device, input_shape)
    return np.mean([heads.cv_losses(h.astype(np.float64), y, tasks, settings.head_cs, settings.head_folds, seed)
                    for h in feats], axis=0)


def joint_c(x: np.ndarray, y: np.ndarray, tasks: list[TaskSpec], settings: SwolaSettings, seed: int,
            device: str = "cpu", input_shape: tuple[int, ...] | None = None) -> float:
    """The one C of a ``joint`` head for these tasks: the grid point with the lowest mean CV loss."""
    from taskgrouping.methods.heads import choose_c

    return choose_c(head_cv(x, y, tasks, settings, seed, device, input_shape), settings.head_cs)


PROBE_CHUNK = 64
"""Tasks per batched backward pass: 1,000 tasks took 0.70 s in chunks of 64 and 1.75 s in one pass."""


def probe_task(x: np.ndarray, y: np.ndarray, task: TaskSpec, settings: SwolaSettings, seed: int,
               device: str = "cpu") -> Probe:
    """Probe one task: :func:`probe_tasks` with a single label column ``y`` (n,)."""
    return probe_tasks(x, y[:, None], [task], settings, seed, device)[0]


def probe_tasks(x: np.ndarray, y: np.ndarray, tasks: list[TaskSpec], settings: SwolaSettings, seed: int,
                device: str = "cpu", input_shape: tuple[int, ...] | None = None,
                maps: torch.Tensor | None = None) -> list[Probe]:
    """Probe several tasks: backpropagated errors of every probe sample at every trunk layer.

    Each task is probed independently of the others (the result for a task does not
    depend on which tasks share its batch); batching only shares work. Per trunk: one
    forward pass for all tasks, each task's head (fitted or shared), then one batched
    backward pass over (tasks, samples). Since samples and tasks are independent, the
    gradient of the summed loss with respect to a layer's output holds each (task,
    sample)'s own delta. No Python loop over samples.

    Args:
        x: (n, d) standardised probe features, shared by all tasks.
        y: (n, B) labels of the B tasks; NaN = missing (masked: delta 0, ``labelled`` False).
        tasks: the B tasks' specs.
        settings: probe settings.
        seed: run seed (the trunk and shared head derive from it).
        device: ``cpu`` or ``cuda``.
        input_shape: the shape of one input row (default ``(d,)``); with a trunk other than
            the MLP, probes run on :func:`probe_tasks_any`.
        maps: the trunk's sketch maps when the probes are sketches (:func:`trunk_sketch_maps`,
            computed here when None).

    Returns:
        One :class:`Probe` per task, in order.
    """
    shape = tuple(input_shape) if input_shape is not None else (x.shape[1],)
    if generic_trunk(settings, shape):
        # every task at once: the trunk's per-sample work (sketch maps, Jacobians) is shared by all of them
        return probe_tasks_any(x, y, tasks, settings, seed, device, shape, maps=maps)
    if len(tasks) > PROBE_CHUNK:  # in chunks of tasks (one C for all of them): bounded memory, cache-friendly
        if settings.joint_head and settings.head_c is None:
            settings = replace(settings, head_c=joint_c(x, y, tasks, settings, seed, device, shape))
        chunked: list[Probe] = []
        for i in range(0, len(tasks), PROBE_CHUNK):
            chunked += probe_tasks(x, y[:, i : i + PROBE_CHUNK], tasks[i : i + PROBE_CHUNK], settings, seed, device,
                                   shape)
        return chunked
    dev = resolve_device(device)
    labelled = ~np.isnan(y)
    xt = torch.as_tensor(x, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(np.nan_to_num(y, nan=0.0), dtype=torch.float32, device=dev)
    mask = torch.as_tensor(labelled, dtype=torch.float32, device=dev)
    n_tasks = len(tasks)
    c = settings.head_c
    if settings.joint_head and c is None:  # one C for these tasks, over every trunk
        c = joint_c(x, y, tasks, settings, seed, device)
    out = []
    for trunk in probe_trunks(x.shape[1], settings, seed):
        trunk = trunk.to(dev)
        linears = trunk_linears(trunk)
        with torch.no_grad():
            h, _, _ = _forward_record(trunk, xt)
        h_np = h.cpu().numpy()
        heads = task_heads(h_np.astype(np.float64), y, tasks, settings, seed, c)
        # replay the trunk from its first pre-activation, once per task (batch dim = tasks)
        z0 = linears[0](xt).detach()
        first = z0.unsqueeze(0).expand(n_tasks, *z0.shape).clone().requires_grad_(True)
        pre = [first]
        hb = torch.relu(first)
        for lin in linears[1:]:
            pre.append(lin(hb))
            hb = torch.relu(pre[-1])
        cot = head_cotangents(h, yt, mask, tasks, heads)  # (B, n, H): every task's d loss / d h at once
        # the scalar <hb, cot> has the same gradients as grad_outputs=cot (bit for bit: the product's
        # backward is cot times ones); a tensor grad_outputs makes torch import sympy (0.5 s a process)
        grads = torch.autograd.grad((hb * cot).sum(), pre)
        out.append(torch.cat(grads, dim=2).detach().cpu().numpy())  # (B, n, sum H)
    deltas = np.stack(out, axis=1).astype(np.float32)  # (B, R, n, sum H)
    return [Probe(deltas=np.ascontiguousarray(deltas[b]), labelled=labelled[:, b]) for b in range(n_tasks)]


def head_cotangents(h: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, tasks: list[TaskSpec],
                    heads: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
    """(B, n, H) the gradient of each task's summed per-sample loss on its labelled rows w.r.t. the features.

    Every task's head reads the same features ``h`` (n, H); ``y`` and ``mask`` are (n, B).
    The loss derivative with respect to the logits is written out per kind (BCE with
    logits: sigmoid - y; cross-entropy: softmax - one-hot; squared error: 2 (z - y)), the
    same functions as :func:`taskgrouping.models.losses.per_sample_loss`, so all tasks
    take one batched product instead of a graph with a slice per task (whose backward
    costs O(B^2) memory traffic: 1,000 tasks took 37 s instead of 1 s).
    """
    n_tasks, width = len(tasks), h.shape[1]
    k = max((t.out_dim for t in tasks), default=1)
    weight = torch.zeros((n_tasks, k, width), dtype=h.dtype, device=h.device)
    bias = torch.zeros((n_tasks, k), dtype=h.dtype, device=h.device)
    for b, (w, c) in enumerate(heads):
        weight[b, : w.shape[0]] = torch.as_tensor(w, dtype=h.dtype)
        bias[b, : c.shape[0]] = torch.as_tensor(c, dtype=h.dtype)
    z = torch.einsum("nh,bkh->bnk", h, weight) + bias[:, None, :]
    g = torch.zeros_like(z)
    yt = y.T  # (B, n)
    from taskgrouping.methods.heads import kind_batches

    for (kind, out), idx in kind_batches(tasks).items():
        i = torch.as_tensor(idx, device=h.device)
        if kind == "binary":
            g[i, :, 0] = torch.sigmoid(z[i, :, 0]) - yt[i]
        elif kind == "regression":
            g[i, :, 0] = 2.0 * (z[i, :, 0] - yt[i])
        else:
            onehot = torch.nn.functional.one_hot(yt[i].long(), out).to(h.dtype)
            g[i, :, :out] = torch.softmax(z[i, :, :out], dim=2) - onehot
    g *= mask.T[:, :, None]
    return torch.einsum("bnk,bkh->bnh", g, weight)


def probe_trunk_any(settings: SwolaSettings, seed: int, input_shape: tuple[int, ...], x: torch.Tensor) -> nn.Module:
    """The frozen trunk of a generic probe, the same in every process.

    Built from the settings, BatchNorm calibrated on ``x`` (unless a checkpoint gives
    the statistics), in ``eval()``.
    """
    from taskgrouping.models.trunks import build_any_trunk, calibrate_batchnorm

    trunk = build_any_trunk(settings.trunk, input_shape, settings.hidden, settings.layers,
                            derive_seed(seed, "swola-trunk", 0), settings.checkpoint).to(x.device)
    if settings.checkpoint is None:
        calibrate_batchnorm(trunk, x)
    return trunk.eval()


def trunk_sketch_maps(x: np.ndarray, settings: SwolaSettings, seed: int, device: str,
                      input_shape: tuple[int, ...], tasks: int | None = None) -> torch.Tensor | None:
    """The probe trunk's sketch maps on the probe inputs ``x`` (n, F, k), or None when probes are exact gradients.

    What every sketched probe of these inputs shares
    (:func:`~taskgrouping.methods.probe_engine.sketch_maps`); it depends on the trunk, the
    inputs, the sketch width and the seed, not on any task. ``tasks``: how many tasks
    are about to be probed; None (not worth it) when they are fewer than the trunk's F
    features, since the maps cost about what F tasks' probes cost.
    """
    from taskgrouping.methods import probe_engine as pe

    xt = torch.as_tensor(x, dtype=torch.float32, device=resolve_device(device))
    trunk = probe_trunk_any(settings, seed, input_shape, xt)
    k = pe.sketch_width(settings.sketch, xt.shape[0], pe.n_params(trunk))
    if k is None:
        return None
    with torch.no_grad():
        width = int(trunk(xt[:1]).shape[1])
    return None if tasks is not None and tasks < width else pe.sketch_maps(trunk, xt, k, seed)


def probe_tasks_any(x: np.ndarray, y: np.ndarray, tasks: list[TaskSpec], settings: SwolaSettings, seed: int,
                    device: str, input_shape: tuple[int, ...], chunk: int | None = None,
                    engine: str = "auto", maps: torch.Tensor | None = None) -> list[Probe]:
    """Probe tasks on any trunk: exact per-sample trunk gradients or their Cauchy sketch (probe_engine).

    Per task: the head (fitted on the frozen features, or shared), ``delta = d l / d h``
    for every labelled sample (0 elsewhere), then ``g = J^T delta`` per sample over the
    trainable trunk parameters: one backward pass per (sample, task), or, once the tasks
    outnumber the features, ``delta @ J`` from the F per-sample feature gradients. A
    sketch is ``delta @ maps[i]`` per sample from the trunk's sketch maps (``maps``, or
    computed here from F tasks on): the trunk's work does not grow with the number of
    tasks. With fewer tasks than features and no maps, each (sample, task) gradient is
    projected as it is computed: the same sketch, and the same estimated norms, to float
    rounding. ``chunk`` and ``engine`` only trade memory and speed.
    """
    from taskgrouping.methods import probe_engine as pe

    if settings.trunks != 1:
        raise ValueError("--trunks averages seeded MLP trunks; with another trunk use --trunks 1")
    dev = resolve_device(device)
    xt = torch.as_tensor(x, dtype=torch.float32, device=dev)
    trunk = probe_trunk_any(settings, seed, input_shape, xt)
    labelled = ~np.isnan(y)
    with torch.no_grad():
        h = torch.cat([trunk(xt[i : i + 256]) for i in range(0, xt.shape[0], 256)])
    n, width = h.shape
    heads = task_heads(h.cpu().numpy().astype(np.float64), y, tasks, settings, seed, settings.head_c)
    yt = torch.as_tensor(np.nan_to_num(y, nan=0.0), dtype=torch.float32, device=dev)
    mask = torch.as_tensor(labelled, dtype=torch.float32, device=dev)
    cot = head_cotangents(h, yt, mask, tasks, heads).transpose(0, 1).contiguous()  # (n, B, F)
    p_count = pe.n_params(trunk)
    k = pe.sketch_width(settings.sketch, n, p_count)
    if k is None:
        rows = np.zeros((len(tasks), n, p_count), np.float32)
        norms = np.zeros((len(tasks), n), np.float64)
        grads = pe.factored_grads if len(tasks) > width else pe.per_sample_grads
        for start, g in grads(trunk, xt, cot, chunk=chunk, engine=engine):
            stop = start + g.shape[0]
            norms[:, start:stop] = g.abs().sum(dim=2, dtype=torch.float64).T.cpu().numpy()
            rows[:, start:stop] = g.transpose(0, 1).cpu().numpy()
    else:
        if maps is None and len(tasks) >= width:  # the maps cost what F tasks cost: worth it from F tasks on
            maps = pe.sketch_maps(trunk, xt, k, seed, chunk, engine)
        if maps is not None:
            if tuple(maps.shape) != (n, width, k):
                raise ValueError(f"sketch maps of shape {tuple(maps.shape)} do not fit {n} samples, {width} "
                                 f"features and width {k}")
            sk, nr = pe.sketch_from_maps(cot, maps.to(dev))
            rows, norms = sk.cpu().numpy(), nr.cpu().numpy()
        else:  # fewer tasks than features: a backward pass and a projection per (sample, task), the same sketch
            rows = np.zeros((len(tasks), n, k), np.float32)
            for start, g in pe.per_sample_grads(trunk, xt, cot, chunk=chunk, engine=engine):
                for i in range(g.shape[0]):
                    rows[:, start + i] = pe.cauchy_project(g[i], start + i, k, seed).cpu().numpy()
            norms = pe.gm_l1(torch.from_numpy(rows)).numpy()
    kind = "grad" if k is None else "sketch"
    rows[~labelled.T] = 0.0
    return [Probe(deltas=rows[b][None], labelled=labelled[:, b], kind=kind, norms=norms[b][None])
            for b in range(len(tasks))]


def unit_weights(x: np.ndarray, settings: SwolaSettings, seed: int) -> np.ndarray:
    """(trunks, n, layers x hidden) float32: :func:`layer_weights` repeated over each layer's units."""
    weights = layer_weights(torch.as_tensor(x), probe_trunks(x.shape[1], settings, seed)).numpy()
    return np.repeat(weights, settings.hidden, axis=2).astype(np.float32)


def weighted_errors(deltas: torch.Tensor, labelled: torch.Tensor, weights: torch.Tensor,
                    settings: SwolaSettings) -> torch.Tensor:
    """Scale probes' deltas so that plain L1 between rows equals the gradient L1 distance, a batch at once.

    Args:
        deltas: (B, R, n, sum H) float32, B tasks' probes; overwritten (it becomes the result's storage).
        labelled: (B, n) bool.
        weights: (R, n, sum H) float32, one weight per unit: :func:`layer_weights`
            repeated over each layer's units (:func:`unit_weights`).

    Returns:
        (B, n, R * sum H) float32: row i of task b is ``[w_{l,i} * delta^l_i]`` over layers
        and trunks, normalised per ``settings.normalise``; rows of unlabelled samples are
        zero. The products and each sample's norm are float32 (as stored); the mean over
        samples is float64.
    """
    b, r, n, width = deltas.shape
    e = deltas.mul_(weights)
    if settings.normalise == "task":
        norms = e.abs().sum(dim=3).double()  # (B, R, n): per-sample gradient L1 norms (float64 sums: 10x slower)
        lab = labelled[:, None, :].to(torch.float64)
        count = lab.sum(dim=2)  # (B, 1)
        scale = (norms * lab).sum(dim=2) / count.clamp_min(1.0)  # mean over labelled samples, per trunk
        scale = torch.where((count > 0) & (scale > 0), scale, torch.ones_like(scale))
        e.mul_((1.0 / scale).to(e.dtype)[:, :, None, None])
    elif settings.normalise == "sample":
        norms = e.abs().sum(dim=3, keepdim=True).double()
        e.mul_((1.0 / torch.where(norms > 0, norms, torch.ones_like(norms))).to(e.dtype))
    out = e.permute(0, 2, 1, 3).reshape(b, n, r * width)  # a view when R = 1
    return out.masked_fill_(~labelled[:, :, None], 0.0)


L1_CHUNK = 4096
"""Columns per float32 partial L1 sum; the partial sums are added in float64."""


def _l1_block(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """(a, b) float64 L1 distances between the rows of ``xa`` (a, F) and ``xb`` (b, F).

    Compute-bound (``bench/pairs_floor.py``): float32 partial sums over :data:`L1_CHUNK`
    columns, added in float64, are 1.27x faster than float64 throughout at about 1e-6
    relative error (float32 throughout: 1.5e-5).
    """
    xa, xb = xa.float(), xb.float()
    out = torch.zeros((xa.shape[0], xb.shape[0]), dtype=torch.float64, device=xa.device)
    for k in range(0, xa.shape[1], L1_CHUNK):
        out += torch.cdist(xa[None, :, k : k + L1_CHUNK], xb[None, :, k : k + L1_CHUNK], p=1)[0].double()
    return out


def masked_l1_cross(ea: torch.Tensor, ma: torch.Tensor, eb: torch.Tensor, mb: torch.Tensor,
                    block: int = 64) -> torch.Tensor:
    """Mean L1 distance between tasks over samples labelled for both, in blocks.

    Args:
        ea: (Ta, n, m) weighted errors (zero rows where unlabelled); eb: (Tb, n, m).
        ma: (Ta, n) bool labelled masks; mb: (Tb, n).
        block: tasks per block; peak extra memory is O(block * n * m) in float64.
            Passing the same tensors as ``ea`` and ``eb`` computes only the blocks on and
            above the diagonal (the matrix is symmetric).

    Returns:
        (Ta, Tb) float64: ``sum_{i in both} ||ea_i - eb_i||_1 / n_ab``, NaN where n_ab = 0.

    The plain L1 distance of the flattened rows counts, for samples labelled for only
    one task, that task's row norm; that part is computed exactly with two matrix
    products and subtracted.
    """
    ta, n, m = ea.shape
    tb = eb.shape[0]
    fa = ea.reshape(ta, n * m)
    fb = eb.reshape(tb, n * m)
    symmetric = ea is eb  # the full matrix: compute the upper block triangle, mirror the rest
    total = torch.empty((ta, tb), dtype=torch.float64, device=ea.device)
    for i in range(0, ta, block):
        xa = fa[i : i + block]
        for j in range(i if symmetric else 0, tb, block):
            part = _l1_block(xa, fb[j : j + block])
            total[i : i + block, j : j + block] = part
            if symmetric and j != i:
                total[j : j + block, i : i + block] = part.T
    na = ea.abs().sum(dim=2).double()  # (Ta, n) row norms
    nb = eb.abs().sum(dim=2).double()
    ma_f, mb_f = ma.double(), mb.double()
    only_a = na @ (1.0 - mb_f).T  # sum of a's rows where b is unlabelled
    only_b = (nb @ (1.0 - ma_f).T).T
    both = ma_f @ mb_f.T
    d = (total - only_a - only_b).clamp_min(0.0) / both
    return torch.where(both > 0, d, torch.full_like(d, float("nan")))


def swola_distances(errors: np.ndarray, masks: np.ndarray, settings: SwolaSettings,
                    rows: list[int] | None = None, device: str = "cpu") -> np.ndarray:
    """SWOLA distances between tasks from their weighted errors.

    Args:
        errors: (T, n, m) float32, row t from :func:`weighted_errors` of task t.
        masks: (T, n) bool labelled.
        rows: compute only these tasks' rows (against all tasks); default all.

    Returns:
        (len(rows), T) float64 distances ``lr / trunks * mean_i ||.||_1``.
    """
    dev = resolve_device(device)
    return _scaled_l1(torch.as_tensor(errors, device=dev), torch.as_tensor(masks, device=dev), settings, rows)


def _scaled_l1(e: torch.Tensor, m: torch.Tensor, settings: SwolaSettings, rows: Sequence[int] | None) -> np.ndarray:
    """:func:`masked_l1_cross` of ``rows`` (default: all, computed symmetrically) against all, times ``lr / trunks``."""
    if rows is None or list(rows) == list(range(len(e))):
        d = masked_l1_cross(e, m, e, m, block=settings.block)
    else:
        d = masked_l1_cross(e[list(rows)], m[list(rows)], e, m, block=settings.block)
    return (d * (settings.lr / settings.trunks)).cpu().numpy()


ERROR_CHUNK = 16
"""Probes weighted and normalised at a time when only some rows are computed (4 MiB at 512 x 128: in cache;
16 took 0.17 s for one row against 1,000 tasks, 64 took 0.20 s, 256 took 0.5 s)."""


def distances_from_probes(probes: Sequence[Probe], x: np.ndarray, settings: SwolaSettings, seed: int,
                          rows: list[int] | None = None, device: str = "cpu") -> np.ndarray:
    """SWOLA distances from stored probes and the probe features ``x`` (n, d) they were taken on.

    Recomputes the shared per-sample layer weights (one forward pass per trunk), weights
    and normalises the probes (:func:`weighted_errors`, :data:`ERROR_CHUNK` at a time), and
    returns the distances of ``rows`` (default: all) against every task. A few rows (the
    tasks just added) never hold the other tasks' weighted errors all at once: they are
    compared chunk by chunk as they are weighted, and ``probes`` may be a sequence that
    reads each probe when asked for it (each is asked for once, or twice for a row), so
    the other tasks' probes are never all in memory either.
    """
    if probes and probes[0].kind != "delta":
        return _distances_any(list(probes), settings, rows, device)
    dev = resolve_device(device)
    weights = torch.as_tensor(unit_weights(x, settings, seed), device=dev)
    t = len(probes)

    def errors(idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = [probes[i] for i in idx]  # once each: ``probes`` may read them from the store
        deltas = torch.as_tensor(np.stack([p.deltas for p in chunk]), dtype=torch.float32, device=dev)
        masks = torch.as_tensor(np.stack([p.labelled for p in chunk]), device=dev)
        return weighted_errors(deltas, masks, weights, settings), masks

    if rows is None or 2 * len(rows) > t:
        e, mask = weighted_rows(probes, x, settings, seed, device)
        return _scaled_l1(e, mask, settings, rows)
    ea, ma = errors(list(rows))
    parts = []
    for start in range(0, t, ERROR_CHUNK):
        eb, mb = errors(range(start, min(t, start + ERROR_CHUNK)))
        parts.append(masked_l1_cross(ea, ma, eb, mb, block=settings.block))
    return (torch.cat(parts, dim=1) * (settings.lr / settings.trunks)).cpu().numpy()


def weighted_rows(probes: Sequence[Probe], x: np.ndarray, settings: SwolaSettings, seed: int,
                  device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Every task's rows whose plain L1 distances (over shared labelled samples) are SWOLA's D.

    Returns ``(errors (T, n, m) float32, masks (T, n) bool)``: the MLP's weighted errors
    (:func:`weighted_errors`, :data:`ERROR_CHUNK` probes at a time) or a generic probe's
    scaled gradient rows (:func:`~taskgrouping.methods.probe_engine.scaled_rows`). Each
    probe of ``probes`` is asked for once. Cauchy-sketched probes have no L1 rows (their
    distance is an estimate over sketches): ValueError.
    """
    dev = resolve_device(device)
    t = len(probes)
    first = probes[0] if t else None
    if first is not None and first.kind != "delta":
        from taskgrouping.methods.probe_engine import scaled_rows

        if first.kind != "grad":
            raise ValueError(f"probes of kind {first.kind!r} (Cauchy sketches) have no L1 rows to compare "
                             "pair by pair: use --sketch none or --pairs dense")
        n, m = first.deltas.shape[1], first.deltas.shape[2]
        e = torch.empty((t, n, m), dtype=torch.float32, device=dev)
        mask = torch.zeros((t, n), dtype=torch.bool, device=dev)
        for i in range(t):
            p = first if i == 0 else probes[i]
            if p.kind != "grad":
                raise ValueError(f"probes of different kinds cannot be compared: grad and {p.kind}")
            e[i] = torch.as_tensor(scaled_rows(p, settings.normalise), device=dev)
            mask[i] = torch.as_tensor(p.labelled, device=dev)
        return e, mask
    weights = torch.as_tensor(unit_weights(x, settings, seed), device=dev)
    n, m = x.shape[0], settings.trunks * weights.shape[2]
    e = torch.empty((t, n, m), dtype=torch.float32, device=dev)
    mask = torch.zeros((t, n), dtype=torch.bool, device=dev)
    for start in range(0, t, ERROR_CHUNK):
        chunk = [first if i == 0 and first is not None else probes[i] for i in range(start, min(t, start + ERROR_CHUNK))]
        deltas = torch.as_tensor(np.stack([p.deltas for p in chunk]), dtype=torch.float32, device=dev)
        masks = torch.as_tensor(np.stack([p.labelled for p in chunk]), device=dev)
        e[start : start + len(chunk)] = weighted_errors(deltas, masks, weights, settings)
        mask[start : start + len(chunk)] = masks
    return e, mask


def _distances_any(probes: list[Probe], settings: SwolaSettings, rows: list[int] | None,
                   device: str) -> np.ndarray:
    """Distances between generic probes: exact L1 of gradient rows, or the GM estimate from sketches."""
    from taskgrouping.methods.probe_engine import masked_gm_cross, scaled_rows

    kinds = {p.kind for p in probes}
    if len(kinds) != 1:
        raise ValueError(f"probes of different kinds cannot be compared: {sorted(kinds)}")
    n, m = probes[0].deltas.shape[1], probes[0].deltas.shape[2]
    errors = np.empty((len(probes), n, m), np.float32)
    for i, p in enumerate(probes):
        errors[i] = scaled_rows(p, settings.normalise)
    masks = np.stack([p.labelled for p in probes])
    if probes[0].kind == "grad":  # wide rows (n x P): blocks sized to about 512 MiB of float64 each
        from dataclasses import replace

        block = max(1, min(settings.block, (512 << 20) // max(1, n * m * 8)))
        return swola_distances(errors, masks, replace(settings, block=block), rows=rows, device=device)
    dev = resolve_device(device)
    e, mk = torch.as_tensor(errors, device=dev), torch.as_tensor(masks, device=dev)
    sel = list(range(len(probes))) if rows is None else list(rows)
    d = masked_gm_cross(e[sel], mk[sel], e, mk)
    return (d * settings.lr).cpu().numpy()


def swola_affinity(x: np.ndarray, y: np.ndarray, tasks: list[TaskSpec], settings: SwolaSettings, seed: int,
                   device: str = "cpu", input_shape: tuple[int, ...] | None = None) -> AffinityMatrix:
    """The whole SWOLA affinity in memory: probe every task of ``y`` (n, T) on ``x`` (n, d), then distances.

    The flow does the same in steps (one cached probe per task); this is for
    notebooks, benchmarks and tests.
    """
    probes = probe_tasks(x, y, tasks, settings, seed, device, input_shape)
    d = distances_from_probes(probes, x, settings, seed, device=device)
    return affinity_from_distances([t.name for t in tasks], d)


def affinity_from_distances(tasks: list[str], d: np.ndarray) -> AffinityMatrix:
    """Symmetrise (exact up to rounding), zero the diagonal and wrap as a ``distance`` matrix."""
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    if np.isnan(d).any():
        i, j = np.argwhere(np.isnan(d))[0]
        raise ValueError(f"tasks {tasks[i]!r} and {tasks[j]!r} share no labelled probe sample")
    return AffinityMatrix(tasks, d, "distance")
