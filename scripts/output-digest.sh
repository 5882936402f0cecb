#!/usr/bin/env bash
# Prints one sha256 line per file that alloy writes for a fixed set of inputs: every recipe in
# recipes/ on a dense and a MoE synthetic family (the multi-module ones on a Qwen3.5-MoE with its
# vision tower; the bf16 ones also in float16 and float32, and on a float16 family), the assay's
# JSON, recipe and report, a sampled assay's JSON, and every perturb transform with the assay's
# JSON of its output. Run it before and after a change that must not change behaviour and diff the
# two listings (they are identical when every output byte is).
# Usage: scripts/output-digest.sh BIN_DIR > digest.txt
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "${1:?usage: scripts/output-digest.sh BIN_DIR}" && pwd)
work=$(mktemp -d)
# The assay's audit record and the merge's provenance carry the time: fix it (reproducible-builds'
# SOURCE_DATE_EPOCH) so that two runs can be compared byte for byte.
export SOURCE_DATE_EPOCH=0
trap 'rm -rf "$work"' EXIT

"$bin/alloy-synth" family "$work/dense" --fine-tunes 3 --unrelated 1 >/dev/null
"$bin/alloy-synth" family "$work/moe" --family moe --fine-tunes 3 --unrelated 1 >/dev/null

for family in dense moe; do
  cd "$work/$family"
  "$bin/alloy-extract-lora" -q base ft_1 ft_1_lora --rank 8 2>/dev/null  # recipes/lora.yml applies it
  for recipe in "$root"/recipes/*.yml; do
    name=$(basename "$recipe" .yml)
    [[ $name == modules_* ]] && continue  # multi-module recipes: the vision family below
    "$bin/alloy-merge" "$recipe" "merged-$name" >/dev/null 2>&1
  done
  "$bin/alloy-assay" merged-linear base ft_1 ft_2 ft_3 unrelated_1 --json assay.json \
    --recipe recovered.yml --report assay.html >/dev/null
  "$bin/alloy-assay" merged-ties base ft_1 ft_2 ft_3 unrelated_1 --json assay-ties.json >/dev/null
  "$bin/alloy-assay" -q merged-linear base ft_1 ft_2 ft_3 unrelated_1 --sample 0.05 --json assay-sampled.json >/dev/null
  for kind in noise reround finetune permute-experts permute-neurons permute-heads \
              rescale-neurons fold-norms stack-layers; do
    if [[ $family == dense && $kind == permute-experts ]]; then continue; fi
    extra=()
    if [[ $kind == noise ]]; then extra=(--reference base); fi
    if [[ $kind == stack-layers ]]; then extra=(--layer-map 0,1,1,2,3); fi
    "$bin/alloy-synth" perturb merged-linear "perturbed-$kind" --kind "$kind" --seed 5 \
      "${extra[@]}" >/dev/null
    # The assay of each disguise: its alignment (permutations, scales, rotations, stacking) and
    # verdict. A nonzero exit is listed: it is behaviour too.
    "$bin/alloy-assay" -q "perturbed-$kind" base ft_1 ft_2 ft_3 unrelated_1 --json "assay-perturbed-$kind.json" \
      >/dev/null 2>&1 || echo "assay of $family perturbed-$kind: exit $?"
  done
done

# The same recipes in the other compute dtypes: the bf16 models merged in float16 (every input
# rounded on load) and in float32, and a float16 family merged in float16. A recipe that fails
# there is listed as failed: refusing is behaviour too.
other_dtypes() {  # other_dtypes DIR DTYPE...: each bf16 recipe in each DTYPE, merged in DIR
  local dir=$1 dtype recipe name
  shift
  cd "$dir"
  for recipe in "$root"/recipes/*.yml; do
    name=$(basename "$recipe" .yml)
    [[ $name == modules_* ]] && continue
    grep -q '^dtype: bfloat16$' "$recipe" || continue
    for dtype in "$@"; do
      sed "s/^dtype: bfloat16$/dtype: $dtype/" "$recipe" > "$work/recipe-$dtype.yml"
      "$bin/alloy-merge" "$work/recipe-$dtype.yml" "merged-$name-$dtype" >/dev/null 2>&1 || echo "$name in $dtype: refused"
    done
  done
}
other_dtypes "$work/dense" float16 float32
"$bin/alloy-synth" family "$work/dense16" --dtype f16 --fine-tunes 3 --unrelated 0 >/dev/null
(cd "$work/dense16" && "$bin/alloy-extract-lora" -q base ft_1 ft_1_lora --rank 8 2>/dev/null)
other_dtypes "$work/dense16" float16

# The multi-module recipes (modules:) need a model with modules: a Qwen3.5-MoE with its vision tower.
"$bin/alloy-synth" family "$work/vision" --family qwen3_5_moe --fine-tunes 2 --unrelated 0 >/dev/null
cd "$work/vision"
for recipe in "$root"/recipes/modules_*.yml; do
  "$bin/alloy-merge" "$recipe" "merged-$(basename "$recipe" .yml)" >/dev/null 2>&1
done

# The assay's and the merge's outputs carry the working directory's paths in places; listing the
# files relative to the work directory keeps the digest independent of where it ran.
cd "$work"
find . -type f ! -path './*/base/*' ! -path './*/ft_*' ! -path './*/unrelated_*' ! -name 'recipe-*.yml' -print0 |
  sort -z | xargs -0 sha256sum | sed "s#$work#WORK#g"
