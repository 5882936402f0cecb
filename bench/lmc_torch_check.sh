#!/usr/bin/env bash
# A model trained by PyTorch and saved in alloy-lmc's layout evaluates to the same test loss in
# `alloy-lmc eval` as in PyTorch (docs/classroom.md). Installs python3-torch if missing.
# Usage: bench/lmc_torch_check.sh [EPOCHS]   (from the project root, after building into build-lmc)
set -euo pipefail
epochs=${1:-1}
build=${BUILD_DIR:-build-lmc}
py=${PYTHON:-/usr/bin/python3}   # Debian's python3, where python3-torch installs
if ! "$py" -c "import torch" 2>/dev/null; then
  sudo_cmd=(); if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3-torch python3-numpy >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
torch_json=$("$py" "$(dirname "$0")/lmc_torch.py" export "$tmp/torch_mlp" --epochs "$epochs" --seed 3)
"$build/bin/alloy-lmc" eval "$tmp/torch_mlp" --json "$tmp/eval.json" >/dev/null
python3 - "$torch_json" "$tmp/eval.json" <<'PY'
import json, sys
t = json.loads(sys.argv[1])
a = json.load(open(sys.argv[2]))["test"]
diff = abs(t["test_loss"] - a["loss"])
print(f"PyTorch:   test loss {t['test_loss']:.6f}  accuracy {100 * t['test_accuracy']:.2f}%")
print(f"alloy-lmc: test loss {a['loss']:.6f}  accuracy {100 * a['accuracy']:.2f}%")
print(f"difference in test loss: {diff:.2e} ({'OK' if diff <= 1e-4 else 'FAIL'}: tolerance 1e-4)")
sys.exit(0 if diff <= 1e-4 else 1)
PY
