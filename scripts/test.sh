#!/usr/bin/env bash
# Installs what is missing, builds alloy with its tests and runs the whole suite through ctest.
# Usage: scripts/test.sh [--sanitize]
#   --sanitize: the same suite in the sanitizer build (build-asan/, see scripts/build.sh), where the
#   statistical sweeps run an eighth of their seeds (tests/test_utils.h, sweep_seeds)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ "${1:-}" == "--sanitize" ]]; then
  "$root/scripts/install-deps.sh" --fuzz
  build_dir="$root/build-asan"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  "$root/scripts/build.sh" --sanitize
else
  "$root/scripts/install-deps.sh"
  build_dir="$root/build"
  "$root/scripts/build.sh" "$build_dir"
fi
cd "$build_dir"
ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)"
