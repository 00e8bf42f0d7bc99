"""The benchmark of issue #8, in one command: the portal against the naive baseline, one table.

    .venv/bin/python bench/run.py            # the full run (about 7 minutes)
    .venv/bin/python bench/run.py --quick    # fewer, shorter points (under a minute)

Everything runs on loopback, on free ports: the Keygen stand-in (bench/keygen_standin.py), the
portal as deployed (gunicorn with its gunicorn.conf.py, configured only by environment), the
naive baseline (bench/naive_app.py under gunicorn's default sync workers), and the load
generator (bench/loadgen.py, in this process). With two or more cores the servers under test
are pinned to one core and everything else to another.
Each scenario runs for both variants, interleaved, and every phase is bounded in time.

bench/README.md says what each ratio means; the table gives its target and PASS or FAIL.
Benchmarks are not tests: the exit status is 0 whenever the table was produced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import runpy
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PASSWORD = "bench-password-" + "x" * 8

# name -> settings of each profile. Durations in seconds, rates in signups per second.
PROFILES: dict[str, dict[str, Any]] = {
    "full": dict(
        repeats=3,
        idle_gets=20,  # paced at low_rate: 10 s
        warmup=2.0,
        low_rate=2.0,
        low_seconds=20.0,
        users=32,
        users_seconds=15.0,
        saturation_seconds=20.0,
        quota_seconds=20.0,
        stall_seconds=10.0,
        stall_naive=True,
        naive_at_quota=True,
    ),
    "quick": dict(
        repeats=1,
        idle_gets=15,
        warmup=0.75,
        low_rate=5.0,
        low_seconds=3.0,
        users=32,
        users_seconds=2.5,
        saturation_seconds=3.0,
        quota_seconds=3.0,
        stall_seconds=3.0,
        stall_naive=False,
        naive_at_quota=True,
        drain=6.0,
    ),
    # The smallest configuration, for tests/test_bench.py: every ratio, no statistics to speak of.
    "smoke": dict(
        repeats=1,
        idle_gets=5,
        warmup=0.5,
        low_rate=5.0,
        low_seconds=1.0,
        users=32,
        users_seconds=1.0,
        saturation_seconds=1.0,
        quota_seconds=1.0,
        stall_seconds=1.0,
        stall_naive=False,
        naive_at_quota=False,
        drain=3.0,
    ),
}
FLOW_TIMEOUT = 35.0  # one signup, GET to answer: more than SIGNUP_DEADLINE (20 s) + a margin
PHASE_LIMIT = 60.0  # no phase may take longer, drain included
BACKGROUND_LIMIT = 80.0  # and the quota phases' signups finished in the background, at most
PROBE_RATE = 20.0  # /healthz probes per second during the stall
PROBE_TIMEOUT = 5.0
NAIVE_WORKERS = 5  # gunicorn's (2 x cores) + 1 on a 2-core machine, sync worker class


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ensure_dependencies() -> None:
    """aiohttp is the benchmark's only dependency: install bench/requirements.txt if missing."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        if sys.prefix == sys.base_prefix:
            sys.exit("bench: aiohttp is missing; pip install -r bench/requirements.txt in a venv")
        say("installing bench/requirements.txt")
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(  # noqa: S603
            [*pip, "-r", str(BENCH / "requirements.txt")],
            check=True,
            timeout=300,
        )
        os.execv(sys.executable, [sys.executable, *sys.argv])  # noqa: S606


def run_under(python: str, argv: list[str]) -> None:
    """Run this benchmark again, servers and all, under another interpreter: from a venv of its
    own in .venv-bench/, made once with the portal's and the benchmark's requirements (again when
    they change). The CPU-bound ratios (R8, R9) depend on how the interpreter was built, and
    the one a checkout's .venv comes from need not be the one deployed (bench/README.md)."""
    base = shutil.which(python)
    if not base:
        sys.exit(f"bench: --python {python}: no such interpreter")
    base = os.path.realpath(base)
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    venv = ROOT / ".venv-bench" / f"{Path(base).name}-{digest}"
    requirements = [ROOT / "requirements.txt", BENCH / "requirements.txt"]
    wanted = hashlib.sha256(b"".join(r.read_bytes() for r in requirements)).hexdigest()
    stamp = venv / "requirements.sha256"
    if not stamp.exists() or stamp.read_text() != wanted:
        say(f"making {venv.relative_to(ROOT)} from {base}")
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)  # noqa: S603
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        pip += ["--disable-pip-version-check"]
        for requirement in requirements:
            pip += ["-r", str(requirement)]
        subprocess.run(pip, check=True, timeout=600)  # noqa: S603
        stamp.write_text(wanted)
    interpreter = str(venv / "bin" / "python")
    os.execv(interpreter, [interpreter, str(Path(__file__).resolve()), *argv])  # noqa: S606


def without_python_option(argv: list[str]) -> list[str]:
    """`argv` without --python and its value, so that the run under it does not start over."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--python":
            skip = True
        elif not item.startswith("--python="):
            kept.append(item)
    return kept


# -- Processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
        return response.read()


def http_post_json(url: str, body: dict, timeout: float = 5.0) -> dict:
    request = urllib.request.Request(  # noqa: S310 (loopback)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """CPU time of a process and all its live descendants, plus whatever they reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(root):
        fields = _proc_stat(pid)
        if fields:
            # utime, stime (fields 14, 15), cutime, cstime (16, 17); fields[] starts at 3.
            total += int(fields[11]) + int(fields[12])
            if pid == root:
                total += int(fields[13]) + int(fields[14])
    return total / ticks


