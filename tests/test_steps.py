from itertools import combinations

from taskgrouping.tasks.steps import cover_rows


def test_cover_rows_picks_the_new_tasks():
    new = [6, 7]
    missing = [(i, j) for i, j in combinations(range(8), 2) if i in new or j in new]
    assert cover_rows(missing, 8) == new


def test_cover_rows_covers_every_pair():
    missing = [(0, 1), (2, 3), (1, 4), (3, 4)]
    rows = set(cover_rows(missing, 5))
    assert all(i in rows or j in rows for i, j in missing)
    assert cover_rows([], 5) == []
