"""Wang et al.'s grouping programme (``mip --objective wang``) against brute-force enumeration.

Also on TAG's published CelebA (9 tasks) and Taskonomy (5 tasks) affinities, read from
``tests/selectors/data/`` (provenance inside each file), through ``taskgrouping select``.
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from taskgrouping.cli import main
from taskgrouping.errors import InputError
from taskgrouping.methods.base import AffinityMatrix
from taskgrouping.selectors import SelectSettings
from taskgrouping.selectors.mip import select_mip
from taskgrouping.selectors.network import InfeasibleSelection

DATA = Path(__file__).parent / "data"


def term(s: np.ndarray, group: tuple[int, ...]) -> float:
    """The programme's term of one group, written out: (1 / |g|) sum over i, k in g of S[i, k]."""
    return sum(s[i, k] for i in group for k in group) / len(group)


def partitions(items: list[int]):
    """Every set partition of ``items`` (lists of blocks)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        for b in range(len(part)):
            yield part[:b] + [[first, *part[b]]] + part[b + 1 :]
        yield [[first], *part]


def brute_partition(s: np.ndarray, b: int) -> float:
    return max(sum(term(s, tuple(g)) for g in p) for p in partitions(list(range(len(s)))) if len(p) == b)


def brute_overlap(s: np.ndarray, b: int) -> float:
    t = len(s)
    subsets = [g for r in range(1, t + 1) for g in itertools.combinations(range(t), r)]
    best = -np.inf
    for choice in itertools.combinations(subsets, b):
        if len(set().union(*choice)) == t:
            best = max(best, sum(term(s, g) for g in choice))
    return best


def _wang(s: np.ndarray, b: int, overlap: bool, **kw):
    aff = AffinityMatrix([f"t{i}" for i in range(len(s))], s, "gain")
    return select_mip(aff, b, 0, SelectSettings(objective="wang", overlap=overlap, **kw))


def _objective(s: np.ndarray, grouping) -> float:
    """The programme's objective of a returned grouping, recomputed from its groups."""
    return sum(term(s, tuple(int(m[1:]) for m in g)) for g in grouping.groups)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partitions_into_exactly_b_groups_equal_enumeration(seed):
    rng = np.random.default_rng(seed)
    t = 8 if seed == 0 else 7
    s = rng.normal(size=(t, t))
    for b in (2, 3, 4):
        g = _wang(s, b, overlap=False)
        assert len(g.groups) == b and sorted(sum(g.groups, [])) == sorted(f"t{i}" for i in range(t))
        assert _objective(s, g) == pytest.approx(brute_partition(s, b), abs=1e-7)
        assert g.objective == pytest.approx(_objective(s, g), abs=1e-9) and g.info["exact"]


@pytest.mark.parametrize("seed", [0, 1])
def test_with_overlap_b_distinct_covering_groups_equal_enumeration(seed):
    rng = np.random.default_rng(10 + seed)
    s = rng.normal(size=(5, 5)) + (2.0 if seed else 0.0)  # positive gains: overlap pays
    for b in (2, 3, 4):
        g = _wang(s, b, overlap=True)
        assert len({tuple(x) for x in g.groups}) == b  # distinct groups
        assert set(sum(g.groups, [])) == {f"t{i}" for i in range(5)}
        assert _objective(s, g) == pytest.approx(brute_overlap(s, b), abs=1e-7)


def test_size_limit_is_kept_and_infeasible_limits_are_named():
    s = np.random.default_rng(3).normal(size=(6, 6))
    g = _wang(s, 3, overlap=False, max_group_size=2)
    assert all(len(x) <= 2 for x in g.groups)
    ref = max(sum(term(s, tuple(x)) for x in p) for p in partitions(list(range(6)))
              if len(p) == 3 and all(len(x) <= 2 for x in p))
    assert _objective(s, g) == pytest.approx(ref, abs=1e-7)
    costs = (("t0", 3.0), ("t1", 1.0), ("t2", 2.0), ("t3", 1.0), ("t4", 2.5), ("t5", 1.0))
    g = _wang(s, 3, overlap=False, max_group_cost=4.0, task_costs=costs)
    cost = dict(costs)
    assert all(sum(cost[m] for m in x) <= 4.0 for x in g.groups)  # the per-group budget holds
    ref = max(sum(term(s, tuple(x)) for x in p) for p in partitions(list(range(6)))
              if len(p) == 3 and all(sum(cost[f"t{i}"] for i in x) <= 4.0 for x in p))
    assert _objective(s, g) == pytest.approx(ref, abs=1e-7)
    with pytest.raises(InfeasibleSelection, match="7 non-empty groups without overlap need at least 7 tasks"):
        _wang(s, 7, overlap=False)
    with pytest.raises(InfeasibleSelection, match="2 groups of at most 2 tasks cannot hold 6 tasks"):
        _wang(s, 2, overlap=False, max_group_size=2)
    with pytest.raises(InputError, match="--objective must be network or wang, got 'tag'"):
        SelectSettings(objective="tag")


def _published(name: str, tmp_path: Path) -> tuple[Path, list[str], np.ndarray]:
    spec = json.loads((DATA / f"{name}.json").read_text())
    assert "TAG_network_selection.ipynb" in spec["provenance"]
    tasks, values = spec["tasks"], np.array(spec["values"])
    path = tmp_path / f"{name}.csv"
    lines = ["task," + ",".join(tasks)] + [f"{t}," + ",".join(repr(float(v)) for v in row)
                                          for t, row in zip(tasks, values, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path, tasks, values


@pytest.mark.parametrize(("name", "overlap"), [("tag_taskonomy5", True), ("tag_taskonomy5", False),
                                               ("tag_celeba9", False)])
def test_published_tag_matrices_through_the_cli(name, overlap, tmp_path, capsys):
    path, tasks, s = _published(name, tmp_path)
    for b in (2, 3, 4):
        args = ["select", "--affinity", str(path), "--groups", str(b), "--selector", "mip", "--objective", "wang",
                "--json"] + ([] if overlap else ["--no-overlap"])
        assert main(args) == 0
        out = json.loads(capsys.readouterr().out)
        got = sum(term(s, tuple(tasks.index(m) for m in g)) for g in out["groups"])
        ref = brute_overlap(s, b) if overlap else brute_partition(s, b)
        assert len(out["groups"]) == b and got == pytest.approx(ref, rel=1e-9), (b, out["groups"])


def test_wang_needs_mip(tmp_path, capsys):
    path, _, _ = _published("tag_taskonomy5", tmp_path)
    assert main(["select", "--affinity", str(path), "--selector", "network", "--objective", "wang"]) == 2
    assert "--objective wang is a mip objective; --selector network does not take it" in capsys.readouterr().err
