#!/usr/bin/env bash
# Installs the Debian packages alloy needs, only those that are missing. Safe to run repeatedly.
# Usage: scripts/install-deps.sh [--fuzz] [--no-browser]
#   --fuzz        also installs clang for the libFuzzer targets
#   --no-browser  skips chromium, the optional test dependency of AssayReportBrowser (the HTML
#                 report's screenshots; the test skips itself without it)
set -euo pipefail

packages=(cmake make g++ libyaml-cpp-dev libeigen3-dev libcli11-dev nlohmann-json3-dev
          libgtest-dev googletest python3 zlib1g-dev dataset-fashion-mnist)
browser=1
for arg in "$@"; do
  case "$arg" in
    --fuzz) packages+=(clang libclang-rt-dev libomp-dev) ;;
    --no-browser) browser=0 ;;
    *) echo "install-deps.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
if ((browser)); then packages+=(chromium); fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} > 0)); then
  echo "alloy: installing missing packages: ${missing[*]}" >&2
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
