#!/usr/bin/env bash
# Robustness benchmark (issue 5): sweeps every hide-the-merge transform of alloy/perturb/perturb.h over its
# strength on dense and MoE synthetic families with parent deltas from 0.5% to 10%, runs the assay
# on each transformed 0.571 / 0.429 linear merge, and runs the null (the same transforms on an
# unrelated model and on a sibling fine-tune). Writes robustness.csv, null.csv, one SVG per
# transform and summary.md to OUT_DIR. About 3 minutes on 2 cores (plus the build); --quick for a smoke test.
#
# Usage: bench/robustness.sh [OUT_DIR (default bench-out/robustness)] [robustness flags...]
#   flags: --seeds N (5) --null-seeds N (20) --jobs N (cores) --layers N (4) --hidden N (128) --quick
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bench-out/robustness}
shift || true
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build" >/dev/null
start=$(date +%s)
"$root/build/bin/robustness" --out "$out" "$@"
echo "robustness: $(($(date +%s) - start)) s wall; results in $out (summary.md, robustness.csv, null.csv, *.svg)" >&2
