"""Principled Task Grouping's gains: the real optimiser step per task set, against a hand-written Adam step."""

import copy

import numpy as np
import pytest
import torch

from taskgrouping.data.builtins import synthetic
from taskgrouping.data.dataset import TaskSpec, prepare
from taskgrouping.methods.principled import (
    PrincipledSettings,
    gains_from_losses,
    lookahead_losses,
    principled_affinity,
    set_loss,
    task_sets,
)
from taskgrouping.models.train import MultiTaskModel, TrainSettings, masked_losses

TASKS = [TaskSpec(f"t{i}", "binary", 2, ("0", "1")) for i in range(3)]
LR, EPS = 0.01, 1e-8


def _batch(seed=0, n=32):
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.standard_normal((n, 5)), dtype=torch.float32)
    y = torch.as_tensor((rng.standard_normal((n, 3)) > 0).astype(np.float32))
    mask = torch.ones(n, 3)
    mask[:5, 2] = 0.0  # missing labels are masked as in training
    return x, y, mask


def _hand_adam_first_step(model, weight, x, y, mask):
    """Adam's first step written out: theta - lr * m_hat / (sqrt(v_hat) + eps) with m_hat = g, v_hat = g^2."""
    m = copy.deepcopy(model)
    h = m.trunk(x)
    loss = sum(weight[i] * masked_losses([m.heads[i](h)], y[:, i : i + 1], mask[:, i : i + 1], [TASKS[i]])[0]
               for i in range(3) if weight[i] > 0)
    params = list(m.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if g is not None:  # a head outside the set has no gradient and does not move
                p -= LR * g / (g.abs() + EPS)
        return masked_losses(m(x), y, mask, TASKS).numpy()


def test_lookahead_losses_equal_a_hand_written_adam_step_and_restore_everything():
    model = MultiTaskModel(5, TASKS, 8, 2, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=LR, eps=EPS)
    x, y, mask = _batch()
    before_state = copy.deepcopy(model.state_dict())
    before, after = lookahead_losses(model, opt, x, y, mask, TASKS)
    assert set(after) == set(task_sets(3)) and len(after) == 3 + 6  # singles, pairs, doubles
    for members, got in after.items():
        weight = torch.zeros(3)
        for i in members:
            weight[i] += 1
        np.testing.assert_allclose(got, _hand_adam_first_step(model, weight, x, y, mask), rtol=1e-5, atol=1e-6)
    # the doubled control is a step of the same size: Adam's first step does not see the factor 2
    for i in range(3):
        np.testing.assert_allclose(after[(i, i)], after[(i,)], rtol=1e-5)
    # the model and the optimiser are as they were
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_state[k])
    assert opt.state_dict()["state"] == {}
    np.testing.assert_allclose(before, masked_losses(model(x), y, mask, TASKS).detach().numpy(), rtol=1e-6)


def test_a_later_step_uses_and_keeps_the_optimiser_moments():
    model = MultiTaskModel(5, TASKS, 8, 2, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    x, y, mask = _batch(1)
    for _ in range(3):  # some real training first: Adam now has moment estimates
        opt.zero_grad()
        masked_losses(model(x), y, mask, TASKS).sum().backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    _, after = lookahead_losses(model, opt, x, y, mask, TASKS)
    ref_model, ref_opt = copy.deepcopy(model), torch.optim.Adam(model.parameters(), lr=LR)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=LR)
    ref_opt.load_state_dict(copy.deepcopy(saved))
    ref_opt.zero_grad(set_to_none=True)
    set_loss(ref_model, x, y, mask, TASKS, (0, 2)).backward()
    ref_opt.step()
    untouched = dict(ref_model.named_parameters())
    assert all(torch.equal(p, untouched[k]) for k, p in model.named_parameters() if k.startswith("heads.1."))
    with torch.no_grad():
        np.testing.assert_allclose(after[(0, 2)], masked_losses(ref_model(x), y, mask, TASKS).numpy(), rtol=1e-5)
    state = opt.state_dict()["state"]
    for k, v in saved["state"].items():
        assert all(torch.equal(v[n], state[k][n]) for n in v)


