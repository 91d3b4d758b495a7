"""The batched joint head fit against scikit-learn, and the shared cross-validation against a brute-force one."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from taskgrouping.data.dataset import TaskSpec
from taskgrouping.methods.heads import ABSENT_BIAS, choose_c, cv_losses, fit_heads, fold_ids

BIN = TaskSpec("b", "binary", 2, ("0", "1"))
CLS = TaskSpec("c", "multiclass", 3, ("x", "y", "z"))
REG = TaskSpec("r", "regression", 1)


def _problem(n=150, hdim=7, seed=0):
    rng = np.random.default_rng(seed)
    h = np.maximum(rng.standard_normal((n, hdim)), 0.0)
    z = h @ rng.standard_normal(hdim) + 0.8 * rng.standard_normal(n)
    yb = (z > np.median(z)).astype(np.float64)
    yc = np.digitize(z, np.quantile(z, [0.3, 0.7])).astype(np.float64)
    yr = z - z.mean()
    yb[:11] = np.nan  # missing labels: fitted on the labelled rows only
    yc[20:26] = np.nan
    yr[40:45] = np.nan
    return h, np.stack([yb, yc, yr], axis=1)


@pytest.mark.parametrize("c", [0.01, 0.3, 5.0])
def test_heads_equal_scikit_learn_at_the_same_c(c):
    h, y = _problem()
    heads = fit_heads(h, y, [BIN, CLS, REG], c)
    refs = [LogisticRegression(C=c, tol=1e-12, max_iter=100_000), LogisticRegression(C=c, tol=1e-12, max_iter=100_000),
            Ridge(alpha=1.0 / c)]  # half squared errors + ||w||^2 / (2C): the minimiser of Ridge(alpha = 1 / C)
    for b, ref in enumerate(refs):
        lab = ~np.isnan(y[:, b])
        ref.fit(h[lab], y[lab, b])
        w, bias = heads[b]
        np.testing.assert_allclose(w, np.atleast_2d(ref.coef_), atol=2e-4, rtol=1e-3)
        np.testing.assert_allclose(bias, np.atleast_1d(ref.intercept_), atol=2e-4, rtol=1e-3)


def test_a_task_in_a_batch_gets_the_head_it_gets_alone():
    h, y = _problem()
    rng = np.random.default_rng(1)
    more = (h @ rng.standard_normal((h.shape[1], 5)) > 0.5).astype(np.float64)  # five other binary tasks
    both = np.concatenate([y[:, :1], more], axis=1)
    tasks = [BIN] * 6
    batch = fit_heads(h, both, tasks, 0.3)
    alone = fit_heads(h, y[:, :1], [BIN], 0.3)
    np.testing.assert_allclose(batch[0][0], alone[0][0], atol=1e-5)
    cv_batch = cv_losses(h, both, tasks, (0.05, 1.0), 3, 0)
    np.testing.assert_allclose(cv_batch[0], cv_losses(h, y[:, :1], [BIN], (0.05, 1.0), 3, 0)[0], rtol=1e-6)


def test_heads_with_many_missing_labels_equal_scikit_learn():
    """Tasks labelled on at least half the rows step with the shared bound, the others with their own gram:
    both reach scikit-learn's optimum, and each task's CV losses do not depend on its batch."""
    rng = np.random.default_rng(4)
    h, _ = _problem(n=200)
    z = h @ rng.standard_normal((h.shape[1], 4))
    y = (z + 0.5 * rng.standard_normal((200, 4)) > np.median(z, axis=0)).astype(np.float64)
    for b, missing in enumerate((0.1, 0.4, 0.65, 0.85)):
        y[rng.random(200) < missing, b] = np.nan
    share = (~np.isnan(y)).mean(axis=0)
    assert (share >= 0.5).sum() == 2 and (share < 0.5).sum() == 2  # both kinds of step
    for c in (0.05, 2.0):
        heads = fit_heads(h, y, [BIN] * 4, c)
        for b in range(4):
            lab = ~np.isnan(y[:, b])
            ref = LogisticRegression(C=c, tol=1e-12, max_iter=100_000).fit(h[lab], y[lab, b])
            np.testing.assert_allclose(heads[b][0], ref.coef_, atol=2e-4, rtol=1e-3)
            np.testing.assert_allclose(heads[b][1], ref.intercept_, atol=2e-4, rtol=1e-3)
    batch = cv_losses(h, y, [BIN] * 4, (0.05, 1.0), 3, 0)
    for b in range(4):
        np.testing.assert_allclose(batch[b], cv_losses(h, y[:, [b]], [BIN], (0.05, 1.0), 3, 0)[0], rtol=1e-6)


def test_absent_and_single_classes():
    h, _ = _problem()
    y = np.zeros((h.shape[0], 2))
    y[::2, 0] = 2.0  # classes 0 and 2 of three: class 1 absent
    y[:, 1] = 1.0  # a binary task with one class labelled: its smoothed prior, no weights
    (w, b), (w1, b1) = fit_heads(h, y, [CLS, BIN], 1.0)
    assert b[1] == ABSENT_BIAS and not w[1].any()
    n = h.shape[0]
    assert not w1.any() and b1[0] == pytest.approx(np.log((n + 1.0) / 1.0), rel=1e-5)


def test_cv_losses_equal_a_brute_force_cross_validation():
    """Each fold refitted with scikit-learn: held-out loss over the base rate's held-out loss."""
    h, y = _problem(seed=3)
    cs, folds = (0.02, 0.5, 4.0), 3
    got = cv_losses(h, y, [BIN, CLS, REG], cs, folds, seed=7)
    ids = fold_ids(h.shape[0], folds, 7)
    for b, task in enumerate([BIN, CLS, REG]):
        lab = ~np.isnan(y[:, b])
        for j, c in enumerate(cs):
            model = base = 0.0
            for f in range(folds):
                tr, te = lab & (ids != f), lab & (ids == f)
                yt, ye = y[tr, b], y[te, b]
                if task.kind == "regression":
                    pred = Ridge(alpha=1.0 / c).fit(h[tr], yt).predict(h[te])
                    model += ((pred - ye) ** 2).sum()
                    base += ((yt.mean() - ye) ** 2).sum()
                    continue
                k = 2 if task.kind == "binary" else 3
                prob = LogisticRegression(C=c, tol=1e-12, max_iter=100_000).fit(h[tr], yt).predict_proba(h[te])
                model += -np.log(prob[np.arange(len(ye)), ye.astype(int)]).sum()
                prior = (np.bincount(yt.astype(int), minlength=k) + 1.0) / (len(yt) + k)
                base += -np.log(prior[ye.astype(int)]).sum()
            assert got[b, j] == pytest.approx(model / base, rel=1e-4)


def test_choose_c_is_the_argmin_of_the_mean_over_tasks():
    cs = (0.1, 1.0, 10.0)
    losses = np.array([[0.9, 0.5, 0.7], [0.6, 0.8, 0.9], [np.nan, np.nan, np.nan]])  # means 0.75, 0.65, 0.8
    assert choose_c(losses, cs) == 1.0
    assert choose_c(np.array([[0.5, 0.5, 0.6]]), cs) == 0.1  # a tie: the stronger penalty
    assert choose_c(np.full((2, 3), np.nan), cs) == 0.1  # nothing to score: the strongest
    brute = min(cs, key=lambda c: np.nanmean(losses[:2, cs.index(c)]))
    assert choose_c(losses, cs) == brute
