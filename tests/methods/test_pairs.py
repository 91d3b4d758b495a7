from itertools import combinations

import numpy as np

from taskgrouping.methods.pairs import cover_rows, incremental_matrix, pair_key


def test_cover_rows_picks_the_new_tasks():
    new = [6, 7]
    missing = [(i, j) for i, j in combinations(range(8), 2) if i in new or j in new]
    assert cover_rows(missing, 8) == new


def test_cover_rows_covers_every_pair():
    missing = [(0, 1), (2, 3), (1, 4), (3, 4)]
    rows = set(cover_rows(missing, 5))
    assert all(i in rows or j in rows for i, j in missing)
    assert cover_rows([], 5) == []


def test_incremental_matrix_equals_full_and_computes_only_missing_rows():
    rng = np.random.default_rng(0)
    full = rng.random((7, 7))
    full = full + full.T
    np.fill_diagonal(full, 0)
    keys = [f"k{i}" for i in range(7)]
    cache = {pair_key(keys[i], keys[j]): full[i, j] for i, j in combinations(range(5), 2)}  # 5 old tasks
    asked: list[list[int]] = []

    def compute(rows):
        asked.append(rows)
        return full[rows]

    d, n_missing = incremental_matrix(keys, cache, compute)
    np.testing.assert_allclose(d, full)
    assert n_missing == 7 * 6 // 2 - 10 and asked == [[5, 6]]
    assert len(cache) == 21
    d2, n2 = incremental_matrix(keys, cache, compute)  # everything cached now
    np.testing.assert_allclose(d2, full)
    assert n2 == 0 and len(asked) == 1
