"""Tasks that share no samples: the signature's invariances, distances and FOMAML against independent references."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from taskgrouping.data.dataset import TaskSpec
from taskgrouping.methods.meta import (
    MetaSettings,
    MetaTask,
    MetaTrainSettings,
    _sgd,
    batched_forward,
    energy_distances,
    evaluate_inits,
    fomaml,
    meta_distances,
    meta_model,
    meta_probe,
    meta_trunk,
    mlp_layers,
    random_partition,
)

REG = TaskSpec("r", "regression", 1)
BIN = TaskSpec("b", "binary", 2, ("0", "1"))
MULTI = TaskSpec("m", "multiclass", 3, ("a", "b", "c"))


def _x(n=40, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("probe", ["signature", "adapted"])
def test_what_the_head_absorbs_leaves_the_signature_unchanged(probe):
    s = MetaSettings(steps=16, hidden=8, probe="signature")
    x = _x()
    rng = np.random.default_rng(1)
    y = (np.sin(x[:, 0]) + 0.3 * rng.standard_normal(40)).astype(np.float32)
    base = meta_probe(x, y, REG, s, 0, (3,)).deltas
    assert base.shape == (1, 40, len(s.checkpoints())) and s.checkpoints() == [1, 2, 4, 8, 16]
    np.testing.assert_allclose(meta_probe(x, -y, REG, s, 0, (3,)).deltas, base, atol=1e-5)  # the mirror path
    for other in (3.7 * y + 2.0, -0.01 * y - 5.0):  # rescaled and shifted: equal up to float32 rounding
        np.testing.assert_allclose(np.exp(meta_probe(x, other.astype(np.float32), REG, s, 0, (3,)).deltas),
                                   np.exp(base), rtol=5e-3, atol=1e-5)
    labels = rng.integers(0, 3, 40).astype(np.float32)
    perm = np.array([2, 0, 1], np.float32)[labels.astype(int)]
    np.testing.assert_allclose(meta_probe(x, perm, MULTI, s, 0, (3,)).deltas,
                               meta_probe(x, labels, MULTI, s, 0, (3,)).deltas, atol=1e-5)
    binary = (labels > 0).astype(np.float32)
    np.testing.assert_allclose(meta_probe(x, 1 - binary, BIN, s, 0, (3,)).deltas,
                               meta_probe(x, binary, BIN, s, 0, (3,)).deltas, atol=1e-5)
    # the baselines have a seeded non-zero head: a sign flip moves them (why the note found them weak)
    flipped = replace(s, probe=probe if probe != "signature" else "gradients")
    a = meta_probe(x, y, REG, flipped, 0, (3,)).deltas
    b = meta_probe(x, -y, REG, flipped, 0, (3,)).deltas
    assert np.abs(a - b).max() > 1e-3


def test_signature_is_the_log_loss_of_plain_gradient_descent():
    """An independent reference: the same steps written with a torch.nn model and autograd."""
    s = MetaSettings(steps=4, hidden=6, lr=0.1)
    x = _x(12, 2)
    y = np.linspace(-1, 2, 12).astype(np.float32)
    got = meta_probe(x, y, REG, s, 3, (2,)).deltas[0]
    trunk = meta_trunk(s, 3, (2,))
    head = torch.nn.Linear(6, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    model = torch.nn.Sequential(trunk, head)
    z = torch.as_tensor((y - y.mean()) / y.std())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    want = []
    for step in range(5):
        per = (model(torch.as_tensor(x))[:, 0] - z) ** 2
        if step in (1, 2, 4):
            want.append(torch.log(per.detach() + 1e-6))
        opt.zero_grad()
        per.mean().backward()
        opt.step()
    np.testing.assert_allclose(got, torch.stack(want, 1).numpy(), rtol=1e-4, atol=1e-5)


def test_energy_distance_against_brute_force():
    rng = np.random.default_rng(0)
    sets = [rng.standard_normal((n, 4)) + shift for n, shift in ((5, 0.0), (7, 0.5), (3, 3.0))]

    def brute(a, b):
        cross = np.mean([np.abs(p - q).sum() for p in a for q in b])
        aa = np.mean([np.abs(p - q).sum() for p in a for q in a])
        bb = np.mean([np.abs(p - q).sum() for p in b for q in b])
        return 2 * cross - aa - bb

    d = energy_distances(sets)
    for i in range(3):
        for j in range(3):
            assert d[i, j] == pytest.approx(brute(sets[i], sets[j]) if i != j else 0.0, rel=1e-5, abs=1e-6)
    assert (d >= 0).all() and np.allclose(d, d.T)
    assert d[0, 2] > d[0, 1]  # the far set is farther
    np.testing.assert_allclose(energy_distances(sets, rows=[2]), d[[2]], rtol=1e-6)


def test_adapted_probe_distance_is_euclidean_between_vectors():
    s = MetaSettings(probe="adapted", hidden=5)
    probes = [meta_probe(_x(20, 2, k), np.arange(20, dtype=np.float32) * (k + 1), REG, s, 0, (2,)) for k in range(3)]
    v = np.concatenate([p.deltas[0] for p in probes]).astype(np.float64)
    want = np.sqrt(((v[:, None] - v[None]) ** 2).sum(-1))
    np.testing.assert_allclose(meta_distances(probes), want, rtol=1e-6, atol=1e-9)


def _tasks(k=4, n=25, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        x = rng.uniform(-2, 2, (n + i, 1)).astype(np.float32)
        out.append(MetaTask(f"t{i}", x, ((i % 2 * 2 - 1) * x[:, 0] + 0.1 * i).astype(np.float32)))
    return out


def test_batched_engines_agree_and_match_per_copy_sgd():
    model = meta_model(MetaSettings(hidden=6), 0, (1,), 1)
    assert mlp_layers(model) is not None
    mlp, vm = batched_forward(model, (1,), "mlp"), batched_forward(model, (1,), "vmap")
    params = {k: v.detach()[None].repeat(3, *([1] * v.ndim)) + 0.01 * torch.randn(3, *v.shape)
              for k, v in model.named_parameters()}
    x, y = torch.randn(3, 7, 1), torch.randn(3, 7)
    np.testing.assert_allclose(mlp(params, x).detach().numpy(), vm(params, x).detach().numpy(), atol=1e-5)
    w = torch.ones(3, 7)
    w[1, 2] = 0.0
    got = _sgd(mlp, REG, params, x, y, w, 3, 0.05, clip=0.5)
    for c in range(3):  # the reference: one torch.nn model per copy, plain SGD on its own weighted loss
        ref = meta_model(MetaSettings(hidden=6), 0, (1,), 1)
        ref.load_state_dict({k: v[c] for k, v in params.items()})
        opt = torch.optim.SGD(ref.parameters(), lr=0.05)
        for _ in range(3):
            per = (ref(x[c])[:, 0] - y[c]) ** 2
            opt.zero_grad()
            ((per * w[c]).sum() / w[c].sum()).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            opt.step()
        for k, v in ref.named_parameters():
            np.testing.assert_allclose(got[k][c].numpy(), v.detach().numpy(), atol=1e-5)
    s = MetaTrainSettings(outer_steps=5, meta_batch=2, shots=4)
    a = fomaml(model, REG, _tasks(), [[0, 1], [2, 3]], s, 0, (1,), engine="mlp")
    b = fomaml(model, REG, _tasks(), [[0, 1], [2, 3]], s, 0, (1,), engine="vmap")
    for k in a:
        assert a[k].shape[0] == 2
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-5)
    base = dict(model.named_parameters())
    assert all(not torch.equal(a[k][0], base[k].detach()) for k in a)  # every init moved


def test_evaluation_against_a_leave_one_out_loop():
    model = meta_model(MetaSettings(hidden=5), 1, (1,), 1)
    inits = {k: v.detach()[None].repeat(2, *([1] * v.ndim)) + 0.05 * torch.randn(2, *v.shape)
             for k, v in model.named_parameters()}
    held = _tasks(2, 30, seed=3)
    s = MetaTrainSettings(eval_steps=3, inner_lr=0.05, query=10, clip=0.3)
    query, loo = evaluate_inits(model, REG, inits, held, 4, s, 0, (1,))
    from taskgrouping.methods.meta import support_rows

    def adapt(g, x, y):
        ref = meta_model(MetaSettings(hidden=5), 1, (1,), 1)
        ref.load_state_dict({k: v[g] for k, v in inits.items()})
        opt = torch.optim.SGD(ref.parameters(), lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            ((ref(x)[:, 0] - y) ** 2).mean().backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.3)
            opt.step()
        return ref

    for h, t in enumerate(held):
        s_rows, q_rows = support_rows(t.x.shape[0], 4, t.name, 0, 10)
        assert len(q_rows) == 10 and not set(s_rows) & set(q_rows)
        xs, ys = torch.as_tensor(t.x[s_rows]), torch.as_tensor(t.y[s_rows])
        for g in range(2):
            ref = adapt(g, xs, ys)
            q = ((ref(torch.as_tensor(t.x[q_rows]))[:, 0] - torch.as_tensor(t.y[q_rows])) ** 2).mean()
            assert query[h, g] == pytest.approx(float(q.detach()), rel=1e-4)
            folds = []
            for i in range(4):
                keep = [j for j in range(4) if j != i]
                ref = adapt(g, xs[keep], ys[keep])
                folds.append(float((ref(xs[i : i + 1])[0, 0] - ys[i]).detach() ** 2))
            assert loo[h, g] == pytest.approx(np.mean(folds), rel=1e-4)


def test_random_partition_keeps_sizes_and_is_seeded():
    p = random_partition([3, 2, 1], 6, 7)
    assert sorted(len(g) for g in p) == [1, 2, 3] and sorted(i for g in p for i in g) == list(range(6))
    assert p == random_partition([3, 2, 1], 6, 7) and p != random_partition([3, 2, 1], 6, 8)


def test_bad_meta_settings_are_named():
    with pytest.raises(ValueError, match="--meta-probe must be one of signature, gradients, adapted"):
        MetaSettings(probe="fisher")
    with pytest.raises(ValueError, match="K-shots >= 2"):
        MetaTrainSettings(eval_shots=(1,))
    with pytest.raises(ValueError, match="at least 2"):
        meta_probe(_x(1), np.zeros(1, np.float32), REG, MetaSettings(), 0, (3,))


def test_the_signature_takes_any_trunk_and_keeps_its_invariance():
    """An image trunk (conv, BatchNorm frozen in eval) through the same probe."""
    s = MetaSettings(steps=8, trunk="cnn", hidden=8)
    x = np.random.default_rng(0).standard_normal((16, 1 * 4 * 4)).astype(np.float32)
    y = np.linspace(-2, 3, 16).astype(np.float32)
    a = meta_probe(x, y, REG, s, 0, (1, 4, 4)).deltas
    assert a.shape == (1, 16, 4) and np.isfinite(a).all()
    np.testing.assert_allclose(meta_probe(x, -y, REG, s, 0, (1, 4, 4)).deltas, a, atol=1e-5)
    assert np.abs(meta_probe(x, y, REG, s, 1, (1, 4, 4)).deltas - a).max() > 1e-4  # another seed, another theta0


def test_meta_training_runs_on_an_image_trunk_through_vmap():
    model = meta_model(MetaSettings(trunk="cnn", hidden=8), 0, (1, 4, 4), 1)
    assert mlp_layers(model) is None  # conv and BatchNorm: the functional_call path
    rng = np.random.default_rng(0)
    tasks = [MetaTask(f"t{i}", rng.standard_normal((30, 16)).astype(np.float32),
                      rng.standard_normal(30).astype(np.float32)) for i in range(4)]
    s = MetaTrainSettings(outer_steps=3, meta_batch=2, shots=4, query=5)
    inits = fomaml(model, REG, tasks, [[0, 1], [2, 3]], s, 0, (1, 4, 4))
    start = dict(model.named_parameters())
    assert all(v.shape[0] == 2 for v in inits.values())
    assert any(not torch.allclose(inits[k][0], start[k]) for k in inits)
    query, loo = evaluate_inits(model, REG, inits, tasks[:2], 3, s, 0, (1, 4, 4))
    assert query.shape == loo.shape == (2, 2) and np.isfinite(query).all() and np.isfinite(loo).all()
