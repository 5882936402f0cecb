#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for SECONDS (default 60) on a copy of its
# seed corpus. Fails on any crash, leak or sanitizer report.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
"$root/scripts/install-deps.sh" --fuzz
build_dir="$root/build-fuzz"
CXX=clang++ cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DALLOY_FUZZ=ON \
  -DALLOY_TESTS=OFF >/dev/null
cmake --build "$build_dir" -j "$(nproc 2>/dev/null || echo 2)"
for fuzzer in "$build_dir"/bin/*_fuzzer; do
  name=$(basename "$fuzzer" _fuzzer)
  work=$(mktemp -d)
  cp -r "$root/fuzz/corpus/$name/." "$work/"
  echo "alloy: fuzzing $name for ${seconds}s" >&2
  (cd "$work" && "$fuzzer" -max_total_time="$seconds" -timeout=10 -max_len=65536 -print_final_stats=1 "$work" \
      2>&1 | tail -n 12)
  rm -rf "$work"
done
