import numpy as np
import pyarrow as pa
import pytest
import torch

from taskgrouping.data.builtins import synthetic
from taskgrouping.data.dataset import prepare
from taskgrouping.methods.swola import Probe
from taskgrouping.storage import AFFINITY_SCHEMA, Store, atomic_write_table, read_table_checked


def test_prepared_roundtrip_with_missing_labels(tmp_path):
    ds = synthetic(tasks=3, groups=1, samples=100, missing=0.2)
    data = prepare(ds, 0, 20)
    st = Store(tmp_path)
    st.write_prepared("k", data)
    back = st.read_prepared("k")
    np.testing.assert_array_equal(back.x, data.x)
    np.testing.assert_array_equal(np.isnan(back.y), np.isnan(data.y))
    np.testing.assert_array_equal(back.probe_idx, data.probe_idx)
    one = st.read_prepared("k", tasks=[ds.task_names[2]])
    np.testing.assert_array_equal(np.isnan(one.y[:, 0]), np.isnan(data.y[:, 2]))
    assert one.tasks[0].name == ds.task_names[2] and one.ground_truth == ds.ground_truth


def test_probe_roundtrip_and_no_temp_files(tmp_path):
    st = Store(tmp_path)
    p = Probe(deltas=np.random.default_rng(0).standard_normal((2, 10, 6)).astype(np.float32),
              labelled=np.arange(10) % 3 != 0)
    st.write_probe("abc", p, {"task": "t"})
    q = st.read_probe("abc")
    np.testing.assert_array_equal(q.deltas, p.deltas)
    np.testing.assert_array_equal(q.labelled, p.labelled)
    assert sorted(f.name for f in (tmp_path / "probes").iterdir()) == [".lock", "abc.arrow", "abc.arrow.sha256"]


def test_a_damaged_probe_is_refused_by_name(tmp_path):
    from taskgrouping.storage.integrity import DamagedFile

    st = Store(tmp_path)
    st.write_probe("abc", Probe(deltas=np.ones((1, 4, 3), np.float32), labelled=np.ones(4, bool)), {"task": "t"})
    path = tmp_path / "probes" / "abc.arrow"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DamagedFile, match="abc.arrow"):
        st.read_probe("abc")


def test_schema_checked_on_write_and_read(tmp_path):
    bad = pa.table({"task_a": ["a"], "task_b": ["b"], "value": [1.0]})
    with pytest.raises(ValueError, match="column 'kind' missing"):
        atomic_write_table(tmp_path / "x.parquet", bad, AFFINITY_SCHEMA)
    assert not (tmp_path / "x.parquet").exists()
    import pyarrow.parquet as pq

    from taskgrouping.storage.integrity import seal

    pq.write_table(pa.table({"task_a": ["a"], "task_b": ["b"], "value": ["high"], "kind": ["gain"]}),
                   tmp_path / "y.parquet")
    seal(tmp_path / "y.parquet")  # intact, but not of the expected schema
    with pytest.raises(ValueError, match="column 'value' has type string"):
        read_table_checked(tmp_path / "y.parquet", AFFINITY_SCHEMA)


def test_model_saved_as_safetensors(tmp_path):
    st = Store(tmp_path)
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    heldout = {"t": {"selection": (np.array([4, 9]), np.array([0.5, 0.25], np.float32)),
                     "test": (np.array([1]), np.array([2.0], np.float32))}}
    st.write_model("g", state, [{"task": "t", "kind": "binary", "val_loss": 0.1, "sel_loss": 0.15, "test_loss": 0.2,
                                 "metric_name": "auroc", "metric": 0.9}], {"epochs": 3, "heldout": heldout})
    assert st.has_model("g")
    back = st.read_model_heldout("g")["t"]
    assert back["selection"][0].tolist() == [4, 9] and back["selection"][1].tolist() == [0.5, 0.25]
    assert back["test"][0].tolist() == [1] and st.read_model_info("g") == {"epochs": 3}
    assert torch.equal(st.read_model_state("g")["w"], state["w"])
    assert st.read_model_results("g")[0]["metric"] == 0.9


def test_pairs_cache_roundtrip(tmp_path):
    import numpy as np

    from taskgrouping.methods.pairs import PairCache

    st = Store(tmp_path)
    assert len(st.read_pairs("p")) == 0
    cache = PairCache().with_pairs(["b", "a", "c"], np.array([1, 1]), np.array([0, 2]), np.array([1.5, 0.25]))
    st.write_pairs("p", cache)
    assert st.read_pairs("p").as_dict() == {("a", "b"): 1.5, ("a", "c"): 0.25}


def test_an_affinity_read_again_comes_from_memory_until_the_file_changes(tmp_path):
    from taskgrouping.methods.base import AffinityMatrix
    from taskgrouping.storage.integrity import DamagedFile

    st = Store(tmp_path / "s")
    rng = np.random.default_rng(0)
    d = rng.random((5, 5))
    aff = AffinityMatrix([f"t{i}" for i in range(5)], d + d.T, "distance")
    path = st.write_affinity(st.affinity_path("k"), aff)
    import pyarrow.parquet as pq

    plain = pq.read_table(path)  # as any reader sees it: names as strings, not dictionaries
    assert [str(f.type) for f in plain.schema] == ["string", "string", "double", "string"]
    assert plain.column("task_a").to_pylist()[:6] == ["t0"] * 5 + ["t1"]
    first = st.read_affinity(path)
    np.testing.assert_array_equal(first.values, aff.values)
    assert first.tasks == aff.tasks and first.kind == "distance"
    first.values[0, 1] = -1.0  # a caller's change stays its own
    assert st.read_affinity(path).values[0, 1] == aff.values[0, 1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # changed on disk: read (and found damaged), not served from memory
    with pytest.raises(DamagedFile):
        st.read_affinity(path)


def test_stored_probes_are_read_when_asked_for_and_give_the_same_distances(tmp_path, monkeypatch):
    from taskgrouping.methods.swola import SwolaSettings, distances_from_probes, probe_tasks
    from taskgrouping.storage.store import StoredProbes

    data = prepare(synthetic(tasks=6, groups=2, samples=120), 0, 60)
    x, y = data.x[data.probe_idx], data.y[data.probe_idx]
    s = SwolaSettings(hidden=8)
    probes = probe_tasks(x, y, data.tasks, s, 0)
    st = Store(tmp_path / "s")
    for i, p in enumerate(probes):
        st.write_probe(f"k{i}", p, {"task": data.tasks[i].name})
    reads: list[str] = []
    real = Store.read_probe
    monkeypatch.setattr(Store, "read_probe", lambda self, key: reads.append(key) or real(self, key))
    lazy = StoredProbes(st, [f"k{i}" for i in range(6)])
    assert len(lazy) == 6 and not reads
    np.testing.assert_array_equal(lazy[2].deltas, probes[2].deltas)
    assert [p.labelled.sum() for p in lazy[1:3]] == [p.labelled.sum() for p in probes[1:3]]
    reads.clear()
    got = distances_from_probes(lazy, x, s, 0, rows=[5])
    np.testing.assert_allclose(got, distances_from_probes(probes, x, s, 0, rows=[5]), rtol=1e-12)
    assert sorted(reads) == sorted([f"k{i}" for i in range(6)] + ["k0", "k5"])  # each once, the row again
