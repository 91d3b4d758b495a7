"""The README's Python example runs as written (it cannot rot)."""

import re
from pathlib import Path


def test_readme_from_python_block_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    tg, chosen = namespace["tg"], namespace["chosen"]
    assert len(tg.groups_) >= 2 and tg.affinity_.shape == (8, 8)
    assert sorted(t for g in chosen["groups"] for t in g) == sorted(tg.tasks_)
    assert "distance" in capsys.readouterr().out
    framed = namespace["framed"]  # the frame's columns are the features, the ID column is named
    assert framed.features_[:3] == ["customer_id", "f_0", "f_1"] and len(framed.features_) == 33
    assert [(w["column"], w["kind"]) for w in framed.warnings_] == [("customer_id", "id")]
