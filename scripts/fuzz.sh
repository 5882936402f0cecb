#!/usr/bin/env bash
# Builds the libFuzzer targets in the sanitizer build (build-asan/, shared with
# scripts/test.sh --sanitize) and runs each for SECONDS (default 60) on a copy of its seed corpus.
# Fails on any crash, leak or sanitizer report.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
"$root/scripts/install-deps.sh" --fuzz
fuzzers=()
for source in "$root"/fuzz/*_fuzzer.cpp; do fuzzers+=("$(basename "$source" .cpp)"); done
"$root/scripts/build.sh" --sanitize "${fuzzers[@]}"
for name in "${fuzzers[@]}"; do
  corpus=${name%_fuzzer}
  work=$(mktemp -d)
  cp -r "$root/fuzz/corpus/$corpus/." "$work/"
  echo "alloy: fuzzing $corpus for ${seconds}s" >&2
  # A crashing input is kept in build-asan/ (the work folder goes): rerun it with
  # build-asan/bin/NAME_fuzzer FILE.
  if ! (cd "$work" && "$root/build-asan/bin/$name" -max_total_time="$seconds" -timeout=10 -max_len=65536 \
      -artifact_prefix="$root/build-asan/$corpus-" -print_final_stats=1 "$work" 2>&1 | tail -n 12); then
    rm -rf "$work"
    echo "alloy: $name failed; its input: $(ls -t "$root"/build-asan/"$corpus"-* 2>/dev/null | head -n 1)" >&2
    exit 1
  fi
  rm -rf "$work"
done
