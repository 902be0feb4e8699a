#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/test_app_browser.py). Never `playwright install`: it downloads
# its own browser build, which these machines cannot reach. Idempotent: returns at once when Chromium is there.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then
    sudo="sudo"
fi
echo "setup_browser: installing Debian's chromium (about 30 s)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
