"""Store integrity: every file sealed with its SHA-256; damage is detected on read, reported, never used."""

import hashlib
import json
import logging
import pickle

import numpy as np
import pytest

from taskgrouping.cli import main
from taskgrouping.data.builtins import synthetic
from taskgrouping.data.dataset import prepare
from taskgrouping.methods.pairs import PairCache
from taskgrouping.methods.swola import Probe
from taskgrouping.storage import Store
from taskgrouping.storage.integrity import DamagedFile, checksum_path, problem, verify_store


def _probe(seed: int = 0) -> Probe:
    rng = np.random.default_rng(seed)
    return Probe(deltas=rng.standard_normal((1, 12, 4)).astype(np.float32), labelled=np.arange(12) % 4 != 0)


def _store(tmp_path) -> Store:
    st = Store(tmp_path / "store")
    st.write_prepared("d", prepare(synthetic(tasks=3, groups=1, samples=80), 0, 20))
    st.write_probe("p1", _probe(1), {"task": "a"})
    st.write_probe("p2", _probe(2), {"task": "b"})
    st.write_pairs("c", PairCache().with_pairs(["p1", "p2"], np.array([0]), np.array([1]), np.array([0.5])))
    return st


def test_every_write_is_sealed_in_sha256sum_format(tmp_path):
    st = _store(tmp_path)
    path = st.probe_path("p1")
    side = checksum_path(path)
    digest, name = side.read_text().split()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() and name == path.name
    checked, damaged = verify_store(st.root)
    assert damaged == [] and checked == 6  # features, labels, meta, two probes, the pair cache
    assert not list(st.root.rglob("*.tmp"))


def test_a_truncated_probe_is_reported_counted_absent_and_never_read(tmp_path, caplog):
    st = _store(tmp_path)
    path = st.probe_path("p1")
    path.write_bytes(path.read_bytes()[:-40])
    with caplog.at_level(logging.WARNING, logger="taskgrouping"):
        assert not st.has_probe("p1")
    assert f"damaged store file {path}: checksum mismatch" in caplog.text
    with pytest.raises(DamagedFile, match="checksum mismatch"):
        st.read_probe("p1")
    assert st.has_probe("p2")
    st.write_probe("p1", _probe(1), {"task": "a"})  # recomputed: intact again
    assert st.has_probe("p1") and problem(path) is None


def test_hand_edited_json_and_an_unsealed_file_are_detected(tmp_path):
    st = _store(tmp_path)
    meta = st.dataset_dir("d") / "meta.json"
    edited = json.loads(meta.read_text()) | {"seed": 7}
    meta.write_text(json.dumps(edited))
    assert not st.has_prepared("d")
    with pytest.raises(DamagedFile, match="meta.json: checksum mismatch"):
        st.read_prepared("d")
    checksum_path(st.probe_path("p2")).unlink()  # as if its writer died before sealing it
    assert not st.has_probe("p2")
    assert "no checksum" in (problem(st.probe_path("p2")) or "")


def test_a_damaged_pair_cache_is_dropped_so_every_pair_is_computed_again(tmp_path):
    st = _store(tmp_path)
    assert len(st.read_pairs("c")) == 1
    path = st.pairs_path("c")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert len(st.read_pairs("c")) == 0


def test_damaged_file_errors_cross_process_boundaries():
    err = pickle.loads(pickle.dumps(DamagedFile(__import__("pathlib").Path("/s/x.parquet"), "checksum mismatch")))
    assert isinstance(err, DamagedFile) and str(err) == "damaged store file /s/x.parquet: checksum mismatch"


def test_verify_command_clean_damaged_and_missing_store(tmp_path, capsys):
    st = _store(tmp_path)
    assert main(["verify", "--store", str(st.root)]) == 0
    assert "6 files checked" in capsys.readouterr().err
    probe = st.probe_path("p2")
    probe.write_bytes(probe.read_bytes()[:10])
    checksum_path(st.probe_path("p1")).unlink()
    orphan = checksum_path(st.dataset_dir("d") / "gone.parquet")
    orphan.write_text("0" * 64 + "  gone.parquet\n")
    assert main(["verify", "--store", str(st.root)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.startswith("damaged: ") for line in out)
    assert any(str(probe) in line and "checksum mismatch" in line for line in out)
    assert any("no checksum" in line for line in out) and any("a file that is missing" in line for line in out)
    assert main(["verify", "--store", str(st.root), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == 6 and len(report["damaged"]) == 3
    assert main(["verify", "--store", str(tmp_path / "nowhere")]) == 2
    assert "--store" in capsys.readouterr().err


def _count_hashes(monkeypatch) -> list[int]:
    """Count SHA-256 computations of store files (a file's chunks, or bytes in memory)."""
    from taskgrouping.storage import integrity

    calls = [0]
    real_sha = integrity.hashlib.sha256

    class Counting:
        @staticmethod
        def sha256(data=b""):
            calls[0] += 1
            return real_sha(data)

    monkeypatch.setattr(integrity, "hashlib", Counting)
    return calls


def test_a_sealed_file_is_read_without_hashing_until_it_changes(tmp_path, monkeypatch):
    st = _store(tmp_path)
    path = st.probe_path("p1")
    calls = _count_hashes(monkeypatch)
    assert st.has_probe("p1")
    np.testing.assert_array_equal(st.read_probe("p1").deltas, _probe(1).deltas)
    assert calls[0] == 0  # stamped at the seal: trusted
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, written right after the seal was checked
    path.write_bytes(bytes(data))
    assert not st.has_probe("p1") and calls[0] > 0  # a changed file is hashed
    with pytest.raises(DamagedFile, match="checksum mismatch"):
        st.read_probe("p1")


def test_a_copied_store_is_hashed_once_then_trusted(tmp_path, monkeypatch):
    import shutil

    st = _store(tmp_path)
    copy = Store(tmp_path / "copy")
    shutil.copytree(st.root, copy.root)  # copy2: times kept, but every copy has a new status-change time
    calls = _count_hashes(monkeypatch)
    assert copy.has_probe("p1") and calls[0] == 1
    np.testing.assert_array_equal(copy.read_probe("p1").deltas, _probe(1).deltas)
    assert copy.has_probe("p1") and calls[0] == 1  # stamped again after it matched
    copy.read_probe("p2")
    copy.read_probe("p2")
    assert calls[0] == 2


def test_verify_hashes_every_file_even_when_its_stamp_matches(tmp_path):
    import os

    st = _store(tmp_path)
    path = st.probe_path("p2")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    stamp = os.stat(path).st_ctime_ns
    os.utime(checksum_path(path), ns=(stamp, stamp))  # damage no time records (a failing disk, say)
    assert problem(path) is None  # trusted on read
    _, damaged = verify_store(st.root)
    assert damaged == [(path, "checksum mismatch (truncated, corrupted or edited since it was written)")]
