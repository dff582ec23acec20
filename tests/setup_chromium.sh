#!/usr/bin/env bash
# Debian's chromium and its chromedriver: the audit report is rendered headless, and `cai review`'s
# pages are driven by Selenium through /usr/bin/chromedriver (no browser or driver is downloaded).
# Safe to repeat; a no-op when both are already there.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
