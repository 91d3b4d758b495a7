"""The generic SWOLA probe engine against independent references: per-sample autograd, exact L1 for the
sketch, the factorised MLP form, chunk and task-order invariance, and the GM estimator's statistics."""

import textwrap

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from taskgrouping.data.dataset import TaskSpec
from taskgrouping.methods import probe_engine as pe
from taskgrouping.methods.swola import (
    SwolaSettings,
    distances_from_probes,
    probe_tasks,
    probe_tasks_any,
    probe_trunk_any,
    probe_trunks,
)
from taskgrouping.models.losses import per_sample_loss

SHAPE = (3, 8, 8)

@pytest.fixture
def factory(residual_factory):
    return residual_factory


def _problem(n=96, t=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, int(np.prod(SHAPE)))).astype(np.float32)
    z = x.reshape(n, *SHAPE).mean(axis=(2, 3))
    y = np.stack([(z[:, k % 3] + 0.4 * rng.standard_normal(n) > 0) for k in range(t)], 1).astype(np.float32)
    y[:7, 0] = np.nan  # missing labels
    tasks = [TaskSpec(f"t{k}", "binary", 2, ("0", "1")) for k in range(t)]
    return x, y, tasks


def test_exact_gradients_equal_a_per_sample_autograd_reference(factory):
    x, y, tasks = _problem(n=20, t=3)
    s = SwolaSettings(trunk=f"{factory}:make", sketch="none")
    probes = probe_tasks(x, y, tasks, s, 0, input_shape=SHAPE)
    trunk = probe_trunk_any(s, 0, SHAPE, torch.as_tensor(x))  # the same frozen, calibrated trunk
    params = [p for p in trunk.parameters() if p.requires_grad]
    with torch.no_grad():
        h = trunk(torch.as_tensor(x)).numpy()
    from taskgrouping.methods.swola import task_heads

    heads = task_heads(h.astype(np.float64), y, tasks, s, 0, None)  # the probe's heads (one joint C)
    for b, task in enumerate(tasks):
        lab = ~np.isnan(y[:, b])
        w, bias = heads[b]
        for i in range(0, 20, 3):
            if not lab[i]:
                assert not probes[b].deltas[0, i].any()
                continue
            out = trunk(torch.as_tensor(x[i : i + 1]))
            logits = out @ torch.as_tensor(w).T + torch.as_tensor(bias)
            loss = per_sample_loss(logits, torch.as_tensor(y[i : i + 1, b]), task).sum()
            ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).numpy()
            np.testing.assert_allclose(probes[b].deltas[0, i], ref, rtol=1e-4, atol=1e-6)
            assert probes[b].norms[0, i] == pytest.approx(np.abs(ref).sum(), rel=1e-4)


def test_vmap_and_loop_engines_agree_and_chunks_do_not_matter(factory):
    x, y, tasks = _problem(n=30, t=3)
    s = SwolaSettings(trunk=f"{factory}:make", sketch="none")
    ref = probe_tasks_any(x, y, tasks, s, 0, "cpu", SHAPE, engine="vmap", chunk=30)
    for engine, chunk in (("loop", 7), ("vmap", 1), ("vmap", 7)):
        got = probe_tasks_any(x, y, tasks, s, 0, "cpu", SHAPE, engine=engine, chunk=chunk)
        for a, b in zip(ref, got, strict=True):
            np.testing.assert_allclose(a.deltas, b.deltas, rtol=1e-5, atol=1e-7)


