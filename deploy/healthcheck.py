"""The container's HEALTHCHECK: GET /healthz where gunicorn listens (BIND), exit 0 if it is ok.

BIND is what gunicorn.conf.py reads: host:port, [v6]:port, or unix:/path. A wildcard address is
checked on loopback. Standard library only, so it runs on any base image.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys

TIMEOUT = 4.0  # the Dockerfile gives the check 5 s


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=TIMEOUT)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.unix_path)


def connection(bind: str) -> http.client.HTTPConnection:
    bind = bind.split(",")[0].strip()
    if bind.startswith("unix:"):
        return UnixHTTPConnection(bind.removeprefix("unix:"))
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):  # noqa: S104 (a wildcard is checked on loopback)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)


def main() -> int:
    bind = os.environ.get("BIND", "127.0.0.1:8000")
    try:
        conn = connection(bind)
        conn.request("GET", "/healthz", headers={"User-Agent": "portal-healthcheck"})
        response = conn.getresponse()
        body = response.read(4096)
        conn.close()
        healthy = response.status == 200 and json.loads(body).get("status") == "ok"
    except (OSError, ValueError, http.client.HTTPException) as error:
        print(f"unhealthy: /healthz via {bind}: {error}", file=sys.stderr)
        return 1
    if not healthy:
        print(f"unhealthy: /healthz via {bind} answered {response.status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
