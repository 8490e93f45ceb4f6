#!/usr/bin/env bash
# The test command (README, .ci/run): set up, typecheck, then every test with node's own runner.
set -euo pipefail
shopt -s globstar
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "typecheck: tsc --noEmit" >&2
npx tsc --noEmit -p .
exec node --import tsx --test --test-reporter=spec test/**/*.test.ts
