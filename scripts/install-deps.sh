#!/usr/bin/env bash
# Installs the Debian packages alloy needs, only those that are missing. Safe to run repeatedly.
# Usage: scripts/install-deps.sh [--fuzz]   (--fuzz also installs clang for the libFuzzer targets)
set -euo pipefail

packages=(cmake make g++ libyaml-cpp-dev libeigen3-dev libcli11-dev nlohmann-json3-dev
          libgtest-dev googletest python3 zlib1g-dev dataset-fashion-mnist)
if [[ "${1:-}" == "--fuzz" ]]; then
  packages+=(clang libclang-rt-dev libomp-dev)
fi

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
