#!/usr/bin/env bash
# Installs Debian packages with apt-get as root, its package lists updated once (a stamp in /tmp).
# bootstrap.sh sources it for as_root and apt_install.

as_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
  if ! as_root || ! command -v apt-get >/dev/null; then
    say "cannot install $* (not root, or no apt-get): install them yourself"
    return 1
  fi
  if [ ! -f /tmp/.portal-apt-updated ]; then
    apt-get update -qq && touch /tmp/.portal-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
