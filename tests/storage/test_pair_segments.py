"""The pair cache is append-only: every run adds its own segment, compaction folds them, nothing is lost."""

import multiprocessing

import numpy as np

from taskgrouping.methods.pairs import PairCache
from taskgrouping.storage import Store
from taskgrouping.storage import store as store_module


def _pairs(names, i, j, v):
    return PairCache().with_pairs(names, np.array(i), np.array(j), np.array(v, dtype=float))


def test_segments_add_up_and_compaction_keeps_the_newest_value(tmp_path):
    st = Store(tmp_path)
    st.write_pairs("k", _pairs(["a", "b", "c"], [0], [1], [1.0]))
    st.add_pairs("k", _pairs(["b", "c"], [0], [1], [2.0]))
    st.add_pairs("k", _pairs(["a", "b"], [1], [0], [3.0]))  # the same pair again, newer, reversed
    assert len(st.pair_segments("k")) == 2
    assert st.read_pairs("k").as_dict() == {("a", "b"): 3.0, ("b", "c"): 2.0}
    assert st.compact_pairs("k") == 2 and st.pair_segments("k") == []
    assert st.read_pairs("k").as_dict() == {("a", "b"): 3.0, ("b", "c"): 2.0}
    assert len(st.read_pairs("k")) == 2  # one entry per pair after compaction
    from taskgrouping.storage.integrity import verify_store

    assert verify_store(tmp_path)[1] == []  # no orphan checksum left by the removed segments


def test_a_damaged_segment_is_dropped_not_trusted(tmp_path):
    st = Store(tmp_path)
    st.add_pairs("k", _pairs(["a", "b"], [0], [1], [1.0]))
    st.add_pairs("k", _pairs(["a", "c"], [0], [1], [2.0]))
    seg = st.pair_segments("k")[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert set(st.read_pairs("k").as_dict()) == {("a", "c")}  # the damaged segment's pair is recomputed


def _writer(root, who, n, segments_max):
    import os
    import traceback

    try:
        _write(root, who, n, segments_max)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    # skip interpreter teardown: native thread pools (Arrow's) can abort a spawned child at exit,
    # after its work is done, which would read as a failure of the store
    os._exit(0)


def _write(root, who, n, segments_max):
    store_module.PAIR_SEGMENTS_MAX = segments_max  # compact often, racing the other writers
    st = Store(root)
    for k in range(n):
        st.add_pairs("k", _pairs([f"{who}{k}", f"{who}{k}x"], [0], [1], [float(k)]))
        if k % 3 == 0:  # read while the other process compacts: a replaced file must never be read half old
            got = st.read_pairs("k").as_dict()
            assert all(got[tuple(sorted((f"{who}{j}", f"{who}{j}x")))] == float(j) for j in range(k + 1)
                       if tuple(sorted((f"{who}{j}", f"{who}{j}x"))) in got)


def test_concurrent_writers_and_compactions_lose_no_pair(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: the test process may hold threads
    procs = [ctx.Process(target=_writer, args=(tmp_path, who, 40, 3)) for who in "pqr"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    got = Store(tmp_path).read_pairs("k").as_dict()
    assert len(got) == 120
    assert all(got[tuple(sorted((f"{w}{k}", f"{w}{k}x")))] == float(k) for w in "pqr" for k in range(40))
