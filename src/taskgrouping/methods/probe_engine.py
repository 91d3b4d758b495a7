"""SWOLA for any trunk: exact per-sample trunk gradients, or an L1-faithful Cauchy sketch of them.

For a trunk that is not the project's MLP the factorised form of :mod:`swola` does not
hold (convolutions, BatchNorm, residuals). Here, at theta0 with the trunk in ``eval()``
(BatchNorm statistics calibrated once on the probe inputs when no checkpoint gives
them), every (task t, probe sample i) gets the per-sample gradient of its loss with
respect to every trainable trunk parameter::

    g_{t,i} = J_i^T delta_{t,i},    J_i = d trunk(x_i) / d theta,  delta_{t,i} = d l_t / d h_i

``delta`` comes from the task's head (fitted or shared, as for the MLP) on the frozen
features; ``J_i^T delta`` is one vector-Jacobian product, batched over samples and
tasks with ``torch.func`` (``vmap`` of ``vjp`` of ``functional_call``) in chunks sized
to a memory budget, with a per-sample autograd loop as the fallback for modules
``vmap`` cannot transform (in-place ops on captured tensors, data-dependent control flow).

A probe keeps either the exact gradients (``kind="grad"``, n x P floats) or, when n x P
is too large (``sketch="auto"``) or asked for, a Cauchy (1-stable) projection
``y_{t,i} = S_i g_{t,i}`` with k rows (``kind="sketch"``, n x k floats).

**Trunk work once for all tasks.** ``g_{t,i} = J_i^T delta_{t,i}`` is linear in the
task's cotangent, so ``y_{t,i} = (S_i J_i^T) delta_{t,i}``: the k x F map ``S_i J_i^T``
of each sample (:func:`sketch_maps`: F backward passes and one projection per sample) is
computed once per trunk and probe sample set, and every task's sketch is then its head,
its cotangents and one (k x F) product per sample, whatever the number of tasks. Exact
gradients use the same factoring within a batch once the tasks outnumber the features
(:func:`factored_grads`); the F x P Jacobians are too large to keep. ``S_i`` is drawn
from a seed of (run seed, probe sample position): different for every sample, equal for
every task, so a new task needs only its own probe, and errors average out over samples
(relative error of D about (pi/2) / sqrt(k n); one S shared by all samples is far worse).
``||g_a - g_b||_1`` is estimated from ``y_a - y_b`` with the bias-corrected geometric
mean ``cos^k(pi / 2k) prod_j |y_j|^(1/k)`` (Li, Hastie and Church, 2007). Each sample's
``||g_{t,i}||_1`` is kept too (``norms``), for the task/sample normalisation: exact for
gradient probes, the same estimate from ``y_{t,i}`` for sketches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from taskgrouping.hashing import derive_seed

if TYPE_CHECKING:
    from taskgrouping.methods.probe import Probe

EXACT_MAX_FLOATS = 16 * 2**20
"""``sketch="auto"`` keeps exact gradients while n x P is at most this (64 MiB of float32 per task)."""

DEFAULT_K = 128
"""Sketch width of ``sketch="auto"`` beyond :data:`EXACT_MAX_FLOATS`."""

CHUNK_BYTES = 256 * 2**20
"""Bound on the per-chunk gradient tensor (chunk x tasks x P float32)."""

SKETCH_BLOCK = 2**20
"""Parameters per block of a sample's projection matrix (bounds it to k x 2^20 floats)."""


def trainable(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's trainable parameters (the shared parameters SWOLA measures), in module order."""
    return {k: v for k, v in trunk.named_parameters() if v.requires_grad}


def n_params(trunk: nn.Module) -> int:
    """P: the number of trainable trunk parameters."""
    return sum(v.numel() for v in trainable(trunk).values())


def sketch_width(sketch: str, n: int, p: int) -> int | None:
    """``None`` for exact gradients, else k. ``sketch`` is ``auto``, ``none`` or an integer K >= 1."""
    if sketch == "none":
        return None
    if sketch == "auto":
        return None if n * p <= EXACT_MAX_FLOATS else DEFAULT_K
    return int(sketch)


def _vmap_grads(trunk: nn.Module, x: torch.Tensor, cot: torch.Tensor) -> torch.Tensor:
    """(c, B, P): ``J_i^T cot[i, b]`` for the c samples of ``x`` (c, d) and cotangents ``cot`` (c, B, F)."""
    from torch.func import functional_call, vjp, vmap

    params = {k: v.detach() for k, v in trainable(trunk).items()}
    frozen = {k: v.detach() for k, v in trunk.named_parameters() if not v.requires_grad}
    buffers = {k: v.detach() for k, v in trunk.named_buffers()}
    names = list(params)

    def one(xi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(trunk, (p | frozen, buffers), (xi.unsqueeze(0),))[0]

        pull = vjp(f, params)[1]
        g = vmap(pull)(ci)[0]
        return torch.cat([g[k].reshape(ci.shape[0], -1) for k in names], dim=1)

    return vmap(one)(x, cot)


def _loop_grads(trunk: nn.Module, x: torch.Tensor, cot: torch.Tensor) -> torch.Tensor:
    """The same as :func:`_vmap_grads` with one autograd pass per (sample, task): works for any module."""
    params = list(trainable(trunk).values())
    c, b = cot.shape[0], cot.shape[1]
    out = torch.empty((c, b, sum(p.numel() for p in params)), dtype=cot.dtype, device=cot.device)
    with torch.enable_grad():
        for i in range(c):
            h = trunk(x[i : i + 1])[0]
            for t in range(b):
                gs = torch.autograd.grad(h, params, cot[i, t], retain_graph=t < b - 1, allow_unused=True)
                out[i, t] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                       for g, p in zip(gs, params, strict=True)])
    return out


