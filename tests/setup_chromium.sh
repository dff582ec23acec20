#!/usr/bin/env bash
# Debian's chromium, for the test that renders the audit report headless and checks its plots.
# Safe to repeat; a no-op when chromium is already there.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
