"""TAG, data maps and HOA: hand computations, direct statistics, and one contract for every method."""

import numpy as np
import pytest
import torch

from taskgrouping.data.dataset import TaskSpec, prepare
from taskgrouping.data.load import load_dataset
from taskgrouping.methods.datamaps import (
    DatamapSettings,
    data_map_vectors,
    datamap_affinity,
    map_distances,
    memberships,
    true_label_probability,
)
from taskgrouping.methods.hoa import hoa_affinity, hoa_gains, subset_scores
from taskgrouping.methods.swola import SwolaSettings, swola_affinity
from taskgrouping.methods.tag import TagSettings, lookahead_affinity, tag_affinity
from taskgrouping.models.train import MultiTaskModel, TrainSettings


def test_tag_lookahead_equals_hand_computation():
    """One linear unit (pre-activations positive, so the ReLU is the identity), two regression heads."""
    tasks = [TaskSpec("a", "regression", 1), TaskSpec("b", "regression", 1)]
    model = MultiTaskModel(2, tasks, hidden=1, layers=1, seed=0)
    with torch.no_grad():
        model.trunk[0].weight.copy_(torch.tensor([[0.5, 0.25]]))
        model.trunk[0].bias.fill_(0.1)
        model.heads[0].weight.fill_(2.0)
        model.heads[0].bias.fill_(-0.5)
        model.heads[1].weight.fill_(-1.0)
        model.heads[1].bias.fill_(0.3)
    x = np.array([[1.0, 2.0], [0.5, 1.5], [2.0, 0.3]])
    y = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
    lr = 0.02
    w, b = np.array([0.5, 0.25]), 0.1
    head_w, head_b = np.array([2.0, -1.0]), np.array([-0.5, 0.3])

    def losses(w, b):
        h = x @ w + b
        assert (h > 0).all()
        pred = h[:, None] * head_w[None, :] + head_b[None, :]
        return ((pred - y) ** 2).mean(axis=0)

    expected = np.zeros((2, 2))
    for i in range(2):  # source
        h = x @ w + b
        r = h * head_w[i] + head_b[i] - y[:, i]
        grad_w = (2 * r * head_w[i])[:, None] * x
        grad_b = 2 * r * head_w[i]
        after = losses(w - lr * grad_w.mean(axis=0), b - lr * grad_b.mean())
        expected[:, i] = 1 - after / losses(w, b)
    z = lookahead_affinity(model, torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32),
                           torch.ones(3, 2), tasks, lr)
    np.testing.assert_allclose(z, expected, rtol=1e-5)


def test_tag_lookahead_masks_tasks_without_labels():
    tasks = [TaskSpec("a", "binary", 2), TaskSpec("b", "binary", 2)]
    model = MultiTaskModel(3, tasks, hidden=4, layers=1, seed=0)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([[1.0, 0.0]] * 5)
    mask = torch.tensor([[1.0, 0.0]] * 5)  # task b has no label in this batch
    z = lookahead_affinity(model, x, y, mask, tasks, 0.1)
    assert np.isfinite(z[0, 0]) and np.isnan(z[:, 1]).all() and np.isnan(z[1, :]).all()


def test_data_map_statistics_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    history = rng.random((6, 3, 5))  # epochs, tasks, samples
    history[:, 2, 1] = np.nan  # a missing label
    snaps = [3, 6]
    v = data_map_vectors(history, snaps)
    for t in range(3):
        expected = []
        for e in snaps:
            expected += [[np.mean(history[:e, t, i]) for i in range(5)],
                         [np.std(history[:e, t, i]) for i in range(5)]]
        np.testing.assert_allclose(v[t], np.concatenate(expected))
    d = map_distances(v)
    for a in range(3):
        for b in range(3):
            ok = ~np.isnan(v[a]) & ~np.isnan(v[b])
            direct = np.sqrt(np.mean((v[a][ok] - v[b][ok]) ** 2)) if a != b else 0.0
            assert d[a, b] == pytest.approx(direct)
    assert DatamapSettings(epochs=20, snapshots=4).snapshot_epochs() == [5, 10, 15, 20]