def per_sample_grads(trunk: nn.Module, x: torch.Tensor, cot: torch.Tensor, chunk: int | None = None,
                     engine: str = "auto") -> Iterator[tuple[int, torch.Tensor]]:
    """Per-sample gradients ``J_i^T cot[i, t]`` over the trainable trunk parameters, chunk by chunk.

    Args:
        trunk: maps (c, d) to (c, F); in ``eval()`` (no sample may affect another).
        x: (n, d) inputs. cot: (n, B, F) cotangents (the tasks' ``d l / d h``).
        chunk: samples per chunk; default from :data:`CHUNK_BYTES`.
        engine: ``vmap``, ``loop`` or ``auto`` (vmap, falling back to the loop on a transform error).

    Yields:
        ``(start, g)`` with g (c, B, P) for samples ``start .. start + c``.
    """
    n, b = cot.shape[0], cot.shape[1]
    p = n_params(trunk)
    if chunk is None:
        chunk = max(1, min(n, CHUNK_BYTES // max(1, 4 * b * p)))
    use_vmap = engine in ("auto", "vmap")
    for start in range(0, n, chunk):
        xs, cs = x[start : start + chunk], cot[start : start + chunk]
        if use_vmap:
            try:
                yield start, _vmap_grads(trunk, xs, cs)
                continue
            except Exception:
                if engine == "vmap":
                    raise
                use_vmap = False  # this module defeats vmap: the loop for the rest
        yield start, _loop_grads(trunk, xs, cs)


def trunk_jacobians(trunk: nn.Module, x: torch.Tensor, chunk: int | None = None,
                    engine: str = "auto") -> Iterator[tuple[int, torch.Tensor]]:
    """Every sample's feature Jacobian ``J_i`` (F x P), chunk by chunk: F backward passes per sample.

    Row f of ``J_i`` is the gradient of feature f at ``x_i`` with respect to the trainable
    parameters: :func:`per_sample_grads` with the F unit cotangents. Yields ``(start, J)``
    with J (c, F, P).
    """
    with torch.no_grad():
        f = int(trunk(x[:1]).shape[1])
    eye = torch.eye(f, dtype=x.dtype, device=x.device).expand(x.shape[0], f, f)
    yield from per_sample_grads(trunk, x, eye, chunk=chunk, engine=engine)


def factored_grads(trunk: nn.Module, x: torch.Tensor, cot: torch.Tensor, chunk: int | None = None,
                   engine: str = "auto") -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`per_sample_grads` as ``cot[i] @ J_i``: F backward passes per sample whatever the number of tasks.

    Cheaper than one backward pass per (sample, task) once the tasks outnumber the
    features (B > F); equal to it up to float rounding (a test).
    """
    n, b, f = cot.shape
    if chunk is None:
        chunk = max(1, min(n, CHUNK_BYTES // max(1, 4 * n_params(trunk) * (b + f))))
    for start, jac in trunk_jacobians(trunk, x, chunk, engine):
        yield start, torch.bmm(cot[start : start + jac.shape[0]], jac)


def sketch_maps(trunk: nn.Module, x: torch.Tensor, k: int, seed: int, chunk: int | None = None,
                engine: str = "auto") -> torch.Tensor:
    """(n, F, k) float32: each sample's sketch of every feature's gradient, ``(S_i J_i^T)^T``.

    A task's sketch at sample i is then ``delta_{t,i} @ maps[i]`` (:func:`sketch_from_maps`),
    which is ``S_i g_{t,i}`` (:func:`cauchy_project` of the exact gradient) up to float
    rounding: the trunk's backward passes and the projection are paid once per sample,
    for every task there is and will be (the maps depend on the trunk, the probe inputs,
    k and the seed only; the flow keeps them in the store).
    """
    out: torch.Tensor | None = None
    for start, jac in trunk_jacobians(trunk, x, chunk, engine):
        if out is None:
            out = torch.empty((x.shape[0], jac.shape[1], k), dtype=torch.float32, device=x.device)
        for i in range(jac.shape[0]):
            out[start + i] = cauchy_project(jac[i], start + i, k, seed)
    assert out is not None
    return out


def sketch_from_maps(cot: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every task's sketched probe from the maps: (rows (B, n, k), per-sample L1 norms (B, n) float64).

    ``cot`` (n, B, F) the tasks' ``d l / d h``; ``maps`` (n, F, k) :func:`sketch_maps`.
    The norms are the geometric-mean estimates of ``||g_{t,i}||_1`` from the rows
    (:func:`gm_l1`): the exact norms would need the P-wide gradients this avoids (their
    relative error, about 1.2 / sqrt(k) per sample, averages out over the samples of the
    ``task`` normalisation's mean).
    """
    rows = torch.einsum("nbf,nfk->bnk", cot, maps.to(cot.dtype))
    return rows, gm_l1(rows)


def cauchy_project(g: torch.Tensor, sample: int, k: int, seed: int) -> torch.Tensor:
    """``S_i g`` for one sample: g (B, P) -> (B, k), S_i (k, P) i.i.d. standard Cauchy seeded by (seed, sample).

    S_i is generated in blocks of :data:`SKETCH_BLOCK` parameters (each from its own
    seed), so it is never held whole; a sum of independent Cauchy projections of the
    blocks is a Cauchy projection of the whole vector.
    """
    out = torch.zeros((g.shape[0], k), dtype=torch.float64, device=g.device)
    p = g.shape[1]
    for block, start in enumerate(range(0, p, SKETCH_BLOCK)):
        stop = min(p, start + SKETCH_BLOCK)
        gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, "cauchy", sample, block))
        s = torch.empty((k, stop - start), dtype=torch.float64).cauchy_(generator=gen).to(g.device)
        out += g[:, start:stop].double() @ s.T
    return out.float()


