#!/usr/bin/env bash
# Configures and builds alloy.
# Usage: scripts/build.sh BUILD_DIR [extra cmake args...]
#        scripts/build.sh --sanitize [TARGET...]
# --sanitize is the one sanitizer build, in build-asan/: clang, AddressSanitizer and
# UndefinedBehaviorSanitizer everywhere, the libraries instrumented for libFuzzer's coverage. The
# test suite (scripts/test.sh --sanitize) and the fuzzers (scripts/fuzz.sh) share it, so CI compiles
# the code twice (Release and sanitized), not three times. Without TARGETs it builds everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)
if [[ "${1:-}" == "--sanitize" ]]; then
  shift
  build_dir="$root/build-asan"
  targets=()
  for target in "$@"; do targets+=(--target "$target"); done
  # -O1 and line tables: what the sanitizers' reports need, in far less compile time than -O2 -g.
  CXX=clang++ cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" -DALLOY_SANITIZE=ON -DALLOY_FUZZ=ON >/dev/null
  cmake --build "$build_dir" -j "$jobs" "${targets[@]}"
  exit 0
fi
build_dir=$1
shift
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build_dir" -j "$jobs"
