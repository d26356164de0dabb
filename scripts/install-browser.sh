#!/usr/bin/env bash
# Debian's Chromium for the web-page test (Playwright drives it via its executable path; no browser download).
# Best effort: without it the browser test skips with a reason, everything else runs.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }; then
    echo "warning: could not install Debian's chromium; tests/serve/test_browser.py will be skipped" >&2
fi
exit 0
