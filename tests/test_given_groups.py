"""``taskgrouping evaluate --groups FILE``: reading, checking and serving a grouping the user already has."""

import json

import pytest

from taskgrouping.cli import main
from taskgrouping.errors import InputError
from taskgrouping.selectors.given import check_given, given_grouping, read_groups_file

TASKS = ["y_a", "y_b", "y_c", "y_d"]


def test_json_and_csv_give_the_same_groups(tmp_path):
    j = tmp_path / "g.json"
    j.write_text(json.dumps([["y_a", "y_c"], ["y_b", "y_d"]]))
    c = tmp_path / "g.csv"
    c.write_text("task,group\ny_a,left\ny_b,right\ny_c,left\ny_d,right\n")
    assert read_groups_file(str(j)) == read_groups_file(str(c)) == [["y_a", "y_c"], ["y_b", "y_d"]]


def test_overlap_is_served_by_the_first_group_listing_the_task():
    check_given([["y_a", "y_b"], ["y_b", "y_c", "y_d"]], TASKS, overlap=True)
    g = given_grouping([["y_b", "y_a"], ["y_b", "y_c", "y_d"]], TASKS)
    assert g.groups == [["y_a", "y_b"], ["y_b", "y_c", "y_d"]]
    assert g.served == {"y_a": 0, "y_b": 0, "y_c": 1, "y_d": 1} and g.info["overlap"] is True


@pytest.mark.parametrize("groups, overlap, message", [
    ([["y_a", "y_b"], ["y_c", "y_e"]], False, "--groups: group 1 names 'y_e', which is not a task of this run "
                                              "(tasks: y_a, y_b, y_c, y_d)"),
    ([["y_a", "y_b"], ["y_c"]], False, "--groups: task 'y_d' is in no group; add it to a group, or leave it out "
                                       "with --tasks '!y_d'"),
    ([["y_a", "y_b"], ["y_b", "y_c", "y_d"]], False, "--groups: task 'y_b' is in group 0 and group 1; a task "
                                                     "belongs to one group unless --overlap is given"),
    ([["y_a", "y_b"], ["y_c", "y_d"], ["y_b", "y_a"]], True, "--groups: group 2 repeats group 0"),
])
def test_check_given_rejects_with_the_name(groups, overlap, message):
    with pytest.raises(InputError) as exc:
        check_given(groups, TASKS, overlap)
    assert str(exc.value) == message


@pytest.mark.parametrize("name, text, message", [
    ("g.json", "{\"a\": 1}", "expected a JSON list of groups"),
    ("g.json", "[[\"y_a\"], []]", "group 1 is empty"),
    ("g.json", "[[\"y_a\", 3]]", "group 0 has 3, not a task name"),
    ("g.json", "[[", "not valid JSON"),
    ("g.csv", "name,cluster\ny_a,1\n", "a CSV groups file needs the columns task and group, got name, cluster"),
    ("g.txt", "y_a", "unsupported file type '.txt'; use .json or .csv"),
])
def test_bad_groups_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_groups_file(str(path))


def _cli(capsys, *args):
    try:
        rc = main(list(args))
    except SystemExit as exc:  # argparse's own errors exit from the parser
        rc = int(exc.code)
    return rc, capsys.readouterr().err


def test_cli_rejects_bad_repeats_and_bad_groups_before_anything_is_written(tmp_path, capsys):
    store = tmp_path / "store"
    rc, err = _cli(capsys, "run", "--repeats", "0", "--store", str(store))
    assert rc == 2 and "argument --repeats: must be a positive integer, got '0'" in err and err.count("\n") == 1
    rc, err = _cli(capsys, "evaluate", "--repeats", "two", "--groups", "x.json", "--store", str(store))
    assert rc == 2 and "argument --repeats: must be a positive integer, got 'two'" in err
    data = "builtin:synthetic:tasks=4,groups=2,samples=200"
    names = [f"y_{i:02d}" for i in range(4)]
    for groups, message in (
        ([names[:2], [names[2], "y_07"]], "group 1 names 'y_07', which is not a task of this run"),
        ([names[:2], [names[2]]], "task 'y_03' is in no group"),
        ([names[:3], names[2:]], "task 'y_02' is in group 0 and group 1"),
    ):
        path = tmp_path / "groups.json"
        path.write_text(json.dumps(groups))
        rc, err = _cli(capsys, "evaluate", "--data", data, "--groups", str(path), "--store", str(store))
        assert rc == 2 and f"taskgrouping: error: --groups: {message}" in err and err.count("\n") == 1, err
    rc, err = _cli(capsys, "evaluate", "--data", data, "--groups", str(tmp_path / "none.json"), "--store", str(store))
    assert rc == 2 and "none.json: no such file" in err
    assert not store.exists()  # nothing started, nothing written


def test_python_evaluate_checks_like_the_cli(tmp_path):
    import taskgrouping

    with pytest.raises(InputError, match="groups must be a list of lists of task names"):
        taskgrouping.evaluate("y_a")
    with pytest.raises(InputError, match="--groups: group 0 names 'y_zz', which is not a task of this run"):
        taskgrouping.evaluate([["y_00", "y_zz"]], data="builtin:synthetic:tasks=4,groups=2,samples=200",
                              store=str(tmp_path / "s"))
    with pytest.raises(InputError, match="evaluate: unknown option 'selector'"):
        taskgrouping.evaluate([["y_00"]], selector="network")
    assert not (tmp_path / "s").exists()
