#!/usr/bin/env bash
# Robustness benchmark (issue 5): sweeps every hide-the-merge transform of alloy/perturb/perturb.h over its
# strength on dense and MoE synthetic families with parent deltas from 0.5% to 10%, runs the assay
# on each transformed 0.571 / 0.429 linear merge, and runs the null (the same transforms on an
# unrelated model and on sibling fine-tunes, independent and correlated,
# with and without their base among the candidates). Writes robustness.csv, null.csv, one SVG per
# transform and summary.md to OUT_DIR. The defaults make about 5100 assays (1900 sweep, 3200 null): about
# 55 minutes on 2 cores at the 1.5 assays/s measured under load 10 (3 Dec 2026); --quick for a smoke test.
#
# Usage: bench/robustness.sh [OUT_DIR (default bench-out/robustness)] [robustness flags...]
#   flags: --seeds N (5; 0: null only) --null-seeds N (20) or --null-runs N (at least N null runs)
#          --only T1,T2 (these rows and "none") --jobs N (cores) --layers N (4) --hidden N (128) --quick
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bench-out/robustness}
shift || true
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build" >/dev/null
start=$(date +%s)
"$root/build/bin/robustness" --out "$out" "$@"
echo "robustness: $(($(date +%s) - start)) s wall; results in $out (summary.md, robustness.csv, null.csv, *.svg)" >&2
