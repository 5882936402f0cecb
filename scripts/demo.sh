#!/usr/bin/env bash
# Installs what is missing, builds alloy, generates a small family of synthetic models (a base,
# two fine-tunes, an unrelated model) and shows what alloy makes of them.
# Usage: scripts/demo.sh [OUT_DIR]   (default: demo-out/ in the project root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/demo-out"}
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build" >/dev/null
bin="$root/build/bin"

echo "== alloy-synth: a Qwen-MoE-like base model, two fine-tunes of it and an unrelated model"
"$bin/alloy-synth" family "$out/models" --overwrite --family moe --layers 4 --hidden 128 \
  --intermediate 256 --experts 8 --moe-intermediate 64 --vocab 512 --fine-tunes 2 --unrelated 1 \
  --delta 0.05
ls "$out/models"

echo
echo "== alloy-inspect: validate and summarise the first fine-tune"
"$bin/alloy-inspect" "$out/models/ft_1" | sed -n '1p;/^per dtype/,$p'

if [[ -x "$bin/alloy-merge" ]]; then
  echo
  echo "== alloy-merge: blend the two fine-tunes 0.571 / 0.429 (the Rio recipe, in miniature)"
  cat > "$out/rio.yml" <<YAML
merge_method: linear
models:
  - model: models/ft_1
    parameters:
      weight: 0.571
  - model: models/ft_2
    parameters:
      weight: 0.429
dtype: bfloat16
YAML
  (cd "$out" && "$bin/alloy-merge" rio.yml merged --overwrite)
  ls "$out/merged"
  sed -n '1,12p' "$out/merged/README.md"
fi

if [[ -x "$bin/alloy-assay" ]]; then
  echo
  echo "== alloy-assay: what is the merged model made of?"
  (cd "$out" && "$bin/alloy-assay" merged models/base models/ft_1 models/ft_2 models/unrelated_1 \
     --json assay.json --recipe recovered.yml --report assay.html)
  echo
  echo "== alloy-synth perturb + alloy-assay: add noise (half the merge's own deviation from the base),"
  echo "   then permute every expert and every neuron; is the merge still found?"
  "$bin/alloy-synth" perturb "$out/merged" "$out/noisy" --overwrite --kind noise --strength 0.5 \
    --reference "$out/models/base" --seed 9
  "$bin/alloy-synth" perturb "$out/noisy" "$out/hidden" --overwrite --kind permute-experts --seed 7
  "$bin/alloy-synth" perturb "$out/hidden" "$out/disguised" --overwrite --kind permute-neurons --seed 8
  (cd "$out" && "$bin/alloy-assay" disguised models/base models/ft_1 models/ft_2 models/unrelated_1 |
     grep -E '^(verdict|evidence|compared|rebuild check|unexplained by the recipe|alignment):')
  echo "(full report: $out/assay.html, recovered recipe: $out/recovered.yml)"
fi
echo
echo "demo output is in $out"
