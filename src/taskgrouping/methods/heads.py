"""Batched linear heads on shared frozen features, with one regularisation for every task.

A fitted SWOLA probe needs, per task, a regularised linear head on the frozen trunk
features ``h`` (n x H) of the probe samples. The features are the same for every task;
only the labels (and which rows carry one) differ. So the heads of a whole batch of
tasks are fitted together:

* **Regression** (ridge): one Cholesky factor of ``H^T M H + P / C`` per labelled-row
  pattern, then one solve per task.
* **Binary and multi-class** (L2-penalised logistic / softmax regression): majorise-
  minimise with Boehning's bound. The Hessian of the log-loss is at most ``b H^T M H``
  (``b = 1/4`` for the sigmoid, ``1/2`` for the softmax), so every task takes the step
  ``beta <- beta - (b H^T M H + P / C)^{-1} grad`` with a factor that is fixed across
  iterations, then matrix products for all tasks at once. Since ``M <= I``, ``b H^T H``
  over all rows bounds every task's Hessian too: a task labelled on at least half the
  rows steps with that one shared factor (missing labels cost no per-task solve), the
  others with their own row pattern's. Each step decreases the penalised loss (a
  majorise-minimise step), and the fixed point is the exact penalised optimum (checked
  against scikit-learn in the tests).

The objective is scikit-learn's: ``sum_i loss_i + ||W||^2 / (2 C)`` with an unpenalised
intercept (``loss`` = log-loss, or half the squared error for regression).

**One C for all tasks** (methods.md section 1, our choice). Per-task cross-validated C
gives each task its own amount of shrinkage, which scales its residuals and so its
distances. Here every task is scored on one shared, seeded K-fold split of the probe
rows for each C of the grid (:func:`cv_losses`: held-out loss divided by the held-out
loss of the training fold's constant predictor, so tasks of different difficulty weigh
the same); the grid point with the lowest mean over tasks is used for every task
(:func:`choose_c`). A task's loss vector depends on that task alone, so it can be
computed (and cached) per task, and the choice over a task set is an argmin over the
mean: adding one task changes C only when the mean's argmin moves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from taskgrouping.data.dataset import TaskSpec
from taskgrouping.hashing import derive_seed

ABSENT_BIAS = -20.0
"""Bias of a class absent from the probe rows (its probability is then about 2e-9)."""

MM_ITERATIONS = 200
"""At most this many majorise-minimise steps per fit (warm starts make later fits short)."""

MM_TOL = 1e-5
"""Stop when no parameter moves more than this in one step."""


def _design(h: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(n, H + 1) float64 features with an intercept column last."""
    x = torch.as_tensor(np.asarray(h), dtype=torch.float64)
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)


SHARED_BOUND_MIN = 0.5
"""A logistic task labelled on at least this share of the rows steps with the shared (all-rows) bound."""


def _penalised_inverse(grams: torch.Tensor, bound: float, c: float) -> torch.Tensor:
    """``(bound * G + P / C)^{-1}`` for grams (..., p, p); P the identity with the intercept unpenalised.

    A 1e-10 ridge on the intercept keeps a task with no labelled row solvable.
    """
    penalty = torch.ones(grams.shape[-1], dtype=torch.float64) / c
    penalty[-1] = 1e-10
    return torch.cholesky_inverse(torch.linalg.cholesky(bound * grams + torch.diag(penalty)))