def test_fuzzy_memberships_follow_the_formula():
    rng = np.random.default_rng(1)
    v = rng.random((5, 8))
    groups = [[0, 1], [2, 3, 4]]
    m = 1.5
    u = memberships(v, groups, m)
    centroids = np.stack([v[g].mean(axis=0) for g in groups])
    d = np.sqrt(((v[:, None, :] - centroids[None]) ** 2).mean(axis=2))
    raw = d ** (-2 / (m - 1))
    np.testing.assert_allclose(u, raw / raw.sum(axis=1, keepdims=True), rtol=1e-9)
    sharp = memberships(v, groups, 1.07)
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0)
    assert (sharp.argmax(axis=1) == d.argmin(axis=1)).all()


def test_true_label_probability_per_kind():
    logits = torch.tensor([[0.0], [2.0]])
    y = torch.tensor([1.0, 0.0])
    p = true_label_probability(logits, y, TaskSpec("b", "binary", 2))
    np.testing.assert_allclose(p.numpy(), [0.5, 1 - 1 / (1 + np.exp(-2.0))], rtol=1e-6)
    mc = true_label_probability(torch.tensor([[0.0, np.log(3.0)]]), torch.tensor([1.0]),
                                TaskSpec("m", "multiclass", 2))
    assert float(mc[0]) == pytest.approx(0.75)
    reg = true_label_probability(torch.tensor([[1.0]]), torch.tensor([0.0]), TaskSpec("r", "regression", 1))
    assert float(reg[0]) == pytest.approx(np.exp(-0.5))


def test_hoa_gains_and_subset_scores_orientation():
    tasks = ["a", "b", "c"]
    losses = {frozenset("a"): {"a": 1.0}, frozenset("b"): {"b": 2.0}, frozenset("c"): {"c": 3.0},
              frozenset("ab"): {"a": 0.5, "b": 2.5}, frozenset("ac"): {"a": 1.0, "c": 2.0},
              frozenset("bc"): {"b": 1.0, "c": 3.5}, frozenset("abc"): {"a": 0.4, "b": 1.5, "c": 2.5}}
    m = hoa_gains(tasks, {k: v for k, v in losses.items() if len(k) < 3}).values
    # row = receiver: a gains 0.5 from b, b loses 0.5 with a
    np.testing.assert_allclose(m, [[0, 0.5, 0.0], [-0.5, 0, 1.0], [1.0, -0.5, 0]])
    members, scores = subset_scores(tasks, losses)
    assert members.shape == (7, 3) and members[-1].all()
    np.testing.assert_allclose(scores[-1], [0.6, 0.5, 0.5])
    assert np.isneginf(scores[0, 1])


@pytest.fixture(scope="module")
def small_data():
    ds = load_dataset("builtin:synthetic:tasks=4,groups=2,samples=240,noise=0.2")
    return prepare(ds, seed=0, samples=64)


TRAIN = TrainSettings(hidden=8, max_epochs=4, patience=2)
METHODS = {
    "swola": lambda d, seed: swola_affinity(d.x[d.probe_idx], d.y[d.probe_idx], d.tasks, SwolaSettings(hidden=8),
                                            seed),
    "tag": lambda d, seed: tag_affinity(d, TagSettings(every=2), TRAIN, seed)[0],
    "datamaps": lambda d, seed: datamap_affinity(d, DatamapSettings(epochs=4, snapshots=2), TRAIN, seed)[0],
    "hoa": lambda d, seed: hoa_affinity(d, TRAIN, seed),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_meets_the_affinity_contract(small_data, name):
    """Shape, task order, kind, zero diagonal, finite values, symmetry for distances, seeded determinism."""
    aff = METHODS[name](small_data, 0)
    t = len(small_data.task_names)
    assert aff.tasks == small_data.task_names and aff.values.shape == (t, t)
    assert aff.kind == ("distance" if name in ("swola", "datamaps") else "gain")
    assert np.isfinite(aff.values).all()
    np.testing.assert_allclose(np.diag(aff.values), 0.0, atol=1e-12)
    if aff.kind == "distance":
        np.testing.assert_allclose(aff.values, aff.values.T)
        assert (aff.values >= 0).all()
    else:
        assert not np.allclose(aff.values, aff.values.T)  # directed: row = receiver
    again = METHODS[name](small_data, 0)
    np.testing.assert_array_equal(aff.values, again.values)
    assert not np.array_equal(aff.values, METHODS[name](small_data, 1).values)
