#!/usr/bin/env bash
# The browser test: build web/pkg, then run web/test.mjs in headless Chromium (WebGPU on
# SwiftShader). Reports SKIPPED only when the wasm32 target cannot be installed here.
set -uo pipefail
cd "$(dirname "$0")/.."
bash web/build.sh
rc=$?
if [ $rc = 3 ]; then
  echo "web test SKIPPED: the wasm32-unknown-unknown target could not be installed on this machine"
  exit 0
elif [ $rc != 0 ]; then
  exit $rc
fi
if [ ! -d tools/report-check/node_modules/playwright-core ]; then
  (cd tools/report-check && npm ci --silent --no-audit --no-fund)
fi
node web/test.mjs
