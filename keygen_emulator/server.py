"""Serving the emulator: a threaded werkzeug server with real keep-alive, and the command line.

serve() runs it on a loopback port from a daemon thread (ServerThread); main() is
`python -m keygen_emulator`, seeded like create_app() from flags or EMULATOR_* variables.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

from keygen_emulator.seeds import from_environment
from keygen_emulator.state import Emulator
from keygen_emulator.wsgi import create_app

MAX_BODY = 4 * 1024 * 1024
_HOST = "127.0.0.1"  # a fake Keygen that shows its state to anyone stays on loopback


class _Connections:
    """The open client connections of one server, so stop() can close them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def add(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.add(connection)

    def discard(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)

    def close_all(self) -> None:
        with self._lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(WSGIRequestHandler):
    """werkzeug's handler with real keep-alive, a connection count and no access log.

    werkzeug's own run_wsgi always answers `Connection: close`; this one reads each request
    body fully and sends a Content-Length, so one connection can carry many requests.
    """

    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds an idle keep-alive connection stays open
    emulator: Emulator
    connections: _Connections

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.emulator.lock:
            self.emulator.new_connections += 1
        self.connections.add(self.connection)

    def finish(self) -> None:
        self.connections.discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        environ = self.make_environ()
        try:
            body = self._read_body(environ)
        except (OSError, ValueError):
            self.close_connection = True
            return
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("wsgi.input_terminated", None)
        answer = self._call_app(environ)
        if answer is not None:
            self._send(*answer)

    def _call_app(self, environ: dict) -> tuple[str, list, bytes] | None:
        """(status, headers, body) of the app's answer; None when the connection was dropped."""
        started: list = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            started[:] = [status, headers]
            return chunks.append

        try:
            result = self.server.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        except ConnectionError:
            self.close_connection = True
            return None
        except Exception:
            logging.getLogger(__name__).exception("the emulator failed on a request")
            started[:] = ["500 INTERNAL SERVER ERROR", [("Content-Type", "text/plain")]]
            chunks[:] = [b"emulator error"]
            self.close_connection = True
        status, headers = started
        return status, headers, b"".join(chunks)

    def _send(self, status: str, headers: list, payload: bytes) -> None:
        code_text, _, reason = status.partition(" ")
        code = int(code_text)
        lines = [f"{self.protocol_version} {code} {reason}"]
        lines += [f"Server: {self.version_string()}", f"Date: {self.date_time_string()}"]
        has_length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered in ("connection", "transfer-encoding", "keep-alive"):
                continue
            has_length = has_length or lowered == "content-length"
            lines.append(f"{name}: {value}")
        empty = code in (204, 304) or code < 200
        if not has_length and not empty:
            lines.append(f"Content-Length: {len(payload)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = "".join(f"{line}\r\n" for line in lines) + "\r\n"
        # Headers and body in one write: two small writes on a kept-alive connection meet
        # Nagle's algorithm and delayed ACKs, and every answer would wait ~40 ms.
        body = payload if self.command != "HEAD" and not empty else b""
        self.wfile.write(head.encode("latin-1") + body)

    def _read_body(self, environ: dict) -> bytes:
        if environ.get("wsgi.input_terminated"):  # chunked
            stream, parts, size = environ["wsgi.input"], [], 0
            while size <= MAX_BODY:
                part = stream.read(65536)
                if not part:
                    return b"".join(parts)
                parts.append(part)
                size += len(part)
            self.close_connection = True
            return b"".join(parts)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length < 0 or length > MAX_BODY:
            self.close_connection = True  # the rest of the body stays unread
            length = max(0, min(length, MAX_BODY))
        return self.rfile.read(length) if length else b""


class ServerThread:
    """An emulator served on a loopback port from a daemon thread."""

    def __init__(self, server: Any, connections: _Connections) -> None:
        self._server = server
        self._connections = connections
        self._stopped = False
        self.url = f"http://{server.host}:{server.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"keygen-emulator:{server.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._connections.close_all()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(emulator: Emulator, port: int = 0) -> ServerThread:
    """Serve `emulator` on 127.0.0.1 over HTTP/1.1 with keep-alive; port 0 picks a free port."""
    connections = _Connections()
    handler = type("_BoundHandler", (_Handler,), {"emulator": emulator, "connections": connections})
    server = make_server(_HOST, port, create_app(emulator), threaded=True, request_handler=handler)
    return ServerThread(server, connections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keygen_emulator", description="A stand-in Keygen API for tests and demos."
    )
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--account-id", help="account UUID (default: EMULATOR_ACCOUNT_ID or new)")
    parser.add_argument("--slug", help="account slug (default: EMULATOR_ACCOUNT_SLUG or demo)")
    parser.add_argument("--protected", action="store_true", help="refuse anonymous sign-ups")
    parser.add_argument("--api-version", help="the account's pinned API version (default 1.8)")
    parser.add_argument(
        "--newest-api-version", help="the newest API version it knows (default 1.8; 1.7: v1.4)"
    )
    parser.add_argument("--product-token", help="the product token (default: generated)")
    parser.add_argument("--policy-id", help="the policy UUID (default: generated)")
    args = parser.parse_args(argv)

    flags = {
        "EMULATOR_ACCOUNT_ID": args.account_id,
        "EMULATOR_ACCOUNT_SLUG": args.slug,
        "EMULATOR_PROTECTED": "true" if args.protected else None,
        "EMULATOR_API_VERSION": args.api_version,
        "EMULATOR_NEWEST_API_VERSION": args.newest_api_version,
        "EMULATOR_PRODUCT_TOKEN": args.product_token,
        "EMULATOR_POLICY_ID": args.policy_id,
    }
    env = dict(os.environ)
    env.update({name: value for name, value in flags.items() if value})
    emulator = from_environment(env)

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    server = serve(emulator, args.port)
    print(f"keygen emulator listening on {server.url}", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
