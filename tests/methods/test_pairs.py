from itertools import combinations

import numpy as np

from taskgrouping.methods.pairs import PairCache, cover_rows, incremental_matrix, pair_key


def _missing(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros((n, n), dtype=bool)
    for i, j in pairs:
        m[i, j] = m[j, i] = True
    return m


def test_cover_rows_picks_the_new_tasks():
    new = [6, 7]
    missing = [(i, j) for i, j in combinations(range(8), 2) if i in new or j in new]
    assert cover_rows(_missing(8, missing)) == new


def test_cover_rows_covers_every_pair():
    missing = [(0, 1), (2, 3), (1, 4), (3, 4)]
    rows = set(cover_rows(_missing(5, missing)))
    assert all(i in rows or j in rows for i, j in missing)
    assert cover_rows(_missing(5, [])) == []


def test_cover_rows_of_a_fresh_matrix_covers_all_pairs():
    rows = cover_rows(~np.eye(30, dtype=bool))
    assert len(rows) == 29  # one task's pairs are all covered by the others


def _distances(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A random symmetric matrix with zero diagonal and one key per task."""
    full = np.random.default_rng(seed).random((n, n))
    full = full + full.T
    np.fill_diagonal(full, 0)
    return full, [f"k{i}" for i in range(n)]


def test_incremental_matrix_equals_full_and_computes_only_missing_rows():
    full, keys = _distances(7, 0)
    old = list(combinations(range(5), 2))  # 5 old tasks
    cache = PairCache().with_pairs(keys, np.array([i for i, _ in old]), np.array([j for _, j in old]),
                                   np.array([full[i, j] for i, j in old]))
    asked: list[list[int]] = []

    def compute(rows):
        asked.append(rows)
        return full[rows]

    d, cache, n_missing = incremental_matrix(keys, cache, compute)
    np.testing.assert_allclose(d, full)
    assert n_missing == 7 * 6 // 2 - 10 and asked == [[5, 6]]
    assert len(cache) == 21
    assert cache.as_dict() == {pair_key(keys[i], keys[j]): full[i, j] for i, j in combinations(range(7), 2)}
    d2, cache2, n2 = incremental_matrix(keys, cache, compute)  # everything cached now
    np.testing.assert_allclose(d2, full)
    assert n2 == 0 and len(asked) == 1 and cache2 is cache


def test_lookup_ignores_other_keys_and_order():
    cache = PairCache().with_pairs(["a", "b", "c", "z"], np.array([0, 1, 0]), np.array([1, 2, 3]),
                                   np.array([1.0, 2.0, 9.0]))
    d, known = cache.lookup(["c", "b", "a", "new"])
    assert d[2, 1] == d[1, 2] == 1.0 and d[0, 1] == 2.0
    expected = np.eye(4, dtype=bool)
    expected[0, 1] = expected[1, 0] = expected[1, 2] = expected[2, 1] = True  # (a, c) was never cached
    np.testing.assert_array_equal(known, expected)


def test_a_mostly_new_matrix_is_computed_whole():
    """When most rows are new, all rows are asked for (the symmetric path), and every pair is cached."""
    full, keys = _distances(6, 1)
    asked: list[list[int]] = []
    d, cache, n = incremental_matrix(keys, PairCache(), lambda rows: asked.append(rows) or full[rows])
    assert asked == [list(range(6))] and n == 15 and len(cache) == 15
    np.testing.assert_allclose(d, full)


def test_positions_agree_with_list_index_and_name_a_missing_item():
    import pytest

    from taskgrouping.methods.base import positions

    rng = np.random.default_rng(3)
    items = [f"t{int(i)}" for i in rng.integers(0, 40, size=60)]  # repeats: the first occurrence counts
    wanted = [items[int(i)] for i in rng.integers(0, len(items), size=100)]
    assert positions(items, wanted) == [items.index(w) for w in wanted]
    assert positions(items, []) == []
    with pytest.raises(ValueError, match="'nope' is not in the list"):
        positions(items, ["t0" if "t0" in items else items[0], "nope"])
