"""The README's "Using the models elsewhere" block runs as written, on a real export (it cannot rot)."""

import json
import re
from pathlib import Path

import numpy as np
import polars as pl

from taskgrouping.cli import main


def test_readme_using_the_models_elsewhere_block_runs(prefect_api, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(5)
    n = 300
    x = rng.standard_normal((n, 3))
    pl.DataFrame({"customer_id": np.arange(n), "f_0": x[:, 0], "f_1": x[:, 1], "f_2": x[:, 2],
                  "y_a": (x[:, 0] > 0).astype(int), "y_b": (x[:, 0] > 0.2).astype(int),
                  "y_size": 2 * x[:, 1] + 0.1 * rng.standard_normal(n)}).write_csv(tmp_path / "customers.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--data", "customers.csv", "--samples", "64", "--hidden", "8", "--max-epochs", "5",
                 "--workers", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(["export", "--run", summary["run_id"], "--store", "taskgrouping-store", "--out", "exported/"]) == 0
    capsys.readouterr()

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("**Using the models elsewhere.**", 1)[1].split("**History.**", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (Using the models elsewhere)", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    index = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert index["setting"] == summary["recommended"] and len(printed) == len(index["models"])
    assert all(line.startswith(index["setting"]) and "(300,)" in line for line in printed)
    last = namespace["predictions"]
    assert all(np.array_equal(last[t], namespace["same"][t]) for t in last)
