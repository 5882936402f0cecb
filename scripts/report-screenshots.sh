#!/usr/bin/env bash
# Regenerates docs/report/*.png, the screenshots of the assay's HTML report in docs/assay.md: runs
# the browser test (tests/assay/test_assay_report_browser.cpp: a merge, a non-merge, a TIES merge,
# a permuted merge, each rendered by headless chromium) with ALLOY_REPORT_SCREENSHOTS set, then
# shrinks the PNGs with pngquant (Debian package pngquant; docs only, not a test dependency).
# Usage: scripts/report-screenshots.sh [BUILD_DIR]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
command -v chromium >/dev/null || { echo "report-screenshots: chromium is missing (scripts/install-deps.sh)" >&2; exit 2; }
command -v pngquant >/dev/null || { echo "report-screenshots: pngquant is missing (apt-get install -y pngquant)" >&2; exit 2; }
mkdir -p docs/report
ALLOY_REPORT_SCREENSHOTS="$PWD/docs/report" "$build/alloy_tests" --gtest_filter='AssayReportBrowser.*'
for png in docs/report/report-*.png; do
  pngquant --force --quality=60-90 --output "$png.tmp" "$png" && mv "$png.tmp" "$png"
done
ls -l docs/report/
