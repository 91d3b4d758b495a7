"""Faults injected into real runs, and what survived: the table asked for by the fault-tolerance issue.

Every run is the real CLI (``taskgrouping run --json``) in its own process group, on one
local Prefect server, on 6 synthetic tasks in 2 planted groups. Faults come from
``TASKGROUPING_FAULT`` (``src/taskgrouping/faults.py``) or from damaging store files by
hand; each faulted store is then run again and compared with an uninterrupted run.

    .venv/bin/python bench/faults.py

Writes ``bench/results/faults.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, prefect_session, write_result  # noqa: E402

from taskgrouping.faults import ENV  # noqa: E402
from taskgrouping.storage.integrity import verify_store  # noqa: E402

DATA = "builtin:synthetic:tasks=6,groups=2,samples=400,noise=0.2"
ARGS = ["--samples", "128", "--groups", "2", "--hidden", "16", "--max-epochs", "8", "--workers", "2", "--json"]


def cli(store: Path, fault: str | None = None, extra: list[str] | None = None,
        wait: bool = True) -> Any:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if fault:
        env[ENV] = fault
    cmd = [sys.executable, "-m", "taskgrouping", "run", "--data", DATA, "--store", str(store), *ARGS, *(extra or [])]
    if not wait:
        return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, start_new_session=True, capture_output=True, text=True, timeout=600)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def row(fault: str, first_rc: int | str, final: subprocess.CompletedProcess[str], ref: dict[str, Any],
        store: Path) -> dict[str, Any]:
    s = json.loads(final.stdout) if final.returncode == 0 else None
    c = s["counts"] if s else {}
    return {"fault": fault, "first": first_rc, "final": final.returncode,
            "probes": f"{c.get('probes_reused', '-')}/6", "pairs": f"{c.get('pairs_reused', '-')}/15",
            "models": f"{c.get('groups_reused', '-')}/{ref['counts']['groups_trained']}",
            "groups": bool(s and s["groups"] == ref["groups"]), "metrics": bool(s and s["metrics"] == ref["metrics"]),
            "verify": "clean" if not verify_store(store)[1] else f"{len(verify_store(store)[1])} damaged"}


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="tg-faults-"))
    rows = []
    with prefect_session(root / "prefect-home") as url:
        os.environ["PREFECT_API_URL"] = url  # every CLI run below uses this server, not one of its own
        ref_run = cli(root / "reference")
        assert ref_run.returncode == 0, ref_run.stderr
        ref = json.loads(ref_run.stdout)
        for stage, k in (("sample", 1), ("probe", 3), ("affinity", 1), ("select", 1), ("train", 4)):
            store = root / f"kill-{stage}"
            first = cli(store, f"{stage}:{k}:kill-run")
            rows.append(row(f"kill -9 of the run and its workers after {stage} item {k}", first.returncode,
                            cli(store), ref, store))
            print(rows[-1], flush=True)
        for stage in ("probe", "train"):
            store = root / f"worker-{stage}"
            done = cli(store, f"{stage}:2:kill-worker")
            rows.append(row(f"a Dask worker killed while {stage[:-1] if stage == 'probe' else stage}ing", "-",
                            done, ref, store))
            print(rows[-1], flush=True)
        store = root / "damaged"
        cli(store)
        probe = sorted((store / "probes").glob("*.parquet"))[0]
        _damage(probe, "truncate")
        rows.append(row("a truncated probe file", "-", cli(store), ref, store))
        affinity = sorted((store / "affinity").glob("*.parquet"))[0]
        _damage(affinity, "flip")
        rows.append(row("a corrupted affinity file", "-", cli(store), ref, store))
        print(rows[-2:], flush=True)
        store = root / "concurrent"
        procs = [cli(store, wait=False), cli(store, extra=["--tasks", "y_00,y_01,y_02,y_03"], wait=False)]
        outs = [p.communicate(timeout=600) for p in procs]
        both = f"{procs[0].returncode}, {procs[1].returncode}"
        rows.append(row("two concurrent runs (6 tasks and 4 of them) on one store", both,
                        subprocess.CompletedProcess([], procs[0].returncode, outs[0][0], outs[0][1]), ref, store))
        rows.append(row("... then the same run again", "-", cli(store), ref, store))
        print(rows[-2:], flush=True)
    lines = ["# Faults injected, and what survived", "", f"Machine: {machine_line()}", "",
             f"`{DATA}`, seed 0, 2 Dask workers, one Prefect server; made by `bench/faults.py`. "
             "`first`: exit status of the faulted run (-9 = SIGKILL); `final`: of the run after it (for worker "
             "faults and damaged files, the faulted run itself). Reused counts come from the final run's summary; "
             "`groups` and `metrics` compare it with an uninterrupted run; `verify` is `taskgrouping verify` "
             "afterwards.", "",
             "| fault | first | final | probes reused | pairs reused | models reused | groups match | metrics match "
             "| verify |", "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['first']} | {r['final']} | {r['probes']} | {r['pairs']} | {r['models']} | "
                     f"{'yes' if r['groups'] else 'NO'} | {'yes' if r['metrics'] else 'NO'} | {r['verify']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print("wrote", write_result("faults.md", text))


if __name__ == "__main__":
    main()
