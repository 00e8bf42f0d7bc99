"""Processes the tests start: free loopback ports, waiting until they answer, stopping them; and
the rule for a component that is not installed."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import requests

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
