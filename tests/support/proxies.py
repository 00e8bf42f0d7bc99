"""The shipped proxy recipes run for real: deploy/nginx.conf and deploy/Caddyfile in front of a
portal under gunicorn, on loopback, with TLS from a self-signed certificate for localhost."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from support.paths import ROOT
from support.processes import free_port, process, require
from support.servers import Portal

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx")
CADDY = shutil.which("caddy")
OPENSSL = shutil.which("openssl")
HOST = "localhost"  # the certificate's name; /etc/hosts maps it to 127.0.0.1


@pytest.fixture(scope="module")
def certificate() -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate for localhost: the clients trust exactly this file."""
    require(OPENSSL is not None, "openssl")
    with tempfile.TemporaryDirectory(prefix="portal-tls-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        subprocess.run(
            [
                str(OPENSSL),
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={HOST}",
                "-addext",
                f"subjectAltName=DNS:{HOST},IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield cert, key


@dataclass
class Proxy:
    name: str
    https: str  # https://localhost:PORT
    http: str  # http://localhost:PORT
    cert: Path
    log: Path

    def get(self, path: str = "/", **options) -> requests.Response:
        options.setdefault("timeout", 10)
        return requests.get(self.https + path, verify=str(self.cert), **options)


def render_nginx_conf(values: dict[str, str]) -> str:
    """deploy/nginx.conf as envsubst renders it: only the named ${VARIABLES} are replaced."""
    text = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "${" not in code, "deploy/nginx.conf has a placeholder the test does not fill"
    return text


def wait_for_https(proxy: Proxy, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proxy.name} exited with {proc.returncode}; see {proxy.log}")
        try:
            proxy.get("/healthz", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise TimeoutError(f"{proxy.name} did not answer on {proxy.https} within {timeout} s")


@contextmanager
def nginx(
    portal: Portal, cert: Path, key: Path, *, form_rate: str | None = None
) -> Iterator[Proxy]:
    """deploy/nginx.conf as shipped, in front of ``portal``; ``form_rate`` replaces its limit of
    form submissions per address (10r/m) for tests that send many from 127.0.0.1."""
    require(NGINX is not None, "nginx")
    https_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="portal-nginx-") as prefix:
        text = render_nginx_conf(
            {
                "PORTAL_SERVER_NAME": HOST,
                "PORTAL_PUBLIC_URL": f"https://{HOST}:{https_port}",
                "PORTAL_HTTP_LISTEN": f"127.0.0.1:{http_port}",
                "PORTAL_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
                "PORTAL_TLS_CERTIFICATE": str(cert),
                "PORTAL_TLS_CERTIFICATE_KEY": str(key),
                "PORTAL_UPSTREAM": portal.upstream,
            }
        )
        if form_rate:
            assert "rate=10r/m" in text
            text = text.replace("rate=10r/m", f"rate={form_rate}")
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(text)
        args = [str(NGINX), "-p", prefix, "-c", str(conf)]
        args += ["-g", f"daemon off; pid {prefix}/nginx.pid;"]
        with process("nginx", args, dict(os.environ)) as proc:
            proxy = Proxy(
                "nginx",
                f"https://{HOST}:{https_port}",
                f"http://{HOST}:{http_port}",
                cert,
                proc.log_path,
            )
            wait_for_https(proxy, proc)
            yield proxy


@contextmanager
def caddy(portal: Portal, cert: Path, key: Path, *, tls: str | None = None) -> Iterator[Proxy]:
    """Caddy with the given certificate, or with `tls=internal` its own CA (then trusted)."""
    require(CADDY is not None, "caddy")
    https_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="portal-caddy-") as home:
        env = dict(os.environ, HOME=home, XDG_DATA_HOME=home, XDG_CONFIG_HOME=home)
        env.update(
            PORTAL_SITE=f"{HOST}:{https_port}",
            PORTAL_UPSTREAM=portal.upstream,
            PORTAL_TLS=tls or f"{cert} {key}",
            PORTAL_HTTP_PORT=str(http_port),
            PORTAL_BIND="127.0.0.1",
            PORTAL_CADDY_ADMIN="off",
        )
        args = [str(CADDY), "run", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"]
        with process("caddy", args, env) as proc:
            if tls == "internal":
                cert = Path(home) / "caddy" / "pki" / "authorities" / "local" / "root.crt"
                deadline = time.monotonic() + 20
                while not cert.exists() and time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.1)
            proxy = Proxy(
                "caddy",
                f"https://{HOST}:{https_port}",
                f"http://{HOST}:{http_port}",
                cert,
                proc.log_path,
            )
            wait_for_https(proxy, proc)
            yield proxy
