"""Processes the tests start: free loopback ports, logs under test-logs/, waiting until they
answer, stopping them; and the rule for a component that is not installed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from support.paths import LOG_DIR, ROOT

IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, *, timeout: float = 20.0, process: subprocess.Popen | None = None):
    """Poll until the URL answers, the process dies, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before serving {url}")
        try:
            return requests.get(url, timeout=2)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def require(available: bool, what: str) -> None:
    """Skip when a component is missing on a developer machine; fail under CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI but is not installed")
    pytest.skip(f"{what} is not installed (scripts/test.sh installs it when run as root)")


@contextmanager
def process(name: str, args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Run a server with its output in the test logs, and stop it afterwards."""
    log_path = LOG_DIR / f"{name}-{uuid.uuid4().hex[:8]}.log"
    log = open(log_path, "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    try:
        yield proc
    finally:
        stop(proc)
        log.close()


def listening_url(proc: subprocess.Popen, pattern: str, *, timeout: float = 30) -> str:
    """The URL a server started on port 0 says it listens on (no port can be taken twice)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, proc.log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}; see {proc.log_path}")
        time.sleep(0.05)
    raise TimeoutError(f"no listening line in {proc.log_path} within {timeout} s")
