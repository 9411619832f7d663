#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (Debian's chromium and
# playwright-core for the HTML-report test), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if [ ! -x /usr/bin/chromium ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
if [ ! -d tools/report-check/node_modules/playwright-core ]; then
  (cd tools/report-check && npm ci --silent --no-audit --no-fund)
fi
cargo test --workspace
cargo test -p maple-core --no-default-features
