"""The Prefect UI as a user opens it (issue 26): headless Chromium loads the flow run's page and its
artifacts from a server with the UI on, and the groups table, the report (its heatmap inline) and
the heatmap image render in the page's DOM. Screenshots are saved under the test's folder.

Chromium is Debian's ``chromium`` (``.ci/run`` installs it when missing); the test fails, never
skips, without it."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from taskgrouping.flows.server import local_server

ARGS = ["--samples", "128", "--hidden", "8", "--max-epochs", "4", "--workers", "1", "--json", "--evaluate", "grouped"]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is needed: apt-get install chromium (.ci/run installs it)")


def _open(browser, url, shot):
    """The page's DOM after its scripts ran (up to 20 s of virtual time), and a screenshot of it."""
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1100",
            "--virtual-time-budget=20000"]
    subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert shot.stat().st_size > 10_000, f"{shot}: an empty screenshot"
    return dom


@pytest.mark.flow
def test_the_ui_shows_the_groups_the_report_and_the_heatmap(tmp_path):
    browser = _chromium()
    store = tmp_path / "store"
    with local_server(tmp_path / "home", ui=True) as api:
        env = dict(os.environ, PREFECT_API_URL=api)
        done = subprocess.run([sys.executable, "-m", "taskgrouping", "run", "--data",
                               "builtin:synthetic:tasks=6,groups=2,samples=300", "--store", str(store), *ARGS],
                              env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        import json

        summary = json.loads(done.stdout)
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from taskgrouping.tasks.report import artifact_suffix

        suffix = artifact_suffix(summary)
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            arts = {a.key.removesuffix(f"-{suffix}").removeprefix("taskgrouping-"): a
                    for a in client.read_artifacts() if a.key and a.key.endswith(suffix)}
        ui = api.removesuffix("/api")
        run_page = _open(browser, f"{ui}/runs/flow-run/{arts['groups'].flow_run_id}", tmp_path / "flow-run.png")
        groups = _open(browser, f"{ui}/artifacts/artifact/{arts['groups'].id}", tmp_path / "groups.png")
        report = _open(browser, f"{ui}/artifacts/artifact/{arts['report'].id}", tmp_path / "report.png")
        heatmap = _open(browser, f"{ui}/artifacts/artifact/{arts['heatmap'].id}", tmp_path / "heatmap.png")
    assert "regroup builtin:synthetic:tasks=6,groups=2,samples=300" in run_page
    # the groups table: one row per group, its tasks in a cell
    for members in summary["groups"]:
        assert re.search(r"<td[^>]*>.*?" + re.escape(", ".join(members)), groups, re.S), members
    # the report: its headings, and the heatmap as an image in the page (not a broken link)
    assert "taskgrouping run " + summary["run_id"] in report and "Groups</h2>" in report
    assert re.search(r'<img[^>]+src="data:image/png;base64,', report)
    assert re.search(r'<img[^>]+src="data:image/png;base64,', heatmap)
    print("screenshots:", *sorted(p.name for p in tmp_path.glob("*.png")))