def core_busy(core: int) -> float:
    """Seconds one CPU has spent busy since boot (/proc/stat), or NaN."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                ticks = [int(x) for x in line.split()[1:]]
                return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return math.nan


@dataclass
class Server:
    name: str
    args: list[str]
    env: dict[str, str]
    cwd: Path
    url: str
    health: str
    log_path: Path
    process: subprocess.Popen | None = None
    error: str | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the process's life)
        self.process = subprocess.Popen(  # noqa: S603
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self.error = f"{self.name} exited ({code}) before answering; see {self.log_path}"
                return False
            with contextlib.suppress(OSError):
                http_get(self.url + self.health, timeout=1)
                return True
            time.sleep(0.1)
        self.error = f"{self.name} did not answer within {timeout:.0f} s; see {self.log_path}"
        return False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and not self.error

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid) if self.process else 0.0

    def signal_stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        # SIGQUIT is gunicorn's quick shutdown.
        quick = signal.SIGQUIT if any(a.endswith("gunicorn") for a in self.args) else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, quick)

    def stop(self) -> None:
        """Stop the process, then whatever is left of the process group this run started."""
        process = self.process
        if process is None:
            return
        self.signal_stop()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers that outlived their master


class StandIn:
    """The Keygen stand-in's control plane."""

    def __init__(self, control_url: str):
        self.url = control_url

    def config(self, **changes) -> dict:
        return http_post_json(self.url + "/config", changes)

    def reset(self) -> dict:
        return http_post_json(self.url + "/reset", {})

    def stats(self) -> dict:
        return json.loads(http_get(self.url + "/stats"))


