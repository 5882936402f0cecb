#!/usr/bin/env bash
# Training throughput of alloy-lmc against PyTorch on the same machine, the same MLP (784-512-512-10),
# batch 128, SGD with momentum, the same thread count. Installs Debian's python3-torch if missing
# (the tests never need it). Usage: bench/lmc_bench.sh [THREADS] [SAMPLES]   (from the project root,
# after building into build-lmc or BUILD_DIR)
set -euo pipefail
threads=${1:-$(nproc)}
samples=${2:-60000}
build=${BUILD_DIR:-build-lmc}
py=${PYTHON:-/usr/bin/python3}   # Debian's python3, where python3-torch installs
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "lmc_bench: installing python3-torch" >&2
  sudo_cmd=(); if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3-torch python3-numpy >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/bin/alloy-lmc" -j "$threads" train "$tmp/m" --layers 512,512 --epochs 1 --seed 1 --batch 128 \
  --lr 0.05 --momentum 0.9 --limit "$samples" --json "$tmp/alloy.json" >/dev/null 2>&1
# Debian's python3-torch calls the system BLAS (libblas.so.3: the reference BLAS unless an optimised
# one is installed). When Debian's libopenblas0-pthread is present, PyTorch is also timed with
# OpenBLAS preloaded, which is the fairer comparison.
torch_json=$(OMP_NUM_THREADS=$threads "$py" "$(dirname "$0")/lmc_torch.py" bench --threads "$threads" --samples "$samples")
openblas_json="{}"
openblas_dir=/usr/lib/x86_64-linux-gnu/openblas-pthread
if [[ -e $openblas_dir/libblas.so.3 ]]; then
  openblas_json=$(OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads LD_LIBRARY_PATH=$openblas_dir \
    "$py" "$(dirname "$0")/lmc_torch.py" bench --threads "$threads" --samples "$samples")
fi
python3 - "$tmp/alloy.json" "$torch_json" "$openblas_json" "$threads" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
t = json.loads(sys.argv[2])
o = json.loads(sys.argv[3])
alloy = a["train_samples_per_second"]
print(f"threads: {sys.argv[4]}   batch 128, 784-512-512-10, SGD momentum")
print(f"alloy-lmc train:            {alloy:10.0f} samples/s   ({a['gemm_kernel']} kernels)")
print(f"PyTorch (system BLAS):      {t['samples_per_second']:10.0f} samples/s   ({t['framework']})")
if o:
    print(f"PyTorch (OpenBLAS):         {o['samples_per_second']:10.0f} samples/s")
print(f"ratio alloy/PyTorch (system BLAS): {alloy / t['samples_per_second']:.2f}")
if o:
    print(f"ratio alloy/PyTorch (OpenBLAS):    {alloy / o['samples_per_second']:.2f}")
PY