class _Gram:
    """``X^T diag(m) X`` for each distinct labelled-row mask of a batch of tasks (C does not enter).

    ``full``: ``(X_F^T X_F, |F|)`` over a set of rows F that holds every task's rows and
    does not depend on the batch (default: the rows of ``x``); the logistic fit's shared
    majoriser.
    """

    def __init__(self, x: torch.Tensor, masks: torch.Tensor, full: tuple[torch.Tensor, int] | None = None) -> None:
        self.x, self.masks = x, masks
        self.full, rows = (x.T @ x, x.shape[0]) if full is None else full
        self.share = masks.sum(dim=0) / max(1, rows)
        self._patterns: tuple[torch.Tensor, torch.Tensor] | None = None

    def _pattern_grams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._patterns is None:
            uniq, index = torch.unique(self.masks.T, dim=0, return_inverse=True)
            self._patterns = (torch.einsum("un,np,nq->upq", uniq, self.x, self.x), index)
        return self._patterns

    def inverse(self, bound: float, c: float) -> torch.Tensor:
        """``(bound * G_t + P / C)^{-1}`` of each task's own gram: (p, p) when every task has the same rows, else (B, p, p)."""
        grams, index = self._pattern_grams()
        inv = _penalised_inverse(grams, bound, c)
        return inv[0] if grams.shape[0] == 1 else inv[index]

    def majoriser(self, bound: float, c: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """``rhs -> A_t^{-1} rhs`` per task with ``A_t >= bound * X^T M_t X + P / C``: the logistic MM step.

        A task labelled on at least :data:`SHARED_BOUND_MIN` of the rows takes the shared
        ``A = bound * X_F^T X_F + P / C`` (a valid bound since ``M_t <= 1`` on F), so all of
        them step with one matrix product; the others their own gram (exact bound). Either
        way the fixed point is the penalised optimum; the shared bound is looser by at
        most the unlabelled share, and its steps are as many matrix products as a fully
        labelled batch's (1,000 tasks with 20% missing: 12.8 s of head CV became 2.9 s).
        """
        shared = self.share >= SHARED_BOUND_MIN
        inv_shared = _penalised_inverse(self.full, bound, c) if bool(shared.any()) else None
        if bool(shared.all()):
            assert inv_shared is not None
            return lambda rhs: _apply(inv_shared, rhs)
        own = torch.nonzero(~shared).flatten()
        grams, index = self._pattern_grams()
        inv_own = _penalised_inverse(grams, bound, c)[index[own]]
        keep = torch.nonzero(shared).flatten()

        def solve(rhs: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(rhs)
            if inv_shared is not None:
                out[:, keep] = _apply(inv_shared, rhs[:, keep])
            out[:, own] = _apply(inv_own, rhs[:, own])
            return out

        return solve


def _apply(inv: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``inv @ rhs`` per task for rhs (p, B, K): one matrix product when every task shares ``inv``."""
    p, b, k = rhs.shape
    if inv.dim() == 2:
        return (inv @ rhs.reshape(p, b * k)).reshape(p, b, k)
    return torch.bmm(inv, rhs.permute(1, 0, 2)).permute(1, 0, 2)


def _ridge(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, gram: _Gram, c: float) -> torch.Tensor:
    """(p, B, 1) ridge coefficients for targets ``y`` (n, B) on the rows of ``masks`` (n, B)."""
    rhs = (x.T @ (masks * y)).unsqueeze(2)
    return _apply(gram.inverse(1.0, c), rhs)


def _logistic(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor | None, gram: _Gram,
              c: float, beta: torch.Tensor | None = None) -> torch.Tensor:
    """Penalised logistic (``classes`` None; y (n, B) in {0, 1}) or softmax regression by Boehning MM.

    Accelerated (Nesterov momentum on the majorise-minimise step, restarted per task
    when the step turns against the momentum); each task stops when none of its
    parameters moves more than :data:`MM_TOL` in a step.

    Args:
        x: (n, p) design with intercept.
        y: (n, B) 0/1 labels, or (n, B, K) one-hot labels for the softmax.
        masks: (n, B) 1.0 on the rows a task is fitted on; ``gram`` is their :class:`_Gram`.
        classes: (B, K) 1.0 for the classes a task has (softmax only; others get no mass).
        beta: warm start (p, B, K), default zeros.

    Returns:
        (p, B, K) coefficients (K = 1 for the sigmoid).
    """
    softmax = classes is not None
    n, p = x.shape
    nb = masks.shape[1]
    k = y.shape[2] if softmax else 1
    target = y if softmax else y.unsqueeze(2)
    solve = gram.majoriser(0.5 if softmax else 0.25, c)
    shrink = torch.full((p, 1, 1), 1.0 / c, dtype=torch.float64)
    shrink[-1] = 0.0
    b = torch.zeros(p, nb, k, dtype=torch.float64) if beta is None else beta.clone()
    absent = None if classes is None else (classes == 0).unsqueeze(0)
    weights = None if bool(masks.all()) else masks.unsqueeze(2)  # every row labelled: skip the product
    look = b.clone()
    momentum = torch.ones(1, nb, 1, dtype=torch.float64)
    active = torch.ones(1, nb, 1, dtype=torch.bool)
    for _ in range(MM_ITERATIONS):
        logits = (x @ look.reshape(p, nb * k)).reshape(n, nb, k)
        if softmax:
            prob = torch.softmax(logits.masked_fill(absent, float("-inf")), dim=2)  # type: ignore[arg-type]
        else:
            prob = torch.sigmoid(logits)
        resid = prob.sub_(target) if weights is None else prob.sub_(target).mul_(weights)
        grad = (x.T @ resid.reshape(n, nb * k)).reshape(p, nb, k).addcmul_(shrink, look)
        new = torch.where(active, look - solve(grad), b)
        moved = new - b
        # a task stops (and stays where it is) once no parameter moved more than the tolerance,
        # so its iterations do not depend on the other tasks of the batch
        active = active & (moved.abs().amax(dim=(0, 2), keepdim=True) >= MM_TOL)
        if not bool(active.any()):
            return new
        # restart a task's momentum when its step points against the last move
        restart = ((look - new) * moved).sum(dim=(0, 2), keepdim=True) > 0
        momentum = torch.where(restart, torch.ones_like(momentum), momentum)
        nxt = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * momentum**2))
        look = torch.where(active, new + moved * (((momentum - 1.0) / nxt) * (~restart)), new)
        momentum, b = nxt, new
    return b


def kind_batches(tasks: Sequence[TaskSpec]) -> dict[tuple[str, int], list[int]]:
    """Task indices by (kind, head width): one batched computation per key."""
    out: dict[tuple[str, int], list[int]] = {}
    for i, t in enumerate(tasks):
        out.setdefault((t.kind, t.out_dim), []).append(i)
    return out


def _targets(y: np.ndarray, idx: list[int], kind: str, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Targets (n, B[, K]), labelled masks (n, B) and present classes (B, K) of the tasks ``idx``."""
    cols = y[:, idx]
    lab = ~np.isnan(cols)
    masks = torch.as_tensor(lab, dtype=torch.float64)
    values = np.nan_to_num(cols, nan=0.0)
    if kind != "multiclass":
        return torch.as_tensor(values, dtype=torch.float64), masks, None
    onehot = np.zeros((*values.shape, k))
    np.put_along_axis(onehot, values.astype(np.int64)[..., None], 1.0, axis=2)
    onehot *= lab[..., None]
    return torch.as_tensor(onehot), masks, _present(torch.as_tensor(onehot), masks)


def _present(target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, K) 1.0 for the classes labelled on the rows of ``masks``."""
    return ((target * masks.unsqueeze(2)).sum(dim=0) > 0).to(torch.float64)


def _fit(x: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, present: torch.Tensor | None, kind: str,
         gram: _Gram, c: float, beta: torch.Tensor | None = None) -> torch.Tensor:
    if kind == "regression":
        return _ridge(x, target, masks, gram, c)
    return _logistic(x, target, masks, present, gram, c, beta)


def _losses(x: torch.Tensor, beta: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None,
            kind: str) -> torch.Tensor:
    """(n, B) per-row loss of the heads ``beta`` (p, B, K): log-loss, or squared error for regression."""
    p, nb, k = beta.shape
    logits = (x @ beta.reshape(p, nb * k)).reshape(-1, nb, k)
    if kind == "regression":
        return (logits[..., 0] - target) ** 2
    if kind == "binary":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[..., 0], target, reduction="none")
    assert present is not None
    logp = torch.log_softmax(logits.masked_fill((present == 0).unsqueeze(0), float("-inf")), dim=2)
    return -(torch.nan_to_num(logp, neginf=0.0) * target).sum(dim=2)


def _constant(x: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, present: torch.Tensor | None,
              kind: str) -> torch.Tensor:
    """(p, B, K) the constant predictor of the rows of ``masks``: smoothed prior, or mean, as the intercept."""
    count = masks.sum(dim=0).clamp_min(1.0)
    if kind == "regression":
        const = ((masks * target).sum(dim=0) / count).reshape(1, -1, 1)
    elif kind == "binary":
        prior = ((masks * target).sum(dim=0) + 1.0) / (count + 2.0)
        const = torch.log(prior / (1 - prior)).reshape(1, -1, 1)
    else:
        k = target.shape[2]
        prior = ((target * masks.unsqueeze(2)).sum(dim=0) + 1.0) / (count.unsqueeze(1) + k)
        const = torch.log(prior).unsqueeze(0)
    return torch.cat([torch.zeros(x.shape[1] - 1, *const.shape[1:], dtype=torch.float64), const])


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """The shared seeded K-fold split of the probe rows (the same for every task)."""
    rng = np.random.default_rng(derive_seed(seed, "head-folds"))
    return rng.permutation(np.arange(n) % folds)


def cv_losses(h: np.ndarray, y: np.ndarray, tasks: Sequence[TaskSpec], cs: Sequence[float], folds: int,
              seed: int) -> np.ndarray:
    """(B, len(cs)) each task's relative cross-validated loss at every C of the grid.

    Every task uses the same seeded fold split of the n probe rows (its own labelled
    rows of each fold). Entry (b, j): the held-out loss summed over folds divided by the
    held-out loss of each training fold's constant predictor (smoothed prior or mean),
    so 1.0 is "no better than the base rate". NaN for a task with too few labels to
    score (fewer than 2 labelled held-out rows in total).

    Args:
        h: (n, H) frozen features; y: (n, B) labels, NaN = missing.
    """
    x = _design(h)
    ids = torch.as_tensor(fold_ids(h.shape[0], folds, seed))
    out = np.full((len(tasks), len(cs)), np.nan)
    order = sorted(range(len(cs)), key=lambda j: cs[j])  # strongest penalty first: warm starts along the path
    for (kind, k), idx in kind_batches(tasks).items():
        target, masks, _ = _targets(y, idx, kind, k)
        model = torch.zeros(len(idx), len(cs), dtype=torch.float64)
        base = torch.zeros(len(idx), dtype=torch.float64)
        for f in range(folds):
            held = (ids == f).to(torch.float64).unsqueeze(1) * masks
            train = masks - held
            present = _present(target, train) if kind == "multiclass" else None
            rows = train.any(dim=1)  # fit on the rows some task trains on (often: every task's)
            xt, tt, mt = x[rows], target[rows], train[rows]
            fold = x[ids != f]  # every task's training rows lie in the fold's: the batch-independent bound
            gram = _Gram(xt, mt, (fold.T @ fold, fold.shape[0]))
            base += (_losses(x, _constant(x, tt, mt, present, kind), target, present, kind) * held).sum(dim=0)
            beta = None
            for j in order:
                beta = _fit(xt, tt, mt, present, kind, gram, cs[j], beta)
                model[:, j] += (_losses(x, beta, target, present, kind) * held).sum(dim=0)
        rel = (model / base.clamp_min(1e-12).unsqueeze(1)).numpy()
        rel[masks.sum(dim=0).numpy() < max(2, folds)] = np.nan
        out[idx] = rel
    return out


def choose_c(losses: np.ndarray, cs: Sequence[float]) -> float:
    """The C of the grid with the lowest mean relative CV loss over tasks (ties: the smaller C)."""
    if losses.size == 0 or np.isnan(losses).all():
        return float(min(cs))
    mean = np.nanmean(np.where(np.isnan(losses).all(axis=1, keepdims=True), np.nan, losses), axis=0)
    best = min(range(len(cs)), key=lambda j: (round(float(mean[j]), 12), cs[j]))
    return float(cs[best])


def fit_heads(h: np.ndarray, y: np.ndarray, tasks: Sequence[TaskSpec], c: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every task's head at one C: weight (out_dim, H) and bias (out_dim,), float32.

    Fitted on each task's labelled rows of ``h`` (n, H); ``y`` (n, B), NaN = missing.
    A classification task with fewer than two classes labelled gets the constant head
    at its smoothed prior; a class absent from its rows gets weight 0 and bias
    :data:`ABSENT_BIAS`.
    """
    x = _design(h)
    hdim = h.shape[1]
    heads: list[tuple[np.ndarray, np.ndarray]] = []
    for (kind, k), idx in kind_batches(tasks).items():
        target, masks, present = _targets(y, idx, kind, k)
        beta = _fit(x, target, masks, present, kind, _Gram(x, masks), c)
        const = _constant(x, target, masks, present, kind)
        for col, i in enumerate(idx):
            coef = beta[:, col, :].T.numpy()  # (K, p)
            weight, bias = coef[:, :hdim].astype(np.float32), coef[:, hdim].astype(np.float32)
            if kind == "binary" and torch.unique(target[:, col][masks[:, col] > 0]).numel() < 2:
                weight, bias = np.zeros_like(weight), const[-1, col].numpy().astype(np.float32)
            if kind == "multiclass":
                assert present is not None
                if int(present[col].sum()) < 2:  # one class only: the smoothed prior, no weights
                    weight, bias = np.zeros_like(weight), const[-1, col].numpy().astype(np.float32)
                gone = present[col].numpy() == 0
                weight[gone] = 0.0
                bias[gone] = ABSENT_BIAS
            heads.append((i, weight, bias))  # type: ignore[arg-type]
    return [(w, b) for _, w, b in sorted(heads, key=lambda e: e[0])]  # type: ignore[misc]
