#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements, once per change of the requirements files.
# Usage: scripts/bootstrap.sh requirements.txt|requirements-dev.txt [--system]
#   --system  also install the system packages the tests drive (Chromium), via apt-get as root.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=${1:-requirements.txt}
python=${PYTHON:-python3}

say() { printf '[bootstrap] %s\n' "$*" >&2; }
source scripts/apt-install.sh  # as_root, apt_install

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "Python 3.11 or newer is required ($python)"; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  if ! "$python" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv && "$python" -m venv .venv
  fi
fi

stamp=".venv/.installed-$(cat "$requirements" requirements.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing $requirements"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements"
  touch "$stamp"
fi

AXE_VERSION=4.14.1
AXE=.tools/node_modules/axe-core/axe.min.js

# System packages the tests drive for real: name of the package -> a file that shows it is there.
if [ "${2:-}" = "--system" ]; then
  missing=()
  have() { compgen -G "$1" >/dev/null; }
  have /usr/bin/chromium || missing+=(chromium fonts-dejavu-core)
  have "/usr/lib/postgresql/*/bin/initdb" || missing+=(postgresql)
  have /usr/sbin/nginx || missing+=(nginx)
  have /usr/bin/caddy || missing+=(caddy)
  have /usr/bin/openssl || missing+=(openssl)
  have /usr/bin/redis-server || missing+=(redis-server)
  have /usr/sbin/debootstrap || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    apt_install "${missing[@]}" || say "tests needing them will be skipped (or fail under CI)"
  fi
  # axe-core, which the browser tests inject into pages to check accessibility (from npm).
  if [ ! -f "$AXE" ]; then
    have /usr/bin/npm || apt_install nodejs npm || say "no npm: the accessibility tests will be skipped (or fail under CI)"
    if command -v npm >/dev/null; then
      say "installing axe-core $AXE_VERSION into .tools/"
      npm install --prefix .tools --no-save --no-audit --no-fund --no-package-lock \
        "axe-core@$AXE_VERSION" >/dev/null || say "could not install axe-core"
    fi
  fi
  # podman with its recommended helpers (conmon, network plugins), as the container test uses it.
  if ! have /usr/bin/podman || ! have /usr/sbin/runc; then
    say "installing podman"
    if as_root && command -v apt-get >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null \
        || say "the container test will be skipped (or fail under CI)"
    fi
  fi
fi
