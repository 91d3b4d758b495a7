import importlib.util
import subprocess
import sys

from taskgrouping import keys
from taskgrouping.methods.swola import SwolaSettings
from taskgrouping.models.train import TrainSettings


def _module(path, name, text):
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_code_version_follows_the_source(tmp_path):
    a = _module(tmp_path / "a.py", "mod_a", "X = 1\n")
    b = _module(tmp_path / "b.py", "mod_b", "X = 1\n")
    c = _module(tmp_path / "c.py", "mod_c", "X = 2\n")
    assert keys.code_version(a) == keys.code_version(b) != keys.code_version(c)


def test_keys_depend_on_what_they_say():
    s = SwolaSettings()
    base = keys.probe_key("data", "t", "labels", s, 0)
    assert base == keys.probe_key("data", "t", "labels", SwolaSettings(), 0)
    assert base != keys.probe_key("data", "t", "labels2", s, 0)
    assert base != keys.probe_key("data2", "t", "labels", s, 0)
    assert base != keys.probe_key("data", "t", "labels", SwolaSettings(head="shared"), 0)
    # normalisation and blocking change distances or memory, not probes
    assert base == keys.probe_key("data", "t", "labels", SwolaSettings(normalise="none", block=8), 0)
    assert keys.pairs_key(s, 0) != keys.pairs_key(SwolaSettings(normalise="none"), 0)
    assert keys.pairs_key(s, 0) == keys.pairs_key(SwolaSettings(block=8), 0)
    g = keys.group_key("d", [("a", "1"), ("b", "2")], TrainSettings(), 0)
    assert g == keys.group_key("d", [("b", "2"), ("a", "1")], TrainSettings(), 0)  # a set of members
    assert g != keys.group_key("d", [("a", "1"), ("b", "2")], TrainSettings(lr=0.01), 0)


def test_keys_are_equal_in_another_process():
    code = ("from taskgrouping import keys; from taskgrouping.methods.swola import SwolaSettings;"
            "print(keys.probe_key('data', 't', 'l', SwolaSettings(), 3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == keys.probe_key("data", "t", "l", SwolaSettings(), 3)


def test_batched_keys_equal_the_single_ones():
    """The keys of many tasks at once (the shared parts encoded once) are those made one by one."""
    from taskgrouping.hashing import encoded, stable_hash
    from taskgrouping.methods.swola import SwolaSettings

    s = SwolaSettings(hidden=16, head_c=0.5)
    fps = {"a": "fp1", "b": "fp2"}
    assert keys.probe_keys("dk", fps, ["a", "b"], s, 3) == {t: keys.probe_key("dk", t, fps[t], s, 3) for t in fps}
    assert keys.head_cv_keys("dk", fps, ["b"], s, 3) == {"b": keys.head_cv_key("dk", "b", "fp2", s, 3)}
    part = {"z": 1, "a": [1.5, None]}
    assert stable_hash("x", encoded(part), 2) == stable_hash("x", part, 2) != stable_hash("x", part, 3)
