"""One hard-parameter-sharing model per group: shared trunk, one head per task, early stopping."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from taskgrouping.data.dataset import PreparedData, TaskSpec
from taskgrouping.hashing import derive_seed
from taskgrouping.models.losses import per_sample_loss, task_metric
from taskgrouping.models.trunk import build_trunk, resolve_device


@dataclass(frozen=True)
class TrainSettings:
    """How each group's model is trained (methods.md section 7).

    Attributes:
        hidden, layers: the trunk (same architecture as the probe by default).
        lr: the learning rate. batch: minibatch size.
        optimizer: ``adam`` (every grouped model), or ``sgd`` with ``momentum`` (Principled TG's
            collection training, as the paper's CelebA code trains).
        max_epochs: upper bound; patience: epochs without validation improvement before stopping.
        weight_decay: Adam's L2 term.
        trunk, checkpoint, trunk_fp: the trunk (:mod:`taskgrouping.models.trunks`), its initial
            weights (fine-tuning a checkpoint) and their content hash (part of every model key).
    """

    hidden: int = 64
    layers: int = 2
    lr: float = 1e-3
    batch: int = 128
    max_epochs: int = 200
    patience: int = 10
    weight_decay: float = 0.0
    trunk: str = "auto"
    checkpoint: str | None = None
    trunk_fp: str = ""
    optimizer: str = "adam"
    momentum: float = 0.9

    def __post_init__(self) -> None:
        """Validate the optimiser."""
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimiser ``settings`` name: Adam, or SGD with momentum (both with ``weight_decay``)."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


class MultiTaskModel(nn.Module):
    """Shared trunk plus one linear head per task (heads in member order).

    The trunk is the project's MLP (``trunk="auto"`` on vectors, or ``mlp``), or any trunk
    of :mod:`taskgrouping.models.trunks` taking flat rows of ``input_shape``; it starts from
    ``checkpoint`` when one is given.
    """

    def __init__(self, in_dim: int, tasks: list[TaskSpec], hidden: int, layers: int, seed: int,
                 trunk: str = "auto", checkpoint: str | None = None,
                 input_shape: tuple[int, ...] | None = None) -> None:
        """Build the trunk and heads, all initialised from ``seed``."""
        super().__init__()
        from taskgrouping.models.trunks import build_any_trunk, feature_width, resolve_trunk_name

        shape = tuple(input_shape) if input_shape is not None else (in_dim,)
        self.trunk: nn.Module
        if resolve_trunk_name(trunk, shape) == "mlp" and checkpoint is None:
            self.trunk, width = build_trunk(in_dim, hidden, layers, seed), hidden
        else:
            self.trunk = build_any_trunk(trunk, shape, hidden, layers, seed, checkpoint)
            width = feature_width(self.trunk, shape, trunk)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "heads"))
            self.heads = nn.ModuleList([nn.Linear(width, t.out_dim) for t in tasks])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head, (n, out_dim) each."""
        h = self.trunk(x)
        return [head(h) for head in self.heads]


class TrainHooks:
    """Observers of a training run (TAG's lookahead, data maps). They must not change the model.

    ``before_step`` sees the model and the minibatch before each optimiser step;
    ``after_epoch`` sees the model (in eval mode) after each epoch.
    """

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once with the run's optimiser (a hook that steps it must restore its state)."""

    def before_step(self, model: MultiTaskModel, step: int, x: torch.Tensor, y: torch.Tensor,
                    mask: torch.Tensor) -> None:
        """Called before each optimiser step (``step`` counts from 0)."""

    def after_epoch(self, model: MultiTaskModel, epoch: int) -> None:
        """Called after each epoch (``epoch`` counts from 1)."""


def masked_losses(outs: list[torch.Tensor], y: torch.Tensor, mask: torch.Tensor,
                  tasks: list[TaskSpec]) -> torch.Tensor:
    """(n_tasks,) mean loss of each task over its labelled samples (0 where none)."""
    vals = []
    for j, (logits, task) in enumerate(zip(outs, tasks, strict=True)):
        m = mask[:, j]
        per = per_sample_loss(logits, y[:, j], task) * m
        vals.append(per.sum() / m.sum().clamp_min(1.0))
    return torch.stack(vals)


def _cost(model: MultiTaskModel, x: torch.Tensor) -> tuple[int, int]:
    """(parameters, inference FLOPs per sample) of ``model``; FLOPs counted by torch on one sample.

    ``torch.utils.flop_counter`` counts matrix products and convolutions (two per
    multiply-add); elementwise work is left out, as the field's FLOP figures do.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(int(p.numel()) for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x[:1])
    return params, int(counter.get_total_flops())


def train_group(data: PreparedData, members: list[int], settings: TrainSettings, seed: int,
                device: str = "cpu", weights: list[float] | None = None,
                hooks: TrainHooks | None = None) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]], dict[str, Any]]:
    """Train one model on the tasks ``members`` (indices into ``data.tasks``) and evaluate it.

    Every member trains on the shared training rows; each is early-stopped on, chosen on
    and tested on its own held-out parts (:meth:`PreparedData.parts`). Early stopping on
    the summed (``weights``-weighted, when given) validation loss; the best state is
    restored. ``weights`` scale each member's loss (STG-MTL's membership-weighted
    training); reported per-task losses are unweighted.

    Returns:
        (state_dict on CPU, one result dict per member task with ``task, kind, val_loss,
        sel_loss, test_loss, metric_name, metric`` (the metric on test), training info
        with epochs, best validation loss, ``parameters``, ``flops`` (inference, per
        sample) and ``heldout``: per member, the rows and per-sample losses of its
        selection and test parts, ``{task: {"selection": (rows, losses), "test": ...}}``).
    """
    dev = resolve_device(device)
    tasks = [data.tasks[j] for j in members]
    y_all = data.y[:, members]
    parts = np.stack([data.parts(j) for j in members], axis=1) if members else np.zeros((len(data.y), 0), np.int8)
    y_all = np.nan_to_num(y_all, nan=0.0)

    def tensors(part: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        rows = np.flatnonzero((parts == part).any(axis=1))
        return (torch.as_tensor(data.x[rows], device=dev),
                torch.as_tensor(y_all[rows], device=dev),
                torch.as_tensor(parts[rows] == part, dtype=torch.float32, device=dev), rows)

    xtr, ytr, mtr, _ = tensors(0)
    xva, yva, mva, _ = tensors(1)
    xse, yse, mse, rows_se = tensors(2)
    xte, yte, mte, rows_te = tensors(3)
    model = MultiTaskModel(data.x.shape[1], tasks, settings.hidden, settings.layers, seed, settings.trunk,
                           settings.checkpoint, data.input_shape).to(dev)
    w = torch.ones(len(members), device=dev) if weights is None else torch.as_tensor(
        weights, dtype=torch.float32, device=dev)
    if w.shape != (len(members),) or bool((w < 0).any()):
        raise ValueError(f"weights must be {len(members)} non-negative numbers, got {weights}")
    step = 0
    opt = make_optimizer(model, settings)
    if hooks is not None:
        hooks.attach(opt)
    gen = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    best = float("inf")
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    epochs_run = 0
    for epoch in range(1, settings.max_epochs + 1):
        epochs_run = epoch
        model.train()
        order = torch.randperm(xtr.shape[0], generator=gen).to(dev)
        for start in range(0, xtr.shape[0], settings.batch):
            idx = order[start : start + settings.batch]
            if hooks is not None:
                hooks.before_step(model, step, xtr[idx], ytr[idx], mtr[idx])
            step += 1
            opt.zero_grad()
            loss = (masked_losses(model(xtr[idx]), ytr[idx], mtr[idx], tasks) * w).sum()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float((masked_losses(model(xva), yva, mva, tasks) * w).sum())
        if hooks is not None:
            hooks.after_epoch(model, epoch)
        if val < best - 1e-6:
            best, stale = val, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    results = []
    heldout: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    with torch.no_grad():
        val_losses = masked_losses(model(xva), yva, mva, tasks).cpu().numpy()
        sel_outs, test_outs = model(xse), model(xte)
        sel_losses = masked_losses(sel_outs, yse, mse, tasks).cpu().numpy()
        test_losses = masked_losses(test_outs, yte, mte, tasks).cpu().numpy()
        for j, task in enumerate(tasks):
            heldout[task.name] = {}
            for part, outs, y, m, rows in (("selection", sel_outs, yse, mse, rows_se),
                                           ("test", test_outs, yte, mte, rows_te)):
                keep = m[:, j].bool()
                per = per_sample_loss(outs[j][keep], y[keep, j], task).cpu().numpy().astype(np.float32)
                heldout[task.name][part] = (rows[keep.cpu().numpy()].astype(np.int64), per)
    for j, task in enumerate(tasks):
        lab = mte[:, j].bool().cpu().numpy()
        name, value = task_metric(test_outs[j].cpu().numpy()[lab], yte[:, j].cpu().numpy()[lab], task,
                                  float(data.y_scale[members[j]]))
        results.append({"task": task.name, "kind": task.kind, "val_loss": float(val_losses[j]),
                        "sel_loss": float(sel_losses[j]), "test_loss": float(test_losses[j]),
                        "metric_name": name, "metric": value})
    params, flops = _cost(model, xtr if xtr.shape[0] else torch.as_tensor(data.x[:1], device=dev))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return state, results, {"epochs": epochs_run, "best_val_loss": best, "steps": step, "parameters": params,
                            "flops": flops, "heldout": heldout}