def test_in_place_module_falls_back_to_the_loop(tmp_path):
    path = tmp_path / "inplace.py"
    path.write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Odd(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.lin = nn.Linear(d, 5)

            def forward(self, x):
                h = self.lin(x)
                if bool(h.detach().abs().sum() > 1e9):   # data-dependent control flow: vmap cannot transform it
                    h = h * 2
                return torch.relu(h)

        def make(shape):
            return Odd(shape[0])
    '''))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = (x[:, :2] > 0).astype(np.float32)
    tasks = [TaskSpec(f"t{k}", "binary", 2, ("0", "1")) for k in range(2)]
    s = SwolaSettings(trunk=f"{path}:make", sketch="none")
    with pytest.raises(RuntimeError):  # vmap refuses data-dependent control flow
        probe_tasks_any(x, y, tasks, s, 0, "cpu", (4,), engine="vmap")
    auto = probe_tasks_any(x, y, tasks, s, 0, "cpu", (4,), engine="auto")
    loop = probe_tasks_any(x, y, tasks, s, 0, "cpu", (4,), engine="loop")
    for a, b in zip(auto, loop, strict=True):
        np.testing.assert_array_equal(a.deltas, b.deltas)


def test_a_task_probed_alone_equals_the_same_task_in_a_batch(factory):
    x, y, tasks = _problem(n=40, t=4)
    s = SwolaSettings(trunk=f"{factory}:make", sketch="none", head_c=0.2)  # the flow passes the run's C
    batch = probe_tasks(x, y, tasks, s, 0, input_shape=SHAPE)
    reversed_ = probe_tasks(x, y[:, ::-1].copy(), tasks[::-1], s, 0, input_shape=SHAPE)[::-1]
    for b in range(4):
        alone = probe_tasks(x, y[:, b : b + 1], [tasks[b]], s, 0, input_shape=SHAPE)[0]
        np.testing.assert_allclose(alone.deltas, batch[b].deltas, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(reversed_[b].deltas, batch[b].deltas, rtol=1e-5, atol=1e-7)


def test_factored_gradients_equal_one_backward_pass_per_task(factory):
    """Once tasks outnumber features, ``cot[i] @ J_i`` replaces a backward pass per (sample, task)."""
    x, y, tasks = _problem(n=24, t=16)  # the factory trunk has F = 12 features: 16 tasks take the factored path
    s = SwolaSettings(trunk=f"{factory}:make", sketch="none", head_c=0.2)
    xt = torch.as_tensor(x)
    trunk = probe_trunk_any(s, 0, SHAPE, xt)
    cot = torch.randn(24, 16, 12, generator=torch.Generator().manual_seed(0))
    ref = torch.cat([g for _, g in pe.per_sample_grads(trunk, xt, cot, engine="loop")])
    fac = torch.cat([g for _, g in pe.factored_grads(trunk, xt, cot, chunk=5)])
    np.testing.assert_allclose(fac.numpy(), ref.numpy(), rtol=1e-4, atol=1e-6)
    batch = probe_tasks(x, y, tasks, s, 0, input_shape=SHAPE)  # factored
    for b in (0, 3):
        alone = probe_tasks(x, y[:, [b]], [tasks[b]], s, 0, input_shape=SHAPE)[0]  # one backward pass per sample
        np.testing.assert_allclose(batch[b].deltas, alone.deltas, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(batch[b].norms, alone.norms, rtol=1e-4)


def test_sketch_maps_give_the_cauchy_projection_of_the_exact_gradient(factory):
    """A sketch from the trunk's maps is S_i g_{t,i} of the exact gradient; its norms are the GM estimates."""
    from dataclasses import replace

    n, k = 16, 32
    x, y, tasks = _problem(n=n, t=3)
    s = SwolaSettings(trunk=f"{factory}:make", sketch=str(k), head_c=0.2)
    probes = probe_tasks(x, y, tasks, s, 0, input_shape=SHAPE)
    exact = probe_tasks(x, y, tasks, replace(s, sketch="none"), 0, input_shape=SHAPE)
    logs = []
    for b in range(3):
        assert probes[b].kind == "sketch" and probes[b].deltas.shape == (1, n, k)
        for i in range(n):
            if not probes[b].labelled[i]:
                assert not probes[b].deltas[0, i].any() and probes[b].norms[0, i] == 0.0
                continue
            ref = pe.cauchy_project(torch.as_tensor(exact[b].deltas[0, i : i + 1]), i, k, 0)[0]
            np.testing.assert_allclose(probes[b].deltas[0, i], ref.numpy(), rtol=1e-3,
                                       atol=1e-5 * float(ref.abs().max()))
            assert probes[b].norms[0, i] == pytest.approx(float(pe.gm_l1(ref)), rel=1e-3)
            logs.append(np.log(probes[b].norms[0, i] / exact[b].norms[0, i]))
    # the estimated norms scatter about the exact ones as the GM estimator does: sd (pi / 2) / sqrt(k) in log
    assert abs(np.mean(logs)) < 4 * (np.pi / 2) / np.sqrt(k * len(logs))
    # 3 tasks < F = 12 features: each gradient was projected; from the maps, the same sketches and norms
    maps = pe.sketch_maps(probe_trunk_any(s, 0, SHAPE, torch.as_tensor(x)), torch.as_tensor(x), k, 0)
    again = probe_tasks(x, y, tasks, s, 0, input_shape=SHAPE, maps=maps)
    for b in range(3):
        np.testing.assert_allclose(again[b].deltas, probes[b].deltas, rtol=1e-3, atol=1e-5 * np.abs(probes[b].deltas).max())
        np.testing.assert_allclose(again[b].norms, probes[b].norms, rtol=1e-3, atol=1e-9)
    many = probe_tasks(x, np.tile(y, (1, 5)), tasks * 5, s, 0, input_shape=SHAPE)  # 15 >= F tasks: maps computed
    np.testing.assert_allclose(many[4].deltas, probes[1].deltas, rtol=1e-3, atol=1e-5 * np.abs(probes[1].deltas).max())
    with pytest.raises(ValueError, match=r"sketch maps of shape \(16, 12, 16\) do not fit 16 samples, 12 features "
                                         r"and width 32"):
        probe_tasks(x, y, tasks, s, 0, input_shape=SHAPE, maps=maps[:, :, :16])


def test_a_sketch_width_changes_the_probe_key_of_the_default_trunk():
    """``--trunk auto`` is the cnn on images: its probes depend on ``--sketch``."""
    assert SwolaSettings(sketch="32").probe_part() != SwolaSettings().probe_part()
    assert "sketch" not in SwolaSettings().probe_part()  # the MLP's keys stay as they were


def test_sketched_distances_track_exact_distances_within_the_theory(factory):
    n, t, k = 256, 12, 128
    x, y, tasks = _problem(n=n, t=t, seed=2)
    exact_s = SwolaSettings(trunk=f"{factory}:make", sketch="none")
    sketch_s = SwolaSettings(trunk=f"{factory}:make", sketch=str(k))
    exact = distances_from_probes(probe_tasks(x, y, tasks, exact_s, 0, input_shape=SHAPE), x, exact_s, 0)
    probes = probe_tasks(x, y, tasks, sketch_s, 0, input_shape=SHAPE)
    assert probes[0].kind == "sketch" and probes[0].deltas.shape == (1, n, k)
    est = distances_from_probes(probes, x, sketch_s, 0)
    off = ~np.eye(t, dtype=bool)
    rel = (est[off] - exact[off]) / exact[off]
    theory = (np.pi / 2) / np.sqrt(k * n)
    assert np.sqrt(np.mean(rel**2)) <= 2 * theory, (np.sqrt(np.mean(rel**2)), theory)
    assert spearmanr(est[off], exact[off]).statistic >= 0.98
    # incremental rows equal the full matrix's rows
    np.testing.assert_allclose(distances_from_probes(probes, x, sketch_s, 0, rows=[3, 7]), est[[3, 7]], rtol=1e-10)


def test_generic_engine_equals_the_factorised_mlp_form(factory, tmp_path):
    from safetensors.torch import save_file

    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = np.stack([(x[:, j % 2] + 0.5 * rng.standard_normal(64) > 0) for j in range(4)], 1).astype(np.float32)
    y[:3, 1] = np.nan
    tasks = [TaskSpec(f"t{k}", "binary", 2, ("0", "1")) for k in range(4)]
    mlp = SwolaSettings(hidden=16, layers=2)
    factorised = distances_from_probes(probe_tasks(x, y, tasks, mlp, 0), x, mlp, 0)
    ckpt = tmp_path / "mlp.safetensors"  # the factorised path's trunk, as a checkpoint for a factory MLP
    save_file({k: v.contiguous() for k, v in probe_trunks(5, mlp, 0)[0].state_dict().items()}, str(ckpt))
    generic = SwolaSettings(hidden=16, layers=2, trunk=f"{factory}:make_mlp", checkpoint=str(ckpt), sketch="none")
    probes = probe_tasks(x, y, tasks, generic, 0)
    assert probes[0].kind == "grad"
    np.testing.assert_allclose(distances_from_probes(probes, x, generic, 0), factorised, rtol=2e-5)


@pytest.mark.parametrize("k", [64, 256])
def test_geometric_mean_estimator_is_unbiased_with_the_stated_spread(k):
    rng = np.random.default_rng(k)
    v = torch.as_tensor(rng.standard_t(2, size=3000) * (rng.random(3000) < 0.3))  # sparse, heavy-tailed
    truth = float(v.abs().sum())
    est = np.array([float(pe.gm_l1(pe.cauchy_project(v[None].float(), s, k, seed=7)[0])) for s in range(400)])
    rel = est / truth - 1
    assert abs(rel.mean()) < 0.02
    assert abs(rel.std() / ((np.pi / 2) / np.sqrt(k)) - 1) < 0.15


def test_sketch_width_rule():
    assert pe.sketch_width("none", 10**6, 10**6) is None
    assert pe.sketch_width("auto", 512, 20_000) is None  # 10 M floats: exact
    assert pe.sketch_width("auto", 512, 100_000) == pe.DEFAULT_K
    assert pe.sketch_width("32", 4, 4) == 32
    with pytest.raises(ValueError, match="--sketch must be auto, none or a positive integer K, got 'big'"):
        SwolaSettings(sketch="big")


def test_builtin_image_trunks_map_images_to_features():
    from taskgrouping.models.trunks import build_any_trunk, feature_width

    for name in ("cnn", "resnet", "auto"):
        trunk = build_any_trunk(name, (3, 16, 16), 24, 2, seed=0)
        assert feature_width(trunk, (3, 16, 16), name) == 24
        again = build_any_trunk(name, (3, 16, 16), 24, 2, seed=0)
        assert all(torch.equal(a, b) for a, b in zip(trunk.state_dict().values(), again.state_dict().values(), strict=True))
    assert isinstance(build_any_trunk("auto", (7,), 8, 2, 0).body, nn.Sequential)


def test_joint_training_methods_use_the_chosen_trunk():
    """TAG, data maps and grouped training run on an image trunk (here the resnet) end to end."""
    from taskgrouping.data.builtins import shapes
    from taskgrouping.data.dataset import prepare
    from taskgrouping.methods.datamaps import DatamapSettings, datamap_affinity
    from taskgrouping.methods.tag import TagSettings, tag_affinity
    from taskgrouping.models.train import MultiTaskModel, TrainSettings, train_group

    data = prepare(shapes(samples=120, size=8, per=1), 0, 32)
    train = TrainSettings(trunk="resnet", hidden=8, max_epochs=2, batch=32)
    tag, info = tag_affinity(data, TagSettings(every=2), train, 0)
    maps, _, _ = datamap_affinity(data, DatamapSettings(), train, 0)
    for aff in (tag, maps):
        assert aff.values.shape == (4, 4) and np.isfinite(aff.values).all()
    state, results, _ = train_group(data, [0, 1], train, 0)
    assert any(k.startswith("trunk.body.blocks") for k in state) and len(results) == 2
    model = MultiTaskModel(192, data.tasks[:2], 8, 2, 0, "resnet", None, (3, 8, 8))
    model.load_state_dict(state)  # the saved state is the resnet's, loadable as it was built