def make_certificate(directory: Path) -> tuple[Path, Path] | None:
    """A self-signed P-256 certificate for 127.0.0.1, or None without openssl."""
    openssl = shutil.which("openssl")
    if not openssl:
        return None
    cert, key = directory / "standin-cert.pem", directory / "standin-key.pem"
    subprocess.run(  # noqa: S603
        [
            *[openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            *["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", str(key)],
            *["-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def gunicorn_slots(config_path: Path, env: dict[str, str]) -> tuple[int, int]:
    """(workers, threads) that gunicorn.conf.py gives under this environment."""
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        values = runpy.run_path(str(config_path))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return int(values.get("workers", 1)), int(values.get("threads", 1))


# -- Scenarios ----------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    profile: dict[str, Any]
    standin: StandIn
    servers: dict[str, Server]
    latency: float
    quota_limit: int
    quota_period: int
    server_core: int | None = None
    calls: int = 3  # Keygen calls per signup: 2 with --exact-emails (no lookup of the person)
    results: dict[str, Any] = field(default_factory=dict)

    def server_core_sample(self) -> tuple[float, float]:
        """(busy seconds of the servers' core, CPU seconds of the servers under test)."""
        if self.server_core is None:
            return math.nan, math.nan
        mine = sum(self.servers[name].cpu() for name in ("portal", "naive"))
        return core_busy(self.server_core), mine

    def drain(self, seconds: float) -> float:
        """How long a phase waits for its last signups (the smoke profile cuts it short)."""
        return min(seconds, self.profile.get("drain", seconds))

    def alive(self, variant: str) -> bool:
        return self.servers[variant].alive

    def client(self, session, variant: str, tag: str):
        import loadgen

        prefix = f"{tag}-{variant}-{uuid.uuid4().hex[:8]}"
        return loadgen.SignupClient(
            session, self.servers[variant].url, prefix=prefix, password=self.args.password
        )

    def record(self, scenario: str, variant: str, data: dict) -> None:
        self.results.setdefault(scenario, {}).setdefault(variant, []).append(data)

    async def guarded(
        self, scenario: str, variant: str, coroutine, limit: float = PHASE_LIMIT
    ) -> None:
        """Run one phase within ``limit``; a failure is recorded, never fatal."""
        if not self.alive(variant):
            coroutine.close()
            error = self.servers[variant].error or "not running"
            self.record(scenario, variant, {"error": error})
            say(f"{scenario:>10} {variant:<6} skipped: {error}")
            return
        started = time.monotonic()
        busy0, mine0 = self.server_core_sample()
        try:
            data = await asyncio.wait_for(coroutine, limit + 10)
        except Exception as problem:  # a broken portal must not stop the benchmark
            data = {"error": f"{type(problem).__name__}: {problem}"}
        wall = time.monotonic() - started
        busy1, mine1 = self.server_core_sample()
        data["wall_seconds"] = round(wall, 2)
        # The share of the servers' core that other processes (not this benchmark's) took.
        data["foreign_share"] = max(0.0, ((busy1 - busy0) - (mine1 - mine0)) / wall)
        if self.servers[variant].process and self.servers[variant].process.poll() is not None:
            self.servers[variant].error = f"{variant} died during {scenario}"
        self.record(scenario, variant, data)
        say(f"{scenario:>10} {variant:<6} {data['wall_seconds']:5.1f} s  {summary(data)}")

    # Idle GET latency: the form page alone, one request at a time, each on a new connection.
    # The floor (R1) takes the GETs paced like the low-load arrivals, because that is how a
    # signup's GET finds the server: quiet for most of a second. On a VM whose idle vCPUs halt,
    # quiet costs the next request milliseconds whatever the server (nginx answered in 0.1 ms
    # back to back, 2.9 ms after 0.4 s of quiet: bench/README.md, thirteenth measurement).
    # Back to back, on a server kept busy by the GETs themselves, is kept for the record.

    async def idle_get(self, variant: str) -> dict:
        import loadgen

        url = self.servers[variant].url + "/"
        count, rate = self.profile["idle_gets"], self.profile["low_rate"]
        times = []
        async with loadgen.new_session() as session:
            for _ in range(count + 3):
                started = time.monotonic()
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"GET / answered {response.status}")
                times.append(time.monotonic() - started)
            paced = await loadgen.probe_loop(
                session, url, rate=rate, duration=count / rate, timeout=PROBE_TIMEOUT
            )
        failed = [probe for probe in paced if probe.status != 200]
        if failed:
            raise RuntimeError(f"GET / at {rate:g}/s: {len(failed)} of {len(paced)} failed")
        return {
            "p50": statistics.median(probe.latency for probe in paced),
            "n": len(paced),
            "rate": rate,
            # the first requests warm the worker's imports and caches
            "p50_back_to_back": statistics.median(times[3:]),
        }

    # Low load: open loop at a low rate; latency, Keygen calls and connections per signup.

    async def low_load(self, variant: str) -> dict:
        import loadgen

        p = self.profile
        self.standin.config(quota_limit=None, stall=0)
        async with loadgen.new_session() as session:
            client = self.client(session, variant, "low")
            await loadgen.open_loop(
                client,
                rate=p["low_rate"],
                duration=p["warmup"],
                timeout=FLOW_TIMEOUT,
                drain=self.drain(10),
            )
            self.standin.reset()
            cpu = self.servers[variant].cpu()
            result = await loadgen.open_loop(
                client,
                rate=p["low_rate"],
                duration=p["low_seconds"],
                timeout=FLOW_TIMEOUT,
                drain=self.drain(PHASE_LIMIT - p["low_seconds"] - p["warmup"]),
            )
            cpu = self.servers[variant].cpu() - cpu
        stats = self.standin.stats()
        latencies = [flow.latency for flow in result.issued()]
        return {
            "signups": len(latencies),
            "outcomes": dict(result.outcomes()),
            "p50": loadgen.percentile(latencies, 0.50),
            "p99": loadgen.percentile(latencies, 0.99),
            "keygen_requests": stats["requests"],
            "keygen_routes": stats["routes"],
            "new_connections": stats["new_connections"],
            "cpu_seconds": cpu,
            "standin_cpu_seconds": stats["cpu_seconds"],
            "standin_late_p50": stats["late_p50"],
            "max_lag": result.max_lag,
        }

    # 32 people signing up back to back (closed loop): throughput and CPU per signup.

    async def users(self, variant: str) -> dict:
        import loadgen

        p = self.profile
        self.standin.config(quota_limit=None, stall=0)
        server = self.servers[variant]
        marks: dict[str, Any] = {}

        async def sample(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            marks[name] = (
                time.monotonic(),
                server.cpu(),
                await asyncio.to_thread(self.standin.stats),
            )

        async with loadgen.new_session() as session:
            client = self.client(session, variant, "users")
            run = loadgen.closed_loop(
                client,
                users=p["users"],
                duration=p["warmup"] + p["users_seconds"],
                timeout=FLOW_TIMEOUT,
                drain=self.drain(20.0),
            )
            result, *_ = await asyncio.gather(
                run,
                sample("start", p["warmup"]),
                sample("end", p["warmup"] + p["users_seconds"]),
            )
        (t0, cpu0, stats0), (t1, cpu1, stats1) = marks["start"], marks["end"]
        signups = result.completed_between(t0, t1)
        in_window = [
            flow.latency
            for flow in result.issued()
            if flow.done is not None and t0 <= flow.done < t1
        ]
        return {
            "signups": signups,
            "outcomes": dict(result.outcomes()),
            "user_errors": result.errors(),
            "throughput": signups / (t1 - t0),
            "cpu_seconds": cpu1 - cpu0,
            "cpu_per_signup": (cpu1 - cpu0) / signups if signups else math.nan,
            "p50": loadgen.percentile(in_window, 0.50),
            "keygen_requests": stats1["requests"] - stats0["requests"],
            "new_connections": stats1["new_connections"] - stats0["new_connections"],
            "standin_cpu_share": (stats1["cpu_seconds"] - stats0["cpu_seconds"]) / (t1 - t0),
        }

    # At the quota: open loop over the bound (R4), and at 3x the quota (R5).

    async def quota_phase(self, variant: str, rate: float, seconds: float) -> dict:
        import loadgen

        if self.quota_period <= 2:  # start on a fresh quota window
            await asyncio.sleep(self.quota_period - time.time() % self.quota_period)
        self.standin.config(quota_limit=self.quota_limit, quota_period=self.quota_period, stall=0)
        self.standin.reset()
        issued_before = self.standin.stats()["licenses"]  # the stand-in keeps what it issued
        warm = min(2.0, seconds / 4)
        marks: dict[str, Any] = {}

        async def sample(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            marks[name] = (time.monotonic(), (await asyncio.to_thread(self.standin.stats)))

        async with loadgen.new_session() as session:
            client = self.client(session, variant, "quota")
            result, *_ = await asyncio.gather(
                loadgen.open_loop(
                    client,
                    rate=rate,
                    duration=seconds,
                    timeout=FLOW_TIMEOUT,
                    drain=self.drain(min(30.0, PHASE_LIMIT - seconds)),
                ),
                sample("start", warm),
                sample("end", seconds),
            )
        # Signups answered "we are finishing your signup" (202) are finished in the background,
        # still within Keygen's quota: wait for them (or until Keygen sees no calls), then count.
        outcomes = result.outcomes()
        stats = await self.settled(
            issued_before + outcomes["key"] + outcomes["processing"],
            limit=self.drain(BACKGROUND_LIMIT),
            quiet=self.drain(3.0),
        )
        self.standin.config(quota_limit=None)
        (t0, stats0), (t1, stats1) = marks["start"], marks["end"]
        admitted = outcomes["key"] + outcomes["processing"]
        return {
            "rate": rate,
            "outcomes": dict(outcomes),
            # Completed signups: licenses Keygen issued, shown at once or finished later.
            "throughput": (stats1["licenses"] - stats0["licenses"]) / (t1 - t0),
            "shown_per_second": result.completed_between(t0, t1) / (t1 - t0),
            "admitted": admitted,
            "licenses": stats["licenses"] - issued_before,
            "throttled": stats["throttled"],
            "throttled_per_admitted": stats["throttled"] / admitted if admitted else math.inf,
            "user_errors": result.errors(),
            "keygen_requests": stats["requests"],
        }

    async def settled(self, licenses: int, *, limit: float, quiet: float) -> dict:
        """The stand-in's stats once it has issued ``licenses`` licenses, or has seen no
        request for ``quiet`` seconds, or after ``limit`` seconds."""
        stats = await asyncio.to_thread(self.standin.stats)
        ends, still_since = time.monotonic() + limit, time.monotonic()
        while (
            time.monotonic() < ends
            and time.monotonic() - still_since < quiet
            and stats["licenses"] < licenses
        ):
            await asyncio.sleep(0.25)
            now = await asyncio.to_thread(self.standin.stats)
            if now["requests"] != stats["requests"]:
                still_since = time.monotonic()
            stats = now
        return stats

    # A Keygen stall: /healthz latency while signups keep arriving.

    async def stall(self, variant: str) -> dict:
        import loadgen

        p = self.profile
        stall = p["stall_seconds"]
        slots = self.results["slots"]
        rate = max(2.0, 2 * slots / stall)  # enough to take every slot before the stall ends
        self.standin.config(quota_limit=None, stall=0)
        self.standin.reset()
        url = self.servers[variant].url
        async with loadgen.new_session() as session:
            client = self.client(session, variant, "stall")
            start = time.monotonic() + 0.05

            async def stall_soon() -> None:
                await asyncio.sleep(0.5)
                await asyncio.to_thread(self.standin.config, stall=stall)

            async def probes() -> list:
                await asyncio.sleep(1.0)
                return await loadgen.probe_loop(
                    session,
                    url + "/healthz",
                    rate=PROBE_RATE,
                    duration=stall - 0.5,
                    timeout=PROBE_TIMEOUT,
                )

            signups, _, probed = await asyncio.gather(
                loadgen.open_loop(
                    client,
                    rate=rate,
                    duration=stall + 1.0,
                    timeout=FLOW_TIMEOUT,
                    drain=self.drain(min(35.0, PHASE_LIMIT - stall - 1.0)),
                    start=start,
                ),
                stall_soon(),
                probes(),
            )
        self.standin.config(stall=0)
        latencies = [math.inf if probe.latency is None else probe.latency for probe in probed]
        return {
            "rate": rate,
            "probes": len(probed),
            "probe_failures": sum(1 for probe in probed if probe.latency is None),
            "healthz_p50": loadgen.percentile(latencies, 0.50),
            "healthz_p99": loadgen.percentile(latencies, 0.99),
            "outcomes": dict(signups.outcomes()),
        }


def summary(data: dict) -> str:
    if "error" in data:
        return "ERROR " + data["error"]
    parts = []
    names = ("p50", "p50_back_to_back", "p99", "throughput", "rps", "healthz_p99", "throttled")
    for name in (*names, "signups"):
        if name in data:
            value = data[name]
            if name in ("p50", "p50_back_to_back", "p99", "healthz_p99"):
                parts.append(f"{name} {fmt_ms(value)}")
            else:
                text = f"{value:.4g}" if isinstance(value, float) else str(value)
                parts.append(f"{name} {text}")
    if "outcomes" in data:
        parts.append(" ".join(f"{k}:{v}" for k, v in sorted(data["outcomes"].items())))
    return ", ".join(parts)


def fmt_ms(seconds: float) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    if math.isinf(seconds):
        return f">{PROBE_TIMEOUT:.0f} s"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


# -- The table ----------------------------------------------------------------------------------


def median_of(runs: list[dict] | None, name: str) -> float:
    values = [run[name] for run in runs or [] if "error" not in run and name in run]
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def total_of(runs: list[dict] | None, name: str) -> float:
    values = [run[name] for run in runs or [] if "error" not in run and name in run]
    return sum(values) if values else math.nan


def ratio(a: float, b: float) -> float:
    if any(math.isnan(x) for x in (a, b)) or b == 0:
        return math.nan
    return a / b


def paired(a: list[dict] | None, b: list[dict] | None, name: str) -> float:
    """Median over repeats of a[i][name] / b[i][name]: interleaved runs compared pairwise, so
    that a burst of foreign load hits both sides of a ratio alike."""
    values = []
    for first, second in zip(a or [], b or [], strict=False):
        if "error" not in first and "error" not in second:
            value = ratio(first.get(name, math.nan), second.get(name, math.nan))
            if not math.isnan(value):
                values.append(value)
    return statistics.median(values) if values else math.nan


def error_of(runs: list[dict] | None) -> str | None:
    for run in runs or []:
        if "error" in run:
            return run["error"]
    return None if runs else "not run"


def build_rows(bench: Bench) -> list[dict]:
    r = bench.results
    L = bench.latency
    qrps = bench.quota_limit / bench.quota_period
    rows = []

    def row(ident, what, value, target, passed, measured, runs=()):
        problems = [error_of(run) for run in runs if error_of(run)]
        if math.isnan(value) and problems:
            measured = problems[0][:60]
        rows.append(
            {
                "id": ident,
                "what": what,
                "value": value,
                "target": target,
                "result": "n/a" if passed is None else ("PASS" if passed else "FAIL"),
                "measured": measured,
            }
        )

    idle = r.get("idle_get", {})
    low = r.get("low_load", {})
    users = r.get("users", {})
    idle_p = median_of(idle.get("portal"), "p50")
    n = bench.calls
    floor = n * L + idle_p
    low_p50 = {v: median_of(low.get(v), "p50") for v in ("portal", "naive")}
    low_p99 = {v: median_of(low.get(v), "p99") for v in ("portal", "naive")}

    busy_p = median_of(idle.get("portal"), "p50_back_to_back")  # the floor's GET before b1619f2
    r1, r1_busy = (
        statistics.median(
            [ratio(run["p50"], base) for run in low.get("portal", []) if "p50" in run] or [math.nan]
        )
        for base in (floor, n * L + busy_p)
    )
    row(
        "R1",
        f"floor efficiency: p50 signup / ({n} x Keygen latency + idle GET p50), low load",
        r1,
        "<= 1.15",
        r1 <= 1.15,
        f"p50 {fmt_ms(low_p50['portal'])}, floor {fmt_ms(floor)} (GET {idle_p * 1000:.1f} ms at"
        f" the low-load pace); {r1_busy:.3f} with the GET back to back ({busy_p * 1000:.1f} ms)",
        [low.get("portal"), idle.get("portal")],
    )
    r2 = paired(low.get("portal"), low.get("naive"), "p50")
    row(
        "R2a",
        "p50 signup latency, portal / naive, low load",
        r2,
        "<= 0.6",
        r2 <= 0.6,
        f"{fmt_ms(low_p50['portal'])} / {fmt_ms(low_p50['naive'])}",
        [low.get("portal"), low.get("naive")],
    )
    r2b = paired(low.get("portal"), low.get("naive"), "p99")
    row(
        "R2b",
        "p99 signup latency, portal / naive, low load",
        r2b,
        "(none)",
        None,
        f"{fmt_ms(low_p99['portal'])} / {fmt_ms(low_p99['naive'])}",
        [low.get("portal"), low.get("naive")],
    )
    calls = total_of(low.get("portal"), "keygen_requests")
    signups = total_of(low.get("portal"), "signups")
    clean = all(
        set(run.get("outcomes", {})) <= {"key"}
        for run in low.get("portal", [])
        if "error" not in run
    )
    r3a = ratio(calls, signups)
    row(
        "R3a",
        "Keygen calls per signup, portal, happy path",
        r3a,
        f"= {n}",
        calls == n * signups and clean and signups > 0,
        f"{calls:.0f} calls / {signups:.0f} signups" if not math.isnan(r3a) else "",
        [low.get("portal")],
    )
    conns = {
        v: ratio(total_of(low.get(v), "new_connections"), total_of(low.get(v), "signups"))
        for v in ("portal", "naive")
    }
    busy_conns = {
        v: ratio(total_of(users.get(v), "new_connections"), total_of(users.get(v), "signups"))
        for v in ("portal", "naive")
    }
    row(
        "R3b",
        "new Keygen connections per signup, portal (low load; naive 2.0)",
        conns["portal"],
        "<= 0.05",
        conns["portal"] <= 0.05,
        f"naive {conns['naive']:.2f}; at 32 users P {busy_conns['portal']:.3f} "
        f"N {busy_conns['naive']:.2f}",
        [low.get("portal")],
    )
    sat = r.get("saturation", {})
    slots = r.get("slots", 0)
    bound = min(slots / floor, qrps / n) if not math.isnan(floor) else math.nan
    sat_x = median_of(sat.get("portal"), "throughput")
    r4 = ratio(sat_x, bound)
    row(
        "R4",
        f"signups completed/s / min(slots / floor, quota / {n}), arrivals at 1.5x that bound",
        r4,
        ">= 0.9",
        r4 >= 0.9,
        f"{sat_x:.2f}/s of {bound:.2f}/s (slots {slots}, quota {qrps:g}/s); shown at once "
        f"{median_of(sat.get('portal'), 'shown_per_second'):.2f}/s",
        [sat.get("portal")],
    )
    q = r.get("quota", {})
    r5 = median_of(q.get("portal"), "throttled_per_admitted")
    naive5 = median_of(q.get("naive"), "throttled_per_admitted")
    row(
        "R5a",
        "Keygen 429s per admitted signup, arrivals at 3x the quota",
        r5,
        "~0 (<= 0.05)",
        r5 <= 0.05,
        f"P {total_of(q.get('portal'), 'throttled'):.0f} 429s / "
        f"{total_of(q.get('portal'), 'admitted'):.0f}; naive {naive5:.2f}",
        [q.get("portal")],
    )
    errors5 = total_of(q.get("portal"), "user_errors")
    shown5 = sum(run.get("outcomes", {}).get("key", 0) for run in q.get("portal", []))
    later5 = sum(run.get("outcomes", {}).get("processing", 0) for run in q.get("portal", []))
    row(
        "R5b",
        "users who got an error, arrivals at 3x the quota",
        errors5,
        "= 0",
        errors5 == 0,
        f"P: {shown5} keys shown, {later5} finished later, "
        f"{total_of(q.get('portal'), 'licenses'):.0f} licenses; naive "
        f"{total_of(q.get('naive'), 'user_errors'):.0f} of "
        f"{sum(sum(run.get('outcomes', {}).values()) for run in q.get('naive', []))}",
        [q.get("portal")],
    )
    st = r.get("stall", {})
    r7 = median_of(st.get("portal"), "healthz_p99")
    naive7 = median_of(st.get("naive"), "healthz_p99")
    stall_seconds = bench.profile["stall_seconds"]
    row(
        "R7",
        f"/healthz p99 (ms) during a {stall_seconds:g} s Keygen stall",
        r7 * 1000,
        "< 100",
        r7 < 0.1,
        f"P {fmt_ms(r7)}; naive {fmt_ms(naive7) if st.get('naive') else 'not run'}",
        [st.get("portal")],
    )
    cpu = {v: median_of(users.get(v), "cpu_per_signup") for v in ("portal", "naive")}
    r8 = paired(users.get("portal"), users.get("naive"), "cpu_per_signup")
    row(
        "R8",
        "CPU seconds per signup, portal / naive (32 users)",
        r8,
        "<= 1",
        r8 <= 1,
        f"{fmt_ms(cpu['portal'])} / {fmt_ms(cpu['naive'])} per signup",
        [users.get("portal"), users.get("naive")],
    )
    x = {v: median_of(users.get(v), "throughput") for v in ("portal", "naive")}
    r9 = paired(users.get("portal"), users.get("naive"), "throughput")
    row(
        "R9",
        f"throughput at {bench.profile['users']} concurrent users, portal / naive",
        r9,
        ">= 5",
        r9 >= 5,
        f"{x['portal']:.1f} / {x['naive']:.1f} signups/s; users who got an error P "
        f"{total_of(users.get('portal'), 'user_errors'):.0f} N "
        f"{total_of(users.get('naive'), 'user_errors'):.0f}",
        [users.get("portal"), users.get("naive")],
    )
    return rows


def format_table(rows: list[dict]) -> str:
    def value(v: float) -> str:
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    header = ("ratio", "what", "value", "target", "result", "measured")
    lines = [
        (r["id"], r["what"], value(r["value"]), r["target"], r["result"], r["measured"])
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = []
    for index, line in enumerate([header, *lines]):
        out.append(" | ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if index == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        # The interpreter the venv was made from: its build (PGO, LTO) moves R8 and R9.
        "interpreter": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        "executable": sys.executable,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


# -- Main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer, shorter points (< 60 s)")
    size.add_argument("--smoke", action="store_true", help="the smallest configuration (tests)")
    parser.add_argument("--latency", type=float, default=0.05, help="Keygen seconds per request")
    parser.add_argument(
        "--connect-delay", type=float, default=0.04, help="extra seconds per new connection"
    )
    parser.add_argument("--no-tls", action="store_true", help="plain http to the stand-in")
    parser.add_argument(
        "--quota", default="10/1", help="Keygen quota as LIMIT/PERIOD_SECONDS (default 10/1)"
    )
    parser.add_argument("--portal-dir", type=Path, default=ROOT, help="the portal to measure")
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--python", help="run under this interpreter (a venv of it in .venv-bench/, made once)"
    )
    parser.add_argument(
        "--exact-emails",
        action="store_true",
        help="ONE_ACCOUNT_PER_PERSON=false: no lookup of the person, two Keygen calls a signup",
    )
    parser.add_argument("--password", default=PASSWORD, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limit, _, period = args.quota.partition("/")
    args.quota_limit, args.quota_period = int(limit), int(period or 1)
    return args


async def restart_portal_for_quota(
    bench: Bench, env: dict[str, str], work: Path, logs: Path, cores: set[int] | None
) -> str:
    """The portal as an operator facing Keygen's quota runs it: the Keygen budget
    (KEYGEN_MAX_RPS) at the quota, shared by every worker through Redis. Without redis-server,
    each worker's own budget gets its share of the quota instead."""
    workers = bench.results["workers"]
    qrps = bench.quota_limit / bench.quota_period
    redis_url = await asyncio.to_thread(start_redis, work, logs)
    if redis_url:
        changes = {"RATELIMIT_STORAGE_URI": redis_url, "KEYGEN_MAX_RPS": f"{qrps:g}"}
        text = f"quota phases: KEYGEN_MAX_RPS={qrps:g}, one budget in Redis for {workers} workers"
    else:
        share = max(1, int(qrps // workers))
        changes = {"KEYGEN_MAX_RPS": str(share)}
        text = f"quota phases: no redis-server, KEYGEN_MAX_RPS={share} in each of {workers} workers"
    old = bench.servers["portal"]
    old.stop()
    portal = Server(
        "portal-quota",
        old.args,
        {**env, **changes},
        old.cwd,
        old.url,
        old.health,
        old.log_path.with_name("portal-quota.log"),
    )
    portal.start()
    if not await asyncio.to_thread(portal.wait_ready):
        say(f"WARNING: {portal.error}")
    elif cores:
        pin_tree(portal.process.pid, cores)
    bench.servers["portal"] = portal
    say(text)
    return text


HELPERS: list[subprocess.Popen] = []  # processes besides the servers (redis-server)


def start_redis(work: Path, logs: Path) -> str | None:
    binary = shutil.which("redis-server")
    if not binary:
        return None
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    with open(logs / "redis.log", "ab") as log:
        process = subprocess.Popen(  # noqa: S603
            [*args, "no", "--dir", str(work)], stdout=log, stderr=subprocess.STDOUT
        )
    HELPERS.append(process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    return None


def stop_helpers() -> None:
    while HELPERS:
        process = HELPERS.pop()
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def pinning(args: argparse.Namespace) -> tuple[set[int] | None, str]:
    """The core for the servers under test (None: no pinning), and a description. This
    process (the load generator) and the stand-in it starts get another core."""
    cores = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cores) < 2:
        return None, "no pinning"
    load, server = cores[0], cores[-1]
    os.sched_setaffinity(0, {load})
    return {server}, f"servers on cpu {server}, load + stand-in on cpu {load}"


def pin_tree(root: int, cores: set[int]) -> None:
    """Pin every thread of a process and its descendants (gunicorn forks its workers at boot,
    so the servers boot on every core and are pinned once they answer)."""
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), cores)


async def run(args: argparse.Namespace) -> int:
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    portal_dir = args.portal_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    logs = (args.log_dir or work / "logs").resolve()
    logs.mkdir(parents=True, exist_ok=True)
    server_cores, pin_text = pinning(args)
    started = time.monotonic()
    python = sys.executable
    gunicorn = str(Path(python).parent / "gunicorn")

    tls = None if args.no_tls else make_certificate(work)
    ids = {
        "account": str(uuid.uuid4()),
        "policy": str(uuid.uuid4()),
        "token": f"prod-{secrets.token_hex(32)}v3",
    }
    api_port, control_port = free_port(), free_port()
    scheme = "https" if tls else "http"
    standin_args = [python, str(BENCH / "keygen_standin.py"), "--port", str(api_port)]
    standin_args += ["--control-port", str(control_port), "--account", ids["account"]]
    standin_args += ["--token", ids["token"], "--policy", ids["policy"]]
    standin_args += ["--latency", str(args.latency), "--connect-delay", str(args.connect_delay)]
    if tls:
        standin_args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]

    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KEYGEN_", "SECRET_KEY", "DATABASE_URL", "BIND"))
        and k not in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "PYTHONPATH")
    }
    keygen_env = {
        "KEYGEN_API_URL": f"{scheme}://127.0.0.1:{api_port}",
        "KEYGEN_ACCOUNT_ID": ids["account"],
        "KEYGEN_PRODUCT_TOKEN": ids["token"],
        "KEYGEN_POLICY_ID": ids["policy"],
        "SECRET_KEY": secrets.token_urlsafe(48),
        "COOKIE_SECURE": "false",
    }
    if tls:
        keygen_env["REQUESTS_CA_BUNDLE"] = str(tls[0])
    conf = portal_dir / "gunicorn.conf.py"

    def server(name: str, args_: list[str], env: dict, health: str, cwd: Path) -> Server:
        # gunicorn.conf.py takes its address from BIND; the naive baseline, which has no config
        # file (and runs where gunicorn finds none), from --bind.
        port = free_port()
        return Server(
            name,
            [*args_, "--bind", f"127.0.0.1:{port}"],
            {**env, "BIND": f"127.0.0.1:{port}"},
            cwd,
            f"http://127.0.0.1:{port}",
            health,
            logs / f"{name}.log",
        )

    portal_env = {
        **base_env,
        **keygen_env,
        "DATABASE_URL": f"sqlite:///{work / 'portal.db'}",
        # All load comes from one address and a few emails: lift those limits as an operator
        # would for a load test. Every address is at example.com: no per-domain cap either.
        "RATELIMIT_PER_IP": "1000000/minute",
        "RATELIMIT_PER_EMAIL": "1000000/minute",
        "RATELIMIT_PER_DOMAIN": "off",
        # The lookup of the same person: a third Keygen call per signup, unless --exact-emails.
        "ONE_ACCOUNT_PER_PERSON": "false" if args.exact_emails else "true",
        # Admission per phase: these phases run against a Keygen without a quota (as
        # self-hosted Keygen is by default), so the portal's Keygen budget is set out of the
        # way; the quota phases restart the portal with the budget sized to the quota.
        "KEYGEN_MAX_RPS": "100000",
    }
    servers = {
        "standin": Server(
            "standin",
            standin_args,
            base_env,
            BENCH,
            f"http://127.0.0.1:{control_port}",
            "/stats",
            logs / "standin.log",
        ),
        "portal": server(
            "portal",
            [gunicorn, "-c", str(conf), "app:create_app()"],
            portal_env,
            "/healthz",
            portal_dir,
        ),
        "naive": server(
            "naive",
            [gunicorn, "--workers", str(NAIVE_WORKERS), "naive_app:app"],
            {**base_env, **keygen_env, "PORTAL_DIR": str(portal_dir)},
            "/healthz",
            BENCH,
        ),
    }
    workers, threads = gunicorn_slots(conf, portal_env)

    notes: list[str] = []
    say(f"profile {'smoke' if args.smoke else 'quick' if args.quick else 'full'}; {pin_text}")
    say(f"logs in {logs}")
    try:
        for item in servers.values():
            item.start()
        for item in servers.values():
            item.wait_ready()
        time.sleep(1.0)  # gunicorn's master gives up only once a worker has failed to boot
        for name in servers:
            if not servers[name].wait_ready(timeout=5):
                say(f"WARNING: {servers[name].error}")
                if name != "standin":
                    # Measure it anyway if it comes up on a second try, and say so.
                    notes.append(f"{name} failed its first start: {servers[name].error}")
                    servers[name].stop()
                    servers[name].error = None
                    servers[name].start()
                    if servers[name].wait_ready():
                        notes[-1] += " (it started on the second try)"
        if server_cores:
            for name in ("portal", "naive"):
                if servers[name].process:
                    pin_tree(servers[name].process.pid, server_cores)
        say(f"servers ready after {time.monotonic() - started:.1f} s")
        if not servers["standin"].alive:
            sys.exit(f"bench: the Keygen stand-in did not start: {servers['standin'].error}")

        bench = Bench(
            args,
            profile,
            StandIn(f"http://127.0.0.1:{control_port}"),
            servers,
            args.latency,
            args.quota_limit,
            args.quota_period,
            min(server_cores) if server_cores else None,
            calls=2 if args.exact_emails else 3,
        )
        bench.results["slots"] = workers * threads
        bench.results["workers"] = workers
        variants = ("portal", "naive")

        for variant in variants:
            await bench.guarded("idle_get", variant, bench.idle_get(variant))
        for _ in range(profile["repeats"]):
            for variant in variants:
                await bench.guarded("low_load", variant, bench.low_load(variant))
            for variant in variants:
                await bench.guarded("users", variant, bench.users(variant))

        say(f"servers ready and happy-path phases done after {time.monotonic() - started:.0f} s")

        qrps = args.quota_limit / args.quota_period
        budget_text = await restart_portal_for_quota(bench, portal_env, work, logs, server_cores)
        notes.append(budget_text)
        idle_p50 = median_of(bench.results["idle_get"].get("portal"), "p50")
        floor = bench.calls * args.latency + (idle_p50 if not math.isnan(idle_p50) else 0.0)
        bound = min(workers * threads / floor, qrps / bench.calls)
        # R4 is the portal's alone: the naive baseline's bound would be its 5 workers.
        await bench.guarded(
            "saturation",
            "portal",
            bench.quota_phase("portal", 1.5 * bound, profile["saturation_seconds"]),
            limit=PHASE_LIMIT + BACKGROUND_LIMIT,
        )
        at_quota = variants if profile["naive_at_quota"] else ("portal",)
        for variant in at_quota:
            await bench.guarded(
                "quota",
                variant,
                bench.quota_phase(variant, 3 * qrps / bench.calls, profile["quota_seconds"]),
                limit=PHASE_LIMIT + BACKGROUND_LIMIT,
            )
        for variant in variants if profile["stall_naive"] else ("portal",):
            await bench.guarded("stall", variant, bench.stall(variant))
    finally:
        for item in servers.values():
            item.signal_stop()
        for item in servers.values():
            item.stop()
        stop_helpers()

    rows = build_rows(bench)
    info = machine()
    elapsed = time.monotonic() - started
    header = (
        f"Keygen latency {args.latency * 1000:g} ms, +{args.connect_delay * 1000:g} ms per new "
        f"connection, TLS {'on' if tls else 'off'}, quota {args.quota_limit}/{args.quota_period}s; "
        f"ONE_ACCOUNT_PER_PERSON={'false' if args.exact_emails else 'true'} ({bench.calls} calls "
        "a signup); "
        f"portal: gunicorn.conf.py ({workers} workers x {threads} threads); naive: "
        f"{NAIVE_WORKERS} sync workers; {pin_text}"
    )
    lows = [run for v in variants for run in bench.results.get("low_load", {}).get(v, [])]
    lag = max((run.get("max_lag", 0.0) for run in lows if "error" not in run), default=math.nan)
    late = median_of(
        [run for run in lows if run.get("standin_late_p50") is not None], "standin_late_p50"
    )
    share = median_of(bench.results.get("users", {}).get("portal"), "standin_cpu_share")
    foreign = [
        run.get("foreign_share", math.nan)
        for scenario in bench.results.values()
        if isinstance(scenario, dict)
        for runs in scenario.values()
        for run in runs
    ]
    foreign = [f for f in foreign if not math.isnan(f)]
    footer = (
        f"{info['nproc']} cpus ({info['cpu']}), Python {info['python']} "
        f"({info['interpreter']}), "
        f"load average {info['loadavg_at_start'][0]:.2f} at start, {elapsed:.0f} s; "
        f"stand-in used {share:.0%} of a core at 32 users; load generator lag <= "
        f"{lag * 1000:.1f} ms and the stand-in's answers {late * 1000:.1f} ms after their "
        "latency (p50) at low load; other processes took "
        + (
            f"{statistics.median(foreign):.0%} (median), {max(foreign):.0%} (worst phase) of the "
            "servers' core"
            if foreign
            else "an unknown share of the servers' core (not pinned)"
        )
    )
    print(header)
    print(format_table(rows))
    print(footer)
    for note in notes + [item.error for item in servers.values() if item.error]:
        print(f"note: {note}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": info, "rows": rows, "results": bench.results, "settings": header},
                indent=2,
                default=str,
            )
        )
    if notes or any(item.error for item in servers.values()):
        print(f"note: the servers' logs are in {logs}")
    elif not args.log_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.python:
        run_under(args.python, without_python_option(sys.argv[1:] if argv is None else argv))
    ensure_dependencies()
    sys.path.insert(0, str(BENCH))
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
