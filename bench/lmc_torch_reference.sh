#!/usr/bin/env bash
# The PyTorch + SciPy reference of exercises 1 and 2 of docs/classroom.md: two seeds trained in
# PyTorch with the classroom's set-up (784-512-512-10, 8 epochs, SGD lr 0.05 momentum 0.9, batch
# 128, He init), the naive barrier and the barrier after weight matching with
# scipy.optimize.linear_sum_assignment (bench/lmc_torch.py reference). Then alloy-lmc runs path,
# align and path again on the same two PyTorch-trained models, so that the two implementations are
# also compared on the same networks. Writes FIGURE_DIR/torch_reference.json. Installs
# python3-torch and python3-scipy if missing (the tests never need them).
# Usage: bench/lmc_torch_reference.sh [WORK_DIR] [FIGURE_DIR]   (from the project root, after
#   building into build-lmc or BUILD_DIR); SEEDS="1 2" (the PyTorch seeds), INIT=he|torch, THREADS=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/lmc-torch-reference}
figs=${2:-$root/docs/classroom}
build=${BUILD_DIR:-$root/build-lmc}
py=${PYTHON:-/usr/bin/python3}   # Debian's python3, where python3-torch installs
seeds=(${SEEDS:-1 2})
init=${INIT:-he}
threads=${THREADS:-1}
if ! "$py" -c "import torch, scipy" 2>/dev/null; then
  echo "lmc_torch_reference: installing python3-torch and python3-scipy" >&2
  sudo_cmd=(); if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3-torch python3-scipy python3-numpy >/dev/null
fi
mkdir -p "$work" "$figs"
# Debian's PyTorch calls the system BLAS; OpenBLAS, when installed, is preloaded (see bench/lmc_bench.sh).
openblas_dir=/usr/lib/x86_64-linux-gnu/openblas-pthread
blas_env=()
[[ -e $openblas_dir/libblas.so.3 ]] && blas_env=(LD_LIBRARY_PATH=$openblas_dir)
# The PyTorch part (minutes) is skipped when WORK_DIR already holds its result for these seeds and init.
if ! "$py" -c "import json, sys; d = json.load(open(sys.argv[1])); sys.exit(d['seeds'] != [int(sys.argv[2]), int(sys.argv[3])] or d['init'] != sys.argv[4])" \
    "$work/torch.json" "${seeds[@]}" "$init" 2>/dev/null; then
  env "${blas_env[@]}" OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
    "$py" "$root/bench/lmc_torch.py" reference "$work" --seeds "${seeds[@]}" --init "$init" --threads "$threads" \
    >"$work/torch.json.tmp"
  mv "$work/torch.json.tmp" "$work/torch.json"
fi
a=$work/torch_seed${seeds[0]} b=$work/torch_seed${seeds[1]}
lmc=("$build/bin/alloy-lmc" -j "$threads")
"${lmc[@]}" path "$a" "$b" --json "$work/alloy_naive.json" >/dev/null
"${lmc[@]}" align "$a" "$b" -o "$work/alloy_wm" --method weight --overwrite --json "$work/alloy_perms.json" >/dev/null
"${lmc[@]}" path "$a" "$work/alloy_wm" --json "$work/alloy_wm.json" >/dev/null
"$py" - "$work" "$figs/torch_reference.json" "${seeds[1]}" <<'PY'
import json, struct, sys
work, out, seed_b = sys.argv[1], sys.argv[2], sys.argv[3]

def tensors(model):
    raw = open(f"{model}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    return {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}

torch = json.load(open(f"{work}/torch.json"))
keys = ("loss_barrier", "accuracy_barrier", "train_loss_barrier")
runs = {name: json.load(open(f"{work}/alloy_{name}.json")) for name in ("naive", "wm")}
alloy = {name: {k: run[k] for k in keys} for name, run in runs.items()}
alloy["wm"]["passes"] = json.load(open(f"{work}/alloy_perms.json")).get("passes")
# alloy-lmc's weight matching against SciPy's: the same permuted model, byte for byte?
ours, theirs = tensors(f"{work}/alloy_wm"), tensors(f"{work}/torch_seed{seed_b}_wm")
alloy["wm"]["same_bytes_as_scipy_weight_matching"] = ours == theirs
# alloy-lmc's evaluation of the PyTorch models against PyTorch's, along both paths.
diff = max(abs(p["test_loss"] - q["test_loss"]) for name, ref in (("naive", "naive"), ("wm", "weight_matched"))
           for p, q in zip(runs[name]["points"], torch[ref]["points"]))
doc = {"pytorch": torch, "alloy_lmc_on_the_pytorch_models": {
    "naive": alloy["naive"], "weight_matched": alloy["wm"], "max_test_loss_difference_along_the_paths": diff}}
json.dump(doc, open(out, "w"), indent=2)
print(f"alloy-lmc's weight matching gives the same bytes as SciPy's: {alloy['wm']['same_bytes_as_scipy_weight_matching']}; "
      f"largest test-loss difference along the paths (alloy-lmc eval vs PyTorch): {diff:.2e}")
print("PyTorch endpoints: " + ", ".join(
    f"seed {e['seed']} test accuracy {100 * e['test_accuracy']:.2f}% loss {e['test_loss']:.4f}" for e in torch["endpoints"]))
print(f"weight matching (SciPy): {torch['weight_matching']['passes']} passes, "
      f"{torch['weight_matching']['units_moved']} of {torch['weight_matching']['units']} units moved")
for label, t, a in (("naive", torch["naive"], alloy["naive"]), ("weight matching", torch["weight_matched"], alloy["wm"])):
    print(f"{label:16s} test-loss barrier: PyTorch+SciPy {t['loss_barrier']:.4f}, alloy-lmc on the same models "
          f"{a['loss_barrier']:.4f}; train-loss barrier {t['train_loss_barrier']:.4f} / {a['train_loss_barrier']:.4f}; "
          f"test-accuracy barrier {100 * t['accuracy_barrier']:.2f} / {100 * a['accuracy_barrier']:.2f} pts")
print(f"wrote {out}")
PY
