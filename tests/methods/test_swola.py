import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from taskgrouping.data.dataset import TaskSpec
from taskgrouping.methods.swola import (
    SwolaSettings,
    affinity_from_distances,
    distances_from_probes,
    joint_c,
    probe_task,
    probe_tasks,
    probe_trunks,
    swola_affinity,
    task_heads,
)
from taskgrouping.models.losses import per_sample_loss

BIN = TaskSpec("b", "binary", 2, ("0", "1"))
REG = TaskSpec("r", "regression", 1)
CLS = TaskSpec("c", "multiclass", 3, ("a", "b", "c"))


def _data(n=60, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    ys = {
        "b1": (x[:, 0] > 0).astype(np.float32),
        "b2": (x[:, 1] + 0.3 * x[:, 0] > 0).astype(np.float32),
        "r": (x[:, 2] * 1.5 + rng.standard_normal(n) * 0.1).astype(np.float32),
        "c": np.digitize(x[:, 3], [-0.4, 0.4]).astype(np.float32),
    }
    ys["b2"][:7] = np.nan  # missing labels are masked
    ys["r"][5:12] = np.nan
    specs = {"b1": BIN, "b2": BIN, "r": REG, "c": CLS}
    return x, ys, specs


def _factorised(x, ys, specs, s, seed=0):
    names = list(ys)
    named = [dataclasses.replace(specs[k], name=k) for k in names]
    affinity = swola_affinity(x, np.stack([ys[k] for k in names], axis=1), named, s, seed)
    assert affinity.tasks == names
    return names, affinity.values


def _brute_force(x, ys, specs, s, seed=0):
    """Per-sample gradients of every trunk parameter with torch.func, then mean L1 distances."""
    trunk = probe_trunks(x.shape[1], s, seed)[0].double()
    params = {k: v.detach() for k, v in trunk.named_parameters()}
    xt = torch.as_tensor(x, dtype=torch.float64)
    with torch.no_grad():
        h = trunk(xt).numpy()
    names = list(ys)
    y_all = np.stack([ys[k] for k in names], axis=1)
    named = [dataclasses.replace(specs[k], name=k) for k in names]
    c = joint_c(x, y_all, named, s, seed) if s.joint_head else None  # the C the probe chooses over these tasks
    heads = dict(zip(names, task_heads(h.astype(np.float32).astype(np.float64), y_all, named, s, seed, c), strict=True))
    grads = {}
    for k, y in ys.items():
        w, b = heads[k]
        w, b = torch.as_tensor(w, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)

        def loss(p, xi, yi, spec=specs[k], w=w, b=b):
            logits = functional_call(trunk, p, (xi[None],)) @ w.T + b
            return per_sample_loss(logits, yi[None], spec)[0]

        yt = torch.as_tensor(np.nan_to_num(y), dtype=torch.float64)
        g = vmap(grad(loss), in_dims=(None, 0, 0))(params, xt, yt)
        flat = torch.cat([g[name].reshape(len(x), -1) for name in params], dim=1).numpy()
        lab = ~np.isnan(y)
        if s.normalise == "task":
            flat = flat / np.abs(flat[lab]).sum(axis=1).mean()
        elif s.normalise == "sample":
            flat = flat / np.maximum(np.abs(flat).sum(axis=1, keepdims=True), 1e-300)
        grads[k] = (flat, lab)
    names = list(ys)
    d = np.zeros((len(names), len(names)))
    for i, j in itertools.product(range(len(names)), repeat=2):
        (ga, la), (gb, lb) = grads[names[i]], grads[names[j]]
        both = la & lb
        d[i, j] = np.abs(ga[both] - gb[both]).sum(axis=1).mean() * s.lr
    return d


@pytest.mark.parametrize("head, normalise", [("fitted", "none"), ("shared", "none"),
                                             ("fitted", "task"), ("shared", "sample")])
def test_factorised_equals_brute_force_per_sample_gradients(head, normalise):
    x, ys, specs = _data()
    s = SwolaSettings(hidden=6, layers=2, head=head, normalise=normalise, lr=0.5)
    _, fact = _factorised(x, ys, specs, s)
    brute = _brute_force(x, ys, specs, s)
    np.testing.assert_allclose(fact, brute, rtol=1e-5, atol=1e-9)
    assert fact[0, 1] > 0


def test_three_layer_trunk_and_blocks_match():
    x, ys, specs = _data()
    s = SwolaSettings(hidden=4, layers=3, normalise="none", block=1)
    _, fact = _factorised(x, ys, specs, s)
    np.testing.assert_allclose(fact, _brute_force(x, ys, specs, s), rtol=1e-5, atol=1e-9)


def test_invariants_identical_complement_symmetry_permutation():
    x, ys, specs = _data()
    ys["b1_copy"] = ys["b1"].copy()
    ys["not_b1"] = 1.0 - ys["b1"]
    specs.update({"b1_copy": BIN, "not_b1": BIN})
    s = SwolaSettings(hidden=8, head="fitted")
    names, d = _factorised(x, ys, specs, s)
    i, j, k = names.index("b1"), names.index("b1_copy"), names.index("not_b1")
    off = d[~np.eye(len(d), dtype=bool)]
    assert d[i, j] == 0.0
    assert d[i, k] < 1e-3 * np.median(off)  # complementary tasks transfer perfectly in fitted mode
    np.testing.assert_allclose(d, d.T, rtol=1e-10)
    np.testing.assert_allclose(np.diag(d), 0, atol=1e-12)
    perm = [3, 0, 5, 1, 4, 2]
    ys_p = {names[p]: ys[names[p]] for p in perm}
    names_p, d_p = _factorised(x, ys_p, specs, s)
    np.testing.assert_allclose(d_p, d[np.ix_(perm, perm)], rtol=1e-6, atol=1e-9)  # to batched rounding
    # shared mode keeps the complement away from its twin
    _, d_shared = _factorised(x, ys, specs, SwolaSettings(hidden=8, head="shared"))
    assert d_shared[i, k] > np.median(d_shared[~np.eye(len(d), dtype=bool)])


@pytest.mark.parametrize("chunk, trunks, normalise", [(64, 1, "task"), (2, 1, "task"), (4, 2, "sample"),
                                                       (1, 2, "none")])
def test_rows_only_equal_full_matrix(monkeypatch, chunk, trunks, normalise):
    """A few rows are computed chunk by chunk of weighted probes; the values are the full matrix's."""
    from taskgrouping.methods import swola

    monkeypatch.setattr(swola, "ERROR_CHUNK", chunk)
    x, ys, specs = _data()
    s = SwolaSettings(hidden=6, trunks=trunks, normalise=normalise)
    probes = [probe_task(x, ys[k], specs[k], s, 0) for k in ys]
    full = distances_from_probes(probes, x, s, 0)
    np.testing.assert_allclose(distances_from_probes(probes, x, s, 0, rows=[1, 3]), full[[1, 3]], rtol=1e-12)
    np.testing.assert_allclose(distances_from_probes(probes, x, s, 0, rows=[0, 2, 3]), full[[0, 2, 3]],
                               rtol=1e-12)


def test_trunks_average_and_determinism():
    x, ys, specs = _data()
    s = SwolaSettings(hidden=6, trunks=3)
    a = probe_task(x, ys["b1"], BIN, s, 7)
    b = probe_task(x, ys["b1"], BIN, s, 7)
    assert a.deltas.shape == (3, len(x), 12)
    np.testing.assert_array_equal(a.deltas, b.deltas)
    assert not np.array_equal(a.deltas[0], a.deltas[1])


def test_no_shared_labelled_sample_is_an_error():
    with pytest.raises(ValueError, match="share no labelled probe sample"):
        affinity_from_distances(["a", "b"], np.array([[0.0, np.nan], [np.nan, 0.0]]))


def test_settings_reject_unknown_options():
    with pytest.raises(ValueError, match="head must be 'fitted' or 'shared'"):
        SwolaSettings(head="frozen")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalise must be none|task|sample"):
        SwolaSettings(normalise="l2")  # type: ignore[arg-type]


@pytest.mark.parametrize("head", ["fitted", "shared"])
def test_a_batch_probes_each_task_as_if_alone(head):
    """Batching shares work only: every task's probe equals its probe alone, to the rounding of batched products.

    (With a fitted ``joint`` head: for a given C, as the flow passes the run's C.)
    """
    x, ys, specs = _data()
    s = SwolaSettings(hidden=6, trunks=2, head=head, head_c=0.2 if head == "fitted" else None)
    names = list(ys)
    batch = probe_tasks(x, np.stack([ys[k] for k in names], axis=1), [specs[k] for k in names], s, 3)
    for k, probe in zip(names, batch, strict=True):
        alone = probe_task(x, ys[k], specs[k], s, 3)
        np.testing.assert_allclose(probe.deltas, alone.deltas, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(probe.labelled, ~np.isnan(ys[k]))
        assert not probe.deltas[:, ~probe.labelled].any()  # unlabelled samples carry no gradient


@pytest.mark.parametrize("block", [1, 2, 3, 64])
def test_blocked_pairwise_step_equals_one_block(block):
    """The symmetric (upper block triangle) and row paths agree with an unblocked computation."""
    x, ys, specs = _data()
    probes = [probe_task(x, ys[k], specs[k], SwolaSettings(hidden=6), 0) for k in ys]
    ref = distances_from_probes(probes, x, SwolaSettings(hidden=6, block=100), 0)
    s = SwolaSettings(hidden=6, block=block)
    np.testing.assert_allclose(distances_from_probes(probes, x, s, 0), ref, rtol=1e-12)
    np.testing.assert_allclose(distances_from_probes(probes, x, s, 0, rows=[3, 0]), ref[[3, 0]], rtol=1e-12)
