import numpy as np
import polars as pl
import pytest

from taskgrouping.cli import main


def _csv(tmp_path, n=40):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.csv"
    pl.DataFrame({"f": rng.standard_normal(n), "y_a": rng.integers(0, 2, n),
                  "y_b": rng.integers(0, 2, n)}).write_csv(path)
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--method", "magic"], "unknown --method 'magic'; known methods: swola"),
    (["--selector", "kmeans"], "unknown --selector 'kmeans'; known selectors: spectral, gat"),
    (["--samples", "0"], "--samples must be a positive integer, got 0"),
    (["--groups", "3"], "--groups 3 is outside 1..2 (the number of tasks)"),
    (["--groups", "0"], "--groups must be at least 1 or 'auto', got 0"),
    (["--tasks", "y_a,y_a"], "--tasks: 'y_a' is named twice"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
])
def test_bad_arguments_exit_2_with_one_line_and_no_store(tmp_path, capsys, args, message):
    store = tmp_path / "store"
    rc = main(["run", "--data", _csv(tmp_path), "--store", str(store), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1
    assert not store.exists()


def test_bad_file_exit_2(tmp_path, capsys):
    rc = main(["run", "--data", str(tmp_path / "missing.parquet"), "--store", str(tmp_path / "s")])
    assert rc == 2 and "missing.parquet: no such file" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--groups", "many"])
    assert exc.value.code == 2
    assert "--groups must be an integer or 'auto', got 'many'" in capsys.readouterr().err
