"""The benchmark of issue #8 (bench/run.py) in its smallest configuration.

Benchmarks are not timed tests: this only checks that one command starts the stand-in, the
portal, the naive baseline and the load, and prints the table with every ratio, its target and
a verdict. Whether the targets are met is for bench/README.md, measured on a quiet machine.
"""

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from support.leaks import secret
from support.paths import LOG_DIR, ROOT

pytestmark = pytest.mark.slow
RATIOS = ("R1", "R2a", "R2b", "R3a", "R3b", "R4", "R5a", "R5b", "R7", "R8", "R9")


def test_the_smallest_benchmark_prints_every_ratio(tmp_path):
    password = secret(f"bench-{uuid.uuid4().hex}")  # the servers' logs must never show it
    report = tmp_path / "bench.json"
    args = ["--smoke", "--json", str(report), "--log-dir", str(LOG_DIR / "bench")]
    result = subprocess.run(
        [sys.executable, "bench/run.py", *args, "--password", password],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) == 6 and cells[0] in RATIOS:
            rows[cells[0]] = dict(
                zip(("what", "value", "target", "result"), cells[1:5], strict=True)
            )
    assert sorted(rows) == sorted(RATIOS), result.stdout
    assert rows["R3a"]["target"] == "= 3"  # ONE_ACCOUNT_PER_PERSON: the lookup is a third call
    for ratio, row in rows.items():
        assert row["target"], ratio
        assert row["result"] in ("PASS", "FAIL", "n/a"), (ratio, row)
    unmeasured = [ratio for ratio, row in rows.items() if row["value"] == "n/a"]
    if unmeasured:  # allowed only when the run says why (a server that would not start, ...)
        assert "note:" in result.stdout, (unmeasured, result.stdout)

    saved = json.loads(report.read_text())
    assert [row["id"] for row in saved["rows"]] == list(RATIOS)
    assert saved["machine"]["nproc"] >= 1
    # The footer names the interpreter: the CPU-bound ratios depend on how it was built.
    interpreter = os.path.realpath(sys._base_executable)
    assert saved["machine"]["interpreter"] == interpreter
    assert f"({interpreter})" in result.stdout


def test_python_runs_the_benchmark_under_another_interpreter_from_a_venv_of_its_own(tmp_path):
    report = tmp_path / "bench.json"
    interpreter = os.path.realpath(sys._base_executable)
    args = ["--smoke", "--json", str(report), "--python", interpreter]
    result = subprocess.run(
        [sys.executable, "bench/run.py", *args, "--log-dir", str(LOG_DIR / "bench-python")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,  # the first time, the venv is made and the requirements installed
    )
    assert result.returncode == 0, result.stderr[-3000:]
    machine = json.loads(report.read_text())["machine"]
    venv = ROOT / ".venv-bench"
    assert machine["executable"].startswith(f"{venv}/"), machine
    assert machine["interpreter"] == interpreter
    assert "R9" in result.stdout

    missing = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--python", str(tmp_path / "python9")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0
    assert "no such interpreter" in missing.stderr


def test_the_stand_ins_timer_is_never_early_fires_from_a_timerfd_and_closes_it():
    """Its answers leave at their latency: on time (the timerfd), never early, no fd left."""
    from bench.keygen_standin import sleep_until

    def descriptors() -> list[str]:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # listdir's own, closed by now
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
        return sorted(links)

    async def look_soon() -> list[str]:
        await asyncio.sleep(0.001)
        return descriptors()

    async def main() -> list[str]:
        seen = []
        for delay in (-0.01, 0.0, 0.002, 0.015):
            due = time.monotonic() + delay
            watch = asyncio.create_task(look_soon()) if delay > 0.001 else None
            await sleep_until(due)
            assert time.monotonic() >= due, delay
            if watch:
                seen += await watch
        return seen

    before = descriptors()
    during = asyncio.run(main())
    assert "anon_inode:[timerfd]" in during
    assert descriptors() == before
