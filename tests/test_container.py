"""The Dockerfile, built and run for real with podman.

No image registry is reachable on the project's machines, so the base image is made here from
Debian packages (debootstrap) and passed as PYTHON_IMAGE; elsewhere the Dockerfile's default, the
official python:3.12-slim, is used. That base is cached under a tag derived from its recipe, so
only the first run on a machine pays for it. The portal's own image is built (podman's layer cache
makes a rebuild quick), run against an emulator process on loopback, and removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.http import issued_key, sign_up_over_http
from support.leaks import KEY_PATTERN, SECRET_KEY
from support.paths import LOG_DIR, ROOT
from support.processes import free_port, process, require, wait_for_http
from support.servers import emulator, keygen_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(540)]  # the first test builds the images

PODMAN = shutil.which("podman")
DEBOOTSTRAP = shutil.which("debootstrap")
# The local stand-in for python:3.12-slim. Its tag is a hash of this recipe (not of the mirror).
BASE_REPOSITORY = "localhost/portal-base"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
BASE_CHANGES = (
    "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV=LANG=C.UTF-8",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PORTAL_UID = "10001"  # fixed in the Dockerfile, so volumes and secrets can be owned by it


# -- podman ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    require(PODMAN is not None, "podman")
    require(shutil.which("runc") is not None, "runc")
    with tempfile.TemporaryDirectory(prefix="portal-podman-") as home:
        yield Podman(Path(home))


class Podman:
    """podman with runc, and without the default ulimits that this kind of sandbox refuses."""

    def __init__(self, home: Path):
        conf = home / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))

    def command(self, *args: str) -> list[str]:
        return [str(PODMAN), "--runtime", "runc", *args]

    def __call__(
        self, *args: str, timeout: float = 60, check: bool = True, log: Path | None = None
    ) -> subprocess.CompletedProcess:
        if log is None:
            result = subprocess.run(
                self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout
            )
        else:
            with open(log, "a", encoding="utf-8") as out:
                result = subprocess.run(
                    self.command(*args),
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                )
        if check and result.returncode != 0:
            where = f"see {log}" if log else result.stderr.strip()[-2000:]
            raise AssertionError(
                f"podman {' '.join(args[:2])} failed ({result.returncode}): {where}"
            )
        return result


# -- The base image: Debian's python3 in place of python:3.12-slim ------------------------------


def base_image_tag() -> str:
    recipe = json.dumps([BASE_SUITE, "minbase", BASE_PACKAGES, BASE_TRIM, BASE_CHANGES])
    return f"{BASE_REPOSITORY}:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 .sources or one-line .list files)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"(?m)^(\w[\w-]*):\s*(.*)$", stanza))
                if (
                    BASE_SUITE in fields.get("Suites", "").split()
                    and "deb" in fields.get("Types", "").split()
                ):
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == BASE_SUITE:
                    return words[1]
    return DEFAULT_MIRROR


@pytest.fixture(scope="module")
def base_image(podman: Podman) -> str:
    tag = base_image_tag()
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    require(DEBOOTSTRAP is not None and os.geteuid() == 0, "debootstrap (as root)")
    log = LOG_DIR / "portal-base-image.log"
    with tempfile.TemporaryDirectory(prefix="portal-base-") as work:
        rootfs = Path(work) / "rootfs"
        with open(log, "a", encoding="utf-8") as out:
            subprocess.run(
                [
                    str(DEBOOTSTRAP),
                    "--variant=minbase",
                    "--include=" + ",".join(BASE_PACKAGES),
                    BASE_SUITE,
                    str(rootfs),
                    debian_mirror(),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=300,
            )
        for part in BASE_TRIM:
            for child in (rootfs / part).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        tarball = Path(work) / "rootfs.tar"
        subprocess.run(
            ["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True, timeout=120
        )
        changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
        podman("import", *changes, str(tarball), tag, timeout=180, log=log)
    return tag


# -- The portal's image ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portal_image(podman: Podman, base_image: str) -> Iterator[str]:
    tag = f"localhost/keygen-portal:test-{uuid.uuid4().hex[:8]}"
    podman(
        "build",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--pull=never",
        "--format",
        "docker",  # OCI images cannot carry a HEALTHCHECK
        "--build-arg",
        f"PYTHON_IMAGE={base_image}",
        "--volume",
        "/etc/ssl/certs:/etc/ssl/certs:ro",  # pip's downloads need the host's CA bundle
        "--tag",
        tag,
        str(ROOT),
        timeout=300,
        log=LOG_DIR / "portal-image-build.log",
    )
    try:
        yield tag
    finally:
        podman("rmi", "--force", tag, check=False, timeout=120)


def image_config(podman: Podman, image: str) -> dict:
    [config] = json.loads(podman("image", "inspect", image).stdout)
    return config


@pytest.fixture(scope="module")
def container(podman: Podman, portal_image: str) -> Iterator[dict]:
    """The image running with --network host against an emulator process, like test_e2e's."""
    name = f"portal-test-{uuid.uuid4().hex[:8]}"
    with emulator("--slug", "shop") as keygen, tempfile.TemporaryDirectory() as secrets:
        # Secrets as files (NAME_FILE), the way compose.yaml passes them; readable by the portal.
        os.chmod(secrets, 0o755)
        for file, value in (("keygen_product_token", keygen["token"]), ("secret_key", SECRET_KEY)):
            (Path(secrets) / file).write_text(value + "\n")
            os.chmod(Path(secrets) / file, 0o644)
        port = free_port()
        env = {
            "BIND": f"127.0.0.1:{port}",
            "KEYGEN_API_URL": keygen["url"],
            "KEYGEN_ACCOUNT_ID": keygen["account"],
            "KEYGEN_POLICY_ID": keygen["policy"],
            "KEYGEN_PRODUCT_TOKEN_FILE": "/run/secrets/keygen_product_token",
            "SECRET_KEY_FILE": "/run/secrets/secret_key",
            "COOKIE_SECURE": "false",  # plain http on loopback
            "WEB_CONCURRENCY": "1",
            "XDG_RUNTIME_DIR": "/tmp",  # as in compose.yaml: the root file system is read-only
        }
        args = ["run", "--rm", "--name", name, "--network", "host"]
        args += ["--volume", f"{secrets}:/run/secrets:ro", "--health-interval", "disable"]
        # compose.yaml's hardening, and the default SQLite journal on a volume, as documented.
        args += ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
        args += ["--security-opt", "no-new-privileges", "--volume", f"{name}:/app/instance"]
        args += [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
        command = podman.command(*args, portal_image)
        try:
            with process("container", command, podman.env) as proc:
                url = f"http://127.0.0.1:{port}"
                wait_for_http(url + "/healthz", timeout=60, process=proc)
                yield {"name": name, "url": url, "keygen": keygen, "process": proc}
        finally:
            podman("rm", "--force", "--ignore", name, check=False, timeout=60)
            podman("volume", "rm", "--force", name, check=False, timeout=60)


# -- Tests -------------------------------------------------------------------------------------


def test_a_signup_through_the_container_shows_a_key(podman, container):
    response = sign_up_over_http(container["url"], "lois@example.com")
    assert response.status_code == 200, response.text[-500:]
    key = issued_key(response.text)
    assert KEY_PATTERN.match(key)
    assert response.headers["Cache-Control"] == "no-store"
    state = keygen_state(container["keygen"]["url"])
    [user] = state["users"]
    [license] = state["licenses"]
    assert user["email"] == "lois@example.com"
    assert license["key"] == key
    assert license["owner_id"] == user["id"]
    # The default journal (SQLite in /app/instance, here a volume) is written by the portal.
    assert "portal.db" in podman("exec", container["name"], "ls", "/app/instance").stdout.split()


def test_the_portal_does_not_run_as_root(podman, container):
    for command in (["id", "-u"], ["id", "-g"]):
        result = podman("exec", container["name"], *command)
        assert result.stdout.strip() == PORTAL_UID
    # It can write its journal's volume, and nothing else: not its code, not the image.
    script = "test -w /app/instance && ! test -w /app/app.py && ! touch /app/x /opt/venv/x"
    assert podman("exec", container["name"], "sh", "-c", script).returncode == 0


def test_the_image_healthcheck_passes(podman, container, portal_image):
    config = image_config(podman, portal_image)
    healthcheck = config.get("Healthcheck") or config["Config"].get("Healthcheck")
    assert healthcheck and "/app/healthcheck.py" in " ".join(healthcheck["Test"])
    result = podman("healthcheck", "run", container["name"], check=False, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_healthcheck_fails_when_nothing_answers(podman, portal_image):
    """The check is not vacuous: pointed at a port where nothing listens, it fails."""
    result = podman(
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "/opt/venv/bin/python",
        "--env",
        f"BIND=127.0.0.1:{free_port()}",
        portal_image,
        "/app/healthcheck.py",
        check=False,
    )
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def test_no_secret_is_baked_into_the_image(podman, container, portal_image):
    config = image_config(podman, portal_image)
    env = config["Config"].get("Env") or []
    names = {entry.split("=", 1)[0] for entry in env}
    assert not names & {"SECRET_KEY", "KEYGEN_PRODUCT_TOKEN", "DATABASE_URL"}, env
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", portal_image).stdout
    everything = json.dumps(config) + history
    for value in (SECRET_KEY, container["keygen"]["token"]):
        assert value not in everything
    assert "SECRET_KEY=" not in everything and "KEYGEN_PRODUCT_TOKEN=" not in everything
    assert config["Config"].get("User") == f"{PORTAL_UID}:{PORTAL_UID}"


def test_only_the_portals_files_are_in_the_image(podman, container):
    listing = podman("exec", container["name"], "ls", "-A", "/app").stdout.split()
    for unwanted in (".venv", "tests", "test-logs", ".git", ".env", "keygen_emulator", "bench"):
        assert unwanted not in listing
    modules = {path.name for path in ROOT.glob("*.py")}
    for needed in (*modules, "templates", "static", "data", "healthcheck.py"):
        assert needed in listing


def test_it_stops_on_sigterm_in_time_and_logged_no_error(podman, container):
    """Last, as it stops the container: gunicorn as PID 1 exits on SIGTERM before any SIGKILL."""
    started = time.monotonic()
    podman("stop", "--time", "30", container["name"], timeout=60)
    container["process"].wait(timeout=30)
    assert time.monotonic() - started < 15
    log = container["process"].log_path.read_text(encoding="utf-8", errors="replace")
    assert container["process"].returncode == 0, log[-2000:]
    assert "Shutting down: Master" in log
    for line in log.splitlines():
        assert "[ERROR]" not in line and "Traceback" not in line, line