def gm_constant(k: int) -> float:
    """The bias correction ``cos^k(pi / 2k)`` of the geometric-mean estimator."""
    return math.cos(math.pi / (2 * k)) ** k


def gm_l1(diff: torch.Tensor) -> torch.Tensor:
    """Estimated L1 norm of vectors from their Cauchy sketches ``diff`` (..., k): the bias-corrected GM."""
    k = diff.shape[-1]
    return gm_constant(k) * torch.exp(torch.log(diff.abs().double()).mean(dim=-1))


def masked_gm_cross(ea: torch.Tensor, ma: torch.Tensor, eb: torch.Tensor, mb: torch.Tensor,
                    block: int = 8) -> torch.Tensor:
    """Mean estimated L1 distance between tasks' sketches over samples labelled for both.

    Args:
        ea: (Ta, n, k) scaled sketches; eb: (Tb, n, k). ma: (Ta, n) bool; mb: (Tb, n).
        block: tasks per block; peak extra memory O(block^2 n k) float64.

    Returns:
        (Ta, Tb) float64, NaN where two tasks share no labelled sample.
    """
    ta, tb = ea.shape[0], eb.shape[0]
    out = torch.empty((ta, tb), dtype=torch.float64, device=ea.device)
    for i in range(0, ta, block):
        a, am = ea[i : i + block], ma[i : i + block]
        for j in range(0, tb, block):
            b, bm = eb[j : j + block], mb[j : j + block]
            est = gm_l1(a[:, None] - b[None])  # (ba, bb, n)
            both = (am[:, None] & bm[None]).double()
            count = both.sum(dim=-1)
            total = (torch.nan_to_num(est, nan=0.0) * both).sum(dim=-1)
            out[i : i + block, j : j + block] = torch.where(count > 0, total / count.clamp_min(1),
                                                             torch.full_like(total, float("nan")))
    return out


def scaled_rows(probe: Probe, normalise: str) -> np.ndarray:
    """(n, m) float32 gradient rows or sketches scaled by ``normalise``; zero rows where unlabelled.

    ``task``: divided by the task's mean per-sample gradient L1 norm over its labelled
    samples; ``sample``: each row by its own norm; ``none``: as stored. Norms are the
    exact ones recorded while probing (a sketch's rows are not L1 vectors).
    """
    e = probe.deltas[0].astype(np.float32, copy=True)
    norms = probe.norms[0] if probe.norms is not None else np.abs(e).sum(axis=1, dtype=np.float64)
    lab = probe.labelled
    if normalise == "task":
        scale = float(norms[lab].mean()) if lab.any() else 1.0
        e *= np.float32(1.0 / scale if scale > 0 else 1.0)
    elif normalise == "sample":
        e *= (1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32)[:, None]
    e[~lab] = 0.0
    return e
