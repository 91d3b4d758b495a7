"""Tasks that share no samples: a distribution-level probe per task, and one meta-initialisation per group.

SWOLA's distance is a mean over samples labelled for both tasks; for tasks with their
own samples (meta-learning task sets, datasets stacked in one table) it is undefined.
This module is the "SWOLA-style, reconstructed" answer of ``meta-learning.md``
(methods.md section 8):

* **The sample-wise convergence signature** (``probe="signature"``, the default). One
  seeded trunk theta0 shared by all tasks with a *zero* output head; per task, targets
  z-scored on its own samples (classes are indices already); ``steps`` full-batch
  gradient steps from theta0 on the task's own samples (at most ``max_samples``); each
  sample's log loss after steps 1, 2, 4, ..., ``steps``. A task's probe is that set of
  per-sample vectors. With a zero head, gradient descent on ``-y`` follows the mirror
  path of ``y`` (the head's sign flips, the trunk's path is the same), so a sign flip,
  a rescaling of a regression target and a permutation of class labels give the same
  probe.
* **Per-sample gradients** (``probe="gradients"``, the baseline the note measured):
  each sample's loss gradient over every parameter at theta0 with a seeded head.
* **TSA-style adapted parameters** (``probe="adapted"``): the parameters after
  ``adapt_steps`` gradient steps from theta0 (TSA-MAML clusters these), one vector per task.

Distances: the energy distance under L1 between two tasks' sets of per-sample vectors
(``2 E|a - b| - E|a - a'| - E|b - b'|``, V-statistics, so never negative: L1 is of
negative type); for ``adapted`` the Euclidean distance between the two vectors (a
set of one). Every probe depends on its task alone: cached per task, parallel,
incremental like SWOLA's.

Meta-training (:func:`fomaml`) is first-order MAML with every initialisation of every
setting trained at once (``torch.func``: the inits and the tasks of a meta-batch are
vectorised), and :func:`evaluate_inits` adapts each held-out task from every init on
its K-shot support set (leave-one-out on the support set picks the init a deployed
task would use).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from taskgrouping.data.dataset import TaskSpec
from taskgrouping.hashing import derive_seed
from taskgrouping.methods.swola import Probe

META_PROBES = ("signature", "gradients", "adapted")

LOG_FLOOR = 1e-6
"""Added to each per-sample loss before its log (a fitted sample's loss reaches float noise)."""


@dataclass(frozen=True)
class MetaSettings:
    """The probe of tasks that share no samples (``--method swola-meta``).

    Attributes:
        probe: ``signature`` (default), ``gradients`` or ``adapted`` (module docstring).
        steps: R, full-batch gradient steps of the signature (recorded at 1, 2, 4, ..., R).
        lr: the signature's step size (targets are z-scored, the head starts at zero).
        max_samples: a task's samples the probe uses at most (a seeded draw of its rows).
        hidden, layers: the MLP trunk (another ``--trunk`` brings its own architecture).
        adapt_steps, adapt_lr: the ``adapted`` probe's steps (TSA-MAML adapts 5).
        trunk, checkpoint, trunk_fp: the run's trunk (copied in by the run configuration).
    """

    probe: str = "signature"
    steps: int = 128
    lr: float = 0.05
    max_samples: int = 256
    hidden: int = 40
    layers: int = 2
    adapt_steps: int = 5
    adapt_lr: float = 0.01
    trunk: str = "auto"
    checkpoint: str | None = None
    trunk_fp: str = ""

    def __post_init__(self) -> None:
        """Validate option values."""
        if self.probe not in META_PROBES:
            raise ValueError(f"--meta-probe must be one of {', '.join(META_PROBES)}, got {self.probe!r}")
        if self.steps < 1 or self.max_samples < 2 or self.hidden < 1 or self.layers < 1 or self.adapt_steps < 1:
            raise ValueError("meta probe steps, samples (>= 2), hidden, layers and adapt steps must be positive")
        if not (self.lr > 0 and self.adapt_lr > 0):
            raise ValueError("meta probe step sizes must be positive")

    def probe_part(self) -> dict[str, object]:
        """Everything a probe depends on (all of it)."""
        return asdict(self)

    def checkpoints(self) -> list[int]:
        """The steps whose per-sample losses are recorded: 1, 2, 4, ... up to and including R."""
        out, s = [], 1
        while s < self.steps:
            out.append(s)
            s *= 2
        return out + [self.steps]


def meta_trunk(settings: MetaSettings, seed: int, input_shape: tuple[int, ...]) -> nn.Module:
    """theta0's trunk: the run's trunk, seeded the same in every process, in ``eval()`` (BatchNorm frozen)."""
    from taskgrouping.models.trunks import build_any_trunk

    return build_any_trunk(settings.trunk, tuple(input_shape), settings.hidden, settings.layers,
                           derive_seed(seed, "meta-trunk"), settings.checkpoint).eval()


def task_rows(labels: np.ndarray, candidates: np.ndarray, name: str, seed: int, limit: int) -> np.ndarray:
    """The rows a task's probe uses: its labelled ``candidates``, at most ``limit`` (seeded by the task's name), sorted."""
    rows = candidates[~np.isnan(labels[candidates])]
    if rows.size > limit:
        rng = np.random.default_rng(derive_seed(seed, "meta-rows", name))
        rows = np.sort(rng.choice(rows, limit, replace=False))
    return rows


def standardised(y: np.ndarray, task: TaskSpec) -> np.ndarray:
    """A regression target z-scored on the task's own samples (a constant one centred); class indices as they are."""
    if task.kind != "regression":
        return y.astype(np.float32)
    y64 = y.astype(np.float64)
    sd = float(y64.std())
    z = (y64 - y64.mean()) / (sd if sd > 1e-12 * max(1.0, float(np.abs(y64).max(initial=0.0))) else 1.0)
    return z.astype(np.float32)


def _loss_fn(task: TaskSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample loss of logits (n, out) against targets (n,), by kind (as every probe and model)."""
    from taskgrouping.models.losses import per_sample_loss

    return lambda logits, y: per_sample_loss(logits, y, task)


def _features(trunk: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
              x: torch.Tensor) -> torch.Tensor:
    return functional_call(trunk, (params, buffers), (x,))


def signature(trunk: nn.Module, x: np.ndarray, y: np.ndarray, task: TaskSpec, settings: MetaSettings) -> np.ndarray:
    """(n, len(checkpoints)) float32: each sample's log loss along ``steps`` gradient steps from theta0, zero head.

    ``y`` is the task's raw target on its own samples ``x``; it is z-scored here.
    """
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(standardised(y, task))
    loss = _loss_fn(task)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in trunk.named_parameters()}
    buffers = dict(trunk.named_buffers())
    with torch.no_grad():
        width = _features(trunk, params, buffers, xt[:2]).shape[1]
    w = torch.zeros(task.out_dim, width, requires_grad=True)
    b = torch.zeros(task.out_dim, requires_grad=True)
    marks = set(settings.checkpoints())
    out = []
    for step in range(settings.steps + 1):
        per = loss(_features(trunk, params, buffers, xt) @ w.T + b, yt)
        if step in marks:
            out.append(torch.log(per.detach() + LOG_FLOOR))
        if step == settings.steps:
            break
        leaves = [*params.values(), w, b]
        grads = torch.autograd.grad(per.mean(), leaves)
        with torch.no_grad():
            for p, g in zip(leaves, grads, strict=True):
                p -= settings.lr * g
    return torch.stack(out, dim=1).numpy().astype(np.float32)


def _with_head(trunk: nn.Module, out_dim: int, seed: int, x: torch.Tensor) -> nn.Sequential:
    """The trunk with a seeded default-initialised linear head (gradients and adapted probes, meta-training)."""
    with torch.no_grad():
        width = trunk(x[:2]).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "meta-head", out_dim, width))
        head = nn.Linear(width, out_dim)
    return nn.Sequential(trunk, head).eval()


def _flat_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def sample_gradients(trunk: nn.Module, x: np.ndarray, y: np.ndarray, task: TaskSpec, seed: int) -> np.ndarray:
    """(n, P) float32: each sample's loss gradient over every parameter at theta0 (seeded head), z-scored target."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(standardised(y, task))
    model = _with_head(trunk, task.out_dim, seed, xt)
    params, buffers = _flat_params(model), dict(model.named_buffers())
    loss = _loss_fn(task)

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss(functional_call(model, (p, buffers), (xi[None],)), yi[None])[0]

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, xt, yt)
    return torch.cat([v.reshape(xt.shape[0], -1) for v in g.values()], dim=1).numpy().astype(np.float32)


def adapted_parameters(trunk: nn.Module, x: np.ndarray, y: np.ndarray, task: TaskSpec, settings: MetaSettings,
                       seed: int) -> np.ndarray:
    """(1, P) float32: the parameters' change after ``adapt_steps`` full-batch steps from theta0 (seeded head)."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(standardised(y, task))
    model = _with_head(trunk, task.out_dim, seed, xt)
    params, buffers = _flat_params(model), dict(model.named_buffers())
    start = torch.cat([v.reshape(-1) for v in params.values()])
    loss = _loss_fn(task)

    def total(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss(functional_call(model, (p, buffers), (xt,)), yt).mean()

    for _ in range(settings.adapt_steps):
        g = grad(total)(params)
        params = {k: v - settings.adapt_lr * g[k] for k, v in params.items()}
    return (torch.cat([v.reshape(-1) for v in params.values()]) - start)[None].numpy().astype(np.float32)


def meta_probe(x: np.ndarray, y: np.ndarray, task: TaskSpec, settings: MetaSettings, seed: int,
               input_shape: tuple[int, ...], trunk: nn.Module | None = None) -> Probe:
    """One task's probe from its own samples ``x`` (n, d) and raw targets ``y`` (n,), no NaN.

    Returned as a :class:`~taskgrouping.methods.swola.Probe` of kind ``signature``,
    ``gradients`` or ``adapted`` with ``deltas`` (1, rows, width), every row labelled.
    """
    if x.shape[0] < 2:
        raise ValueError(f"ML task {task.name!r} has {x.shape[0]} labelled training samples; "
                         "the meta probe needs at least 2")
    trunk = meta_trunk(settings, seed, input_shape) if trunk is None else trunk
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "meta-probe"))
        if settings.probe == "signature":
            rows = signature(trunk, x, y, task, settings)
        elif settings.probe == "gradients":
            rows = sample_gradients(trunk, x, y, task, seed)
        else:
            rows = adapted_parameters(trunk, x, y, task, settings, seed)
    return Probe(deltas=rows[None], labelled=np.ones(rows.shape[0], bool), kind=settings.probe)


def _mean_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cdist(a[None].double(), b[None].double(), p=1)[0].mean())


def energy_distances(sets: Sequence[np.ndarray], rows: Sequence[int] | None = None) -> np.ndarray:
    """(len(rows), T) energy distances under L1 between per-sample vector sets (V-statistics, >= 0)."""
    tensors = [torch.tensor(np.array(s, np.float32)) for s in sets]
    self_terms = [_mean_l1(t, t) for t in tensors]
    sel = list(range(len(sets))) if rows is None else list(rows)
    out = np.zeros((len(sel), len(sets)))
    for r, i in enumerate(sel):
        for j in range(len(sets)):
            if j != i:
                out[r, j] = max(0.0, 2.0 * _mean_l1(tensors[i], tensors[j]) - self_terms[i] - self_terms[j])
    return out


def meta_distances(probes: Sequence[Probe], rows: Sequence[int] | None = None) -> np.ndarray:
    """Distances between meta probes: energy distance (signature, gradients) or Euclidean (adapted)."""
    kinds = {p.kind for p in probes}
    if len(kinds) > 1:
        raise ValueError(f"probes of different kinds cannot be compared: {sorted(kinds)}")
    sets = [np.asarray(p.deltas[0]) for p in probes]
    if kinds == {"adapted"}:
        v = torch.tensor(np.concatenate(sets), dtype=torch.float64)
        sel = list(range(len(sets))) if rows is None else list(rows)
        return torch.cdist(v[sel], v).numpy()
    return energy_distances(sets, rows)


# --- one meta-initialisation per group ------------------------------------------------------


@dataclass(frozen=True)
class MetaTrainSettings:
    """First-order MAML, fixed and documented (``--training meta``; meta-learning.md's settings).

    Attributes:
        inner_steps, inner_lr: SGD steps on a task's support set during meta-training.
        outer_steps, outer_lr: Adam steps on each initialisation (one per group).
        meta_batch: tasks per outer step, drawn from the group's tasks.
        shots: support points and query points per task during meta-training (drawn apart).
        clip: every SGD step's gradient (inner and held-out adaptation) and each task's
            first-order meta-gradient are clipped to this L2 norm per task.
        eval_steps: SGD steps (``inner_lr``) adapting a held-out task from an init.
        eval_shots: the K of the K-shot evaluations.
        query: query points per held-out task at most (the points not in its support set).
        random_partitions: random partitions of the found groups' sizes, each meta-trained.
    """

    inner_steps: int = 5
    inner_lr: float = 0.01
    outer_steps: int = 1000
    outer_lr: float = 1e-3
    meta_batch: int = 5
    shots: int = 10
    clip: float = 10.0
    eval_steps: int = 10
    eval_shots: tuple[int, ...] = (5, 10)
    query: int = 100
    random_partitions: int = 3

    def __post_init__(self) -> None:
        """Validate option values."""
        ints = (self.inner_steps, self.outer_steps, self.meta_batch, self.shots, self.eval_steps, self.query,
                self.random_partitions)
        if min(ints) < 1 or not self.eval_shots or min(self.eval_shots) < 2:
            raise ValueError("meta-training steps, batch, shots, query, partitions must be positive, K-shots >= 2")
        if not (self.inner_lr > 0 and self.outer_lr > 0 and self.clip > 0):
            raise ValueError("meta-training step sizes and the clip must be positive")

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> MetaTrainSettings:
        """Inverse of ``asdict`` (JSON gives lists for tuples)."""
        d = dict(d)
        if "eval_shots" in d:
            d["eval_shots"] = tuple(int(k) for k in d["eval_shots"])  # type: ignore[attr-defined]
        return cls(**d)  # type: ignore[arg-type]


@dataclass
class MetaTask:
    """One task's own samples: inputs (n, d) float32 and raw targets (n,)."""

    name: str
    x: np.ndarray
    y: np.ndarray


def meta_model(settings: MetaSettings, seed: int, input_shape: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """theta0 of every initialisation: the run's trunk (:func:`meta_trunk`) and a seeded linear head."""
    trunk = meta_trunk(settings, seed, input_shape)
    d = int(np.prod(input_shape))
    return _with_head(trunk, out_dim, seed, torch.zeros(2, d))


def _pack(tasks: Sequence[MetaTask]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tasks padded to one tensor: x (T, n_max, d), y (T, n_max), counts (T,)."""
    n_max = max(t.x.shape[0] for t in tasks)
    d = tasks[0].x.shape[1]
    x = torch.zeros(len(tasks), n_max, d)
    y = torch.zeros(len(tasks), n_max)
    for i, t in enumerate(tasks):
        x[i, : t.x.shape[0]] = torch.as_tensor(t.x, dtype=torch.float32)
        y[i, : t.y.shape[0]] = torch.as_tensor(t.y, dtype=torch.float32)
    return x, y, torch.tensor([t.x.shape[0] for t in tasks])


BatchedForward = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def mlp_layers(model: nn.Module) -> list[tuple[str, str]] | None:
    """The model as a chain of ``("linear", name)`` and ``("relu" | "tanh", "")``, if it is only that; else None."""
    chain: list[tuple[str, str]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            if mod.bias is None:
                return None
            chain.append(("linear", name))
        elif isinstance(mod, nn.ReLU | nn.Tanh):
            chain.append(("relu" if isinstance(mod, nn.ReLU) else "tanh", ""))
        elif isinstance(mod, nn.Flatten) or type(mod) in (nn.Sequential,) or type(mod).__name__ == "ShapedTrunk":
            continue
        else:
            return None
    return chain


def batched_forward(model: nn.Module, input_shape: tuple[int, ...], engine: str = "auto") -> BatchedForward:
    """``f(params, x)``: the model on ``x`` (N, m, d) with the N-th copy of every parameter (N, ...).

    ``engine="mlp"`` (a chain of linear layers and ReLU/tanh on vector inputs) is batched
    matrix products; ``"vmap"`` (any module) is ``torch.func.functional_call`` vectorised
    over the copies. ``auto`` takes the first that applies. Both are differentiated by
    plain autograd, so every copy's gradient is that of the sum of the copies' losses.
    """
    chain = mlp_layers(model) if len(input_shape) == 1 else None
    if engine == "mlp" or (engine == "auto" and chain is not None):
        if chain is None:
            raise ValueError("the mlp engine needs a chain of linear layers and ReLU/tanh on vector inputs")

        def mlp(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            h = x
            for op, name in chain:
                if op == "linear":
                    h = torch.baddbmm(params[f"{name}.bias"][:, None, :], h,
                                      params[f"{name}.weight"].transpose(1, 2))
                else:
                    h = torch.relu(h) if op == "relu" else torch.tanh(h)
            return h

        return mlp
    buffers = dict(model.named_buffers())

    def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (x,))

    return vmap(one, in_dims=(0, 0))


def _per_sample(task: TaskSpec, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, m) per-sample losses of outputs (N, m, out_dim) against targets (N, m)."""
    n, m = y.shape
    return _loss_fn(task)(out.reshape(n * m, -1), y.reshape(n * m)).reshape(n, m)


def _clipped(grads: Sequence[torch.Tensor], clip: float | None) -> list[torch.Tensor]:
    """Each copy's gradient (the first axis) scaled to L2 norm at most ``clip`` over all its parameters."""
    if clip is None:
        return list(grads)
    norm = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
    scale = torch.clamp(clip / (norm + 1e-12), max=1.0)
    return [g * scale.reshape(-1, *([1] * (g.ndim - 1))) for g in grads]


def _sgd(forward: BatchedForward, task: TaskSpec, params: dict[str, torch.Tensor], x: torch.Tensor,
         y: torch.Tensor, w: torch.Tensor, steps: int, lr: float, clip: float | None = None) -> dict[str, torch.Tensor]:
    """``steps`` SGD steps of every copy on its own weighted mean loss (weights w (N, m)); returns new leaves.

    ``clip``: each copy's gradient is clipped to this L2 norm first (as ``clip_grad_norm_`` per model).
    """
    for _ in range(steps):
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        per = _per_sample(task, forward(p, x), y)
        total = ((per * w).sum(dim=1) / w.sum(dim=1)).sum()
        grads = _clipped(torch.autograd.grad(total, list(p.values())), clip)
        params = {k: (v - lr * g).detach() for (k, v), g in zip(p.items(), grads, strict=True)}
    return params


def fomaml(model: nn.Module, task: TaskSpec, tasks: Sequence[MetaTask], groups: Sequence[Sequence[int]],
           settings: MetaTrainSettings, seed: int, input_shape: tuple[int, ...] | None = None,
           engine: str = "auto") -> dict[str, torch.Tensor]:
    """First-order MAML: one initialisation per group of ``tasks`` (indices), all trained at once from theta0.

    Each outer step draws ``meta_batch`` tasks of each group (with replacement), and
    from each task ``shots`` support and ``shots`` query points without replacement
    (with replacement for a task smaller than ``2 shots``); ``inner_steps`` SGD steps on
    the support set (each step's gradient clipped to ``clip``), then the query loss's
    gradient at the adapted parameters, clipped to ``clip``, is the task's meta-gradient; the group's mean of them is one Adam step
    of its init. Adam is elementwise, so one Adam over the stacked inits is one Adam per
    init. Returns the inits, each parameter stacked (G, ...).
    """
    shape = tuple(input_shape) if input_shape is not None else (tasks[0].x.shape[1],)
    forward = batched_forward(model, shape, engine)
    n_groups, b = len(groups), settings.meta_batch
    inits = {k: v.detach()[None].repeat(n_groups, *([1] * v.ndim)).clone().requires_grad_(True)
             for k, v in model.named_parameters()}
    opt = torch.optim.Adam(list(inits.values()), lr=settings.outer_lr)
    x_all, y_all, counts = _pack(tasks)
    size = torch.tensor([len(g) for g in groups])
    members = torch.zeros(n_groups, int(size.max()), dtype=torch.long)
    for i, group in enumerate(groups):
        members[i, : len(group)] = torch.as_tensor(list(group))
    gen = torch.Generator().manual_seed(derive_seed(seed, "fomaml"))
    k, n_max = settings.shots, x_all.shape[1]
    ones = torch.ones(n_groups * b, k)
    for _ in range(settings.outer_steps):
        pick = (torch.rand(n_groups, b, generator=gen) * size[:, None]).long()
        tid = members.gather(1, pick).reshape(-1)  # (G B,) task indices
        n = counts[tid]
        order = torch.rand(n_groups * b, n_max, generator=gen).masked_fill(torch.arange(n_max) >= n[:, None], 2.0)
        rows = order.argsort(dim=1)[:, : 2 * k]  # without replacement while n >= 2 shots
        wrapped = (torch.rand(n_groups * b, 2 * k, generator=gen) * n[:, None]).long()
        rows = torch.where(n[:, None] < 2 * k, wrapped, rows)
        x, y = x_all[tid[:, None], rows], y_all[tid[:, None], rows]
        copies = {name: v.detach().repeat_interleave(b, dim=0) for name, v in inits.items()}
        adapted = _sgd(forward, task, copies, x[:, :k], y[:, :k], ones, settings.inner_steps, settings.inner_lr,
                       settings.clip)
        p = {name: v.requires_grad_(True) for name, v in adapted.items()}
        query = _per_sample(task, forward(p, x[:, k:]), y[:, k:]).mean(dim=1).sum()
        grads = _clipped(torch.autograd.grad(query, list(p.values())), settings.clip)
        opt.zero_grad(set_to_none=False)
        for v, g in zip(inits.values(), grads, strict=True):
            v.grad = g.reshape(n_groups, b, *g.shape[1:]).mean(dim=1)
        opt.step()
    return {name: v.detach() for name, v in inits.items()}


def support_rows(n: int, shots: int, name: str, seed: int, query: int) -> tuple[np.ndarray, np.ndarray]:
    """A held-out task's K-shot support rows and its query rows (the rest, at most ``query``), seeded by its name."""
    order = np.random.default_rng(derive_seed(seed, "support", name, shots)).permutation(n)
    return np.sort(order[:shots]), np.sort(order[shots : shots + query])


def evaluate_inits(model: nn.Module, task: TaskSpec, inits: dict[str, torch.Tensor], held: Sequence[MetaTask],
                   shots: int, settings: MetaTrainSettings, seed: int, input_shape: tuple[int, ...] | None = None,
                   engine: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Adapt every held-out task from every init on its K-shot support set.

    Returns (query, loo), both (H, G): the query loss after ``eval_steps`` SGD steps on
    the support set, and the leave-one-out loss on the support set (each support point's
    loss after adapting on the others), which a deployed task uses to pick its init.
    All G x (K + 1) adaptations of a task run as one batch.
    """
    shape = tuple(input_shape) if input_shape is not None else (held[0].x.shape[1],)
    forward = batched_forward(model, shape, engine)
    g = next(iter(inits.values())).shape[0]
    copies = shots + 1  # the full support set, then one fold per left-out point
    w = torch.ones(copies, shots)
    w[1:] -= torch.eye(shots)
    w = w.repeat(g, 1)
    query = np.zeros((len(held), g))
    loo = np.zeros_like(query)
    for h, t in enumerate(held):
        if t.x.shape[0] <= shots:
            raise ValueError(f"held-out ML task {t.name!r} has {t.x.shape[0]} samples; a {shots}-shot "
                             "evaluation needs more (support and query)")
        s_rows, q_rows = support_rows(t.x.shape[0], shots, t.name, seed, settings.query)
        xs = torch.as_tensor(t.x[s_rows], dtype=torch.float32)[None].expand(g * copies, -1, -1)
        ys = torch.as_tensor(t.y[s_rows], dtype=torch.float32)[None].expand(g * copies, -1)
        p = {name: v.repeat_interleave(copies, dim=0) for name, v in inits.items()}
        adapted = _sgd(forward, task, p, xs, ys, w, settings.eval_steps, settings.inner_lr, settings.clip)
        with torch.no_grad():
            full = {name: v[::copies] for name, v in adapted.items()}
            xq = torch.as_tensor(t.x[q_rows], dtype=torch.float32)[None].expand(g, -1, -1)
            yq = torch.as_tensor(t.y[q_rows], dtype=torch.float32)[None].expand(g, -1)
            query[h] = _per_sample(task, forward(full, xq), yq).mean(dim=1).numpy()
            per = _per_sample(task, forward(adapted, xs), ys).reshape(g, copies, shots)
            loo[h] = per[:, 1:, :].diagonal(dim1=1, dim2=2).mean(dim=1).numpy()
    return query, loo


def random_partition(sizes: Sequence[int], n_tasks: int, seed: int) -> list[list[int]]:
    """A seeded random partition of ``range(n_tasks)`` into groups of ``sizes``."""
    order = np.random.default_rng(seed).permutation(n_tasks)
    out, start = [], 0
    for s in sizes:
        out.append(sorted(int(i) for i in order[start : start + s]))
        start += s
    return out


def mean_interval(v: np.ndarray) -> tuple[float, float, float]:
    """Mean and its 95% t-interval over independent values (held-out tasks)."""
    from scipy import stats

    v = np.asarray(v, np.float64)
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def meta_evaluation(train: Sequence[MetaTask], held: Sequence[MetaTask], task: TaskSpec,
                    groupings: dict[str, list[list[list[int]]]], meta: MetaSettings,
                    settings: MetaTrainSettings, seed: int, input_shape: tuple[int, ...]) -> dict[str, object]:
    """Meta-train one init per group of every setting (all at once) and evaluate them on the held-out tasks.

    ``groupings``: setting -> its partitions of the training tasks (indices); a setting
    with several partitions (random ones) has each held-out task's loss averaged over
    them. A held-out task picks its init by leave-one-out on its support set.

    Returns per setting and K: each held-out task's query loss, mean with 95% interval,
    and the paired differences of ``grouped`` against the others (when present).
    """
    model = meta_model(meta, seed, input_shape, task.out_dim)
    flat = [g for parts in groupings.values() for part in parts for g in part]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "meta-train"))
        inits = fomaml(model, task, train, flat, settings, seed, input_shape)
    by_setting: dict[str, dict[str, dict[str, object]]] = {}
    differences: dict[str, dict[str, dict[str, float]]] = {}
    for k in settings.eval_shots:
        query, loo = evaluate_inits(model, task, inits, held, k, settings, seed, input_shape)
        per_setting: dict[str, np.ndarray] = {}
        start = 0
        for name, parts in groupings.items():
            losses = []
            for part in parts:
                cols = slice(start, start + len(part))
                start += len(part)
                pick = loo[:, cols].argmin(axis=1)
                losses.append(query[:, cols][np.arange(len(held)), pick])
            per_setting[name] = np.mean(losses, axis=0)
        for name, v in per_setting.items():
            m, lo, hi = mean_interval(v)
            by_setting.setdefault(name, {})[str(k)] = {
                "mean": m, "low": lo, "high": hi, "inits": sum(len(p) for p in groupings[name]) // len(
                    groupings[name]), "per_task": v.tolist()}
        if "grouped" in per_setting:
            for name, v in per_setting.items():
                if name != "grouped":
                    m, lo, hi = mean_interval(per_setting["grouped"] - v)
                    differences.setdefault(name, {})[str(k)] = {"mean": m, "low": lo, "high": hi}
    return {"settings": by_setting, "differences": differences}


def _verdict(differences: dict[str, dict[str, dict[str, float]]], shots: Sequence[int]) -> dict[str, object]:
    """Whether one init per found group pays: it beats random partitions beyond the 95% interval at every K."""
    rnd = differences.get("random") or {}
    ks = [k for k in shots if str(k) in rnd]
    if not ks:
        return {"pays": "undecided", "reason": "the groups do not partition the tasks, so there is no random "
                                               "partition of the same sizes to compare with"}

    def say(k: int) -> str:
        d = rnd[str(k)]
        word = "beat" if d["high"] < 0 else "lose to" if d["low"] > 0 else "cannot be told from"
        return f"at K = {k} they {word} them ({d['mean']:+.3g} [{d['low']:+.3g}, {d['high']:+.3g}])"

    detail = "; ".join(say(k) for k in ks)
    if all(rnd[str(k)]["high"] < 0 for k in ks):
        return {"pays": "yes", "reason": f"the groups' inits beat random partitions of the same sizes: {detail}"}
    return {"pays": "no", "reason": "the groups' inits do not beat random partitions of the same sizes at every "
                                    f"K: {detail}"}


class MetaRun(Protocol):
    """What :func:`meta_training_report` reads of a run's configuration (``RunConfig`` has it all).

    A protocol, not ``RunConfig`` itself: the configuration imports this module for its
    settings types, so importing it back would make an import circle.
    """

    @property
    def data(self) -> str:
        """The run's ``data``."""
        ...

    @property
    def held_out_tasks(self) -> str | None:
        """The run's ``held_out_tasks``."""
        ...

    @property
    def features(self) -> str | None:
        """The run's ``features``."""
        ...

    @property
    def task_kinds(self) -> tuple[tuple[str, str], ...]:
        """The run's ``task_kinds``."""
        ...

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The run's ``input_shape``."""
        ...

    @property
    def seed(self) -> int:
        """The run's ``seed``."""
        ...

    @property
    def meta(self) -> MetaSettings:
        """The run's ``meta``."""
        ...

    @property
    def meta_train(self) -> MetaTrainSettings:
        """The run's ``meta_train``."""
        ...


def meta_training_report(cfg: MetaRun, data: object, groups: list[list[str]]) -> dict[str, object]:
    """The ``meta-train`` step's work: every setting's :func:`meta_evaluation` and the verdict.

    The training tasks come from the store, the held-out tasks from the source.

    Training tasks use all their labelled rows with raw targets (meta-learning adapts to
    each task's scale); inputs are standardised with the training split's statistics,
    held-out tasks' inputs likewise. Settings: ``all`` (one init), ``grouped`` (one per
    found group), ``random`` (``random_partitions`` partitions of the same sizes) and,
    when the data plants families, ``planted``.
    """
    from taskgrouping.data.dataset import PreparedData
    from taskgrouping.data.load import load_held_out
    from taskgrouping.errors import InputError

    assert isinstance(data, PreparedData)
    held_ds = load_held_out(cfg.data, cfg.held_out_tasks, cfg.features, cfg.task_kinds, cfg.input_shape)
    kinds = {(t.kind, t.out_dim) for t in [*data.tasks, *held_ds.tasks]}
    if len(kinds) != 1:
        raise InputError("--training meta adapts one model to every task: the tasks and held-out tasks must be of "
                         f"one kind and width, got {sorted(kinds)}")
    names = data.task_names
    mu = np.zeros(data.x.shape[1]) if data.x_mean is None else np.asarray(data.x_mean)
    sd = np.ones(data.x.shape[1]) if data.x_std is None else np.asarray(data.x_std)
    y_scale = np.asarray(data.y_scale)
    y_mean = np.zeros(len(names)) if data.y_mean is None else np.asarray(data.y_mean)
    train = []
    for j, name in enumerate(names):
        rows = np.flatnonzero(~np.isnan(data.y[:, j]))
        y = data.y[rows, j].astype(np.float64)
        if data.tasks[j].kind == "regression":
            y = y * y_scale[j] + y_mean[j]
        train.append(MetaTask(name, data.x[rows], y.astype(np.float32)))
    held = []
    for j, t in enumerate(held_ds.tasks):
        rows = np.flatnonzero(~np.isnan(held_ds.labels[:, j]))
        x = ((held_ds.features[rows].astype(np.float64) - mu) / sd).astype(np.float32)
        held.append(MetaTask(t.name, x, held_ds.labels[rows, j].astype(np.float32)))
    index = {n: i for i, n in enumerate(names)}
    found = [[index[t] for t in g] for g in groups]
    sizes = [len(g) for g in found]
    groupings: dict[str, list[list[list[int]]]] = {"all": [[list(range(len(names)))]], "grouped": [found]}
    if sum(sizes) == len(names):
        groupings["random"] = [random_partition(sizes, len(names), derive_seed(cfg.seed, "meta-random", r))
                               for r in range(cfg.meta_train.random_partitions)]
    truth = data.ground_truth or {}
    if truth and all(n in truth for n in names):
        fams = sorted({truth[n] for n in names})
        groupings["planted"] = [[[i for i, n in enumerate(names) if truth[n] == f] for f in fams]]
    shape = tuple(data.input_shape) if data.input_shape is not None else (data.x.shape[1],)
    out = meta_evaluation(train, held, data.tasks[0], groupings, cfg.meta, cfg.meta_train, cfg.seed, shape)
    out["verdict"] = _verdict(out["differences"], cfg.meta_train.eval_shots)  # type: ignore[arg-type]
    out["held_out"] = [t.name for t in held]
    out["shots"] = list(cfg.meta_train.eval_shots)
    out["loss"] = {"regression": "squared error on raw targets", "binary": "BCE",
                   "multiclass": "cross-entropy"}[data.tasks[0].kind]
    return out