def test_gains_compare_the_pair_step_with_the_receivers_own_step_or_the_doubled_control():
    before = np.array([1.0, 2.0, 4.0])
    after = {(0,): np.array([0.9, 1.9, 4.1]), (1,): np.array([1.0, 1.5, 3.9]), (2,): np.array([1.1, 2.0, 3.0]),
             (0, 1): np.array([0.8, 1.4, 4.0]), (0, 2): np.array([0.95, 2.0, 3.2]), (1, 2): np.array([1.0, 1.6, 2.8]),
             (0, 0): np.array([0.85, 2.0, 4.0]), (1, 1): np.array([1.0, 1.2, 4.0]), (2, 2): np.array([1.0, 2.0, 2.5])}
    s, single = gains_from_losses(before, after, np.array([True, True, True]))
    # by hand: S[j, i] = 1 - L_j(step on {i, j}) / L_j(step on {j})
    assert s[0, 1] == pytest.approx(1 - 0.8 / 0.9) and s[1, 0] == pytest.approx(1 - 1.4 / 1.5)
    assert s[2, 1] == pytest.approx(1 - 2.8 / 3.0) and s[1, 2] == pytest.approx(1 - 1.6 / 1.5)
    assert s[0, 2] == pytest.approx(1 - 0.95 / 0.9)  # a pair step that hurts the receiver: a negative gain
    assert np.all(np.diag(s) == 0.0)
    d, _ = gains_from_losses(before, after, np.array([True, True, True]), control="doubled")
    # by hand: S[j, i] = 1 - L_j(step on {i, j}) / L_j(step on {j, j})
    assert d[0, 1] == pytest.approx(1 - 0.8 / 0.85) and d[1, 0] == pytest.approx(1 - 1.4 / 1.2)
    assert d[2, 1] == pytest.approx(1 - 2.8 / 2.5) and d[1, 2] == pytest.approx(1 - 1.6 / 1.2)
    assert single[1, 2] == pytest.approx(1 - 2.0 / 2.0) and single[2, 0] == pytest.approx(1 - 4.1 / 4.0)
    s, _ = gains_from_losses(before, after, np.array([True, False, True]))  # a task with no label in the batch
    assert np.isnan(s[0, 1]) and np.isnan(s[1, 0]) and np.isfinite(s[0, 2])


def test_sgd_lookahead_equals_a_hand_written_momentum_step_and_restores_everything():
    model = MultiTaskModel(5, TASKS, 8, 2, seed=3)
    lr, mu = 0.05, 0.9
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu)
    x, y, mask = _batch(2)
    for _ in range(3):  # real training first: every parameter has a momentum buffer
        opt.zero_grad()
        masked_losses(model(x), y, mask, TASKS).sum().backward()
        opt.step()
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    params = dict(model.named_parameters())
    buffers = {name: opt.state[p]["momentum_buffer"].clone() for name, p in params.items()}
    before, after = lookahead_losses(model, opt, x, y, mask, TASKS)
    for members, got in after.items():
        ref = copy.deepcopy(model)
        loss = set_loss(ref, x, y, mask, TASKS, members)
        named = dict(ref.named_parameters())
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        with torch.no_grad():
            for (name, p), g in zip(named.items(), grads, strict=True):
                if g is not None:  # torch's SGD: buf = mu * buf + g; theta -= lr * buf (a head outside stays)
                    p -= lr * (mu * buffers[name] + g)
            np.testing.assert_allclose(got, masked_losses(ref(x), y, mask, TASKS).numpy(), rtol=1e-5, atol=1e-7)
    for k, v in model.state_dict().items():  # restored after every lookahead
        assert torch.equal(v, saved_model[k])
    state = opt.state_dict()["state"]
    assert all(torch.equal(saved_opt["state"][k]["momentum_buffer"], state[k]["momentum_buffer"]) for k in state)
    np.testing.assert_allclose(before, masked_losses(model(x), y, mask, TASKS).detach().numpy(), rtol=1e-6)


def test_settings_choose_the_collection_optimiser():
    train = TrainSettings(hidden=16, lr=1e-3)
    sgd = PrincipledSettings().train_settings(train)
    assert (sgd.optimizer, sgd.lr, sgd.momentum, sgd.hidden) == ("sgd", 0.1, 0.9, 16)
    adam = PrincipledSettings(optimizer="adam").train_settings(train)
    assert (adam.optimizer, adam.lr) == ("adam", 1e-3)
    for kwargs, message in (({"optimizer": "rmsprop"}, "principled optimizer must be 'sgd' or 'adam'"),
                            ({"control": "none"}, "principled control must be 'single' or 'doubled'"),
                            ({"momentum": 1.0}, "principled SGD needs lr > 0 and 0 <= momentum < 1")):
        with pytest.raises(ValueError, match=message):
            PrincipledSettings(**kwargs)


def test_a_joint_run_measures_every_nth_step_and_returns_gains():
    ds = synthetic(tasks=4, groups=2, samples=400, noise=0.1, jitter=0.1, seed=2)
    data = prepare(ds, 0, 64)
    train = TrainSettings(hidden=16, max_epochs=3, patience=10)
    aff, info = principled_affinity(data, PrincipledSettings(every=5), train, 0)
    assert aff.kind == "gain" and np.all(np.diag(aff.values) == 0) and np.isfinite(aff.values).all()
    assert info["lookahead_steps_per_measurement"] == 4 + 10
    steps = info["epochs"] * -(-int((data.split == 0).sum()) // train.batch)
    assert info["measured_steps"] == -(-steps // 5)  # steps 0, 5, 10, ...
