#!/usr/bin/env bash
# Assay benchmark: times alloy-assay on a linear merge of two synthetic models against two
# yardsticks measured in the same run: the floor (io_floor: every byte of the three models read
# through one reused buffer, the fastest way this machine reads) and `cat` of the three models;
# prints both ratios, peak RSS and minor faults.
#
# Usage: bench/assay_bench.sh [SIZE_GB (default 1)] [WORK_DIR (default: a temp dir, removed after)]
# CANDIDATES=N (default 2, at most 64): assay against ft_1, ft_2, then base, ft_3, ft_4, ... (the
# family gets N - 1 fine-tunes); the floor and `cat` then read the suspect and all N candidates.
# HASH_CACHE=1 adds a row: alloy-assay --hash-cache DIR with a warm cache (filled by one run first),
# so the audit record's sha256 of every input comes from the cache instead of a second read.
# SAMPLE=FRACTION adds a row: alloy-assay --sample FRACTION (a seeded random share of every
# tensor's rows, no file hashes), its ratio to the full assay's time (and to the warm-cache full
# assay's when HASH_CACHE=1), and whether its verdict and method are the full assay's.
# DISGUISE=KIND adds a row: the assay of the merge disguised by `alloy-synth perturb --kind KIND`
# (permute-neurons, permute-heads, rescale-neurons, rotate-residual, ...), whose alignment is the
# extra work, and the share of the disguise's permutations it undid; with SAMPLE too, a row for
# the sampled assay of the disguised merge and its ratio to that merge's full assay.
# SPARSE=METHOD (ties, dare_ties, della, breadcrumbs_ties, ...) adds a row: the assay, against
# ft_1, ft_2 and base, of a METHOD merge of ft_1 and ft_2 on base (weights 0.571 / 0.429, densities
# 0.5), where the sparse-merge statistics are the extra work; its ratio to `cat` of those four
# models, and whether the verdict names METHOD.
# Targets (issue 14): assay <= 2x a `cat` of its inputs; peak RSS flat in the number of candidates;
# a 1% sampled assay <= 0.1x the full assay's time, with the same verdict.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-1}
work=${2:-$(mktemp -d /tmp/alloy-assay-bench.XXXXXX)}
keep_work=${2:+1}
repeat=${REPEAT:-2}
candidates=${CANDIDATES:-2}
fine_tunes=$(( candidates > 2 ? candidates - 1 : 2 ))
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build" >/dev/null
bin="$root/build/bin"
cleanup() { [[ -n "${keep_work:-}" ]] || rm -rf "$work"; }
trap cleanup EXIT

echo "alloy assay benchmark: models of ${size} GB (bf16), $(nproc) cores, best of $repeat" >&2
if [[ ! -d "$work/models/ft_$fine_tunes" ]]; then
  "$bin/alloy-synth" family "$work/models" --overwrite --size-gb "$size" --fine-tunes "$fine_tunes" --unrelated 0 >&2
fi
cd "$work/models"
if [[ ! -d merged ]]; then
  cat > rio.yml <<YAML
merge_method: linear
models:
  - model: ft_1
    parameters: {weight: 0.571}
  - model: ft_2
    parameters: {weight: 0.429}
dtype: bfloat16
YAML
  "$bin/alloy-merge" -q rio.yml merged >&2
fi

# measure COMMAND...: prints "seconds peak_kb minor_faults" of the fastest of $repeat runs.
measure() {
  local best="" log="$work/time.log"
  for _ in $(seq "$repeat"); do
    sync
    /usr/bin/time -f "%e %M %R" -o "$log" "$@" >/dev/null 2>"$work/stderr.log" || { cat "$work/stderr.log" >&2; return 1; }
    if [[ -z "$best" ]] || awk -v a="$(cut -d' ' -f1 "$log")" -v b="$(cut -d' ' -f1 <<<"$best")" 'BEGIN{exit !(a<b)}'; then
      best=$(cat "$log")
    fi
  done
  echo "$best"
}

names=(ft_1 ft_2)
(( candidates > 2 )) && names+=(base)
for ((i = 3; i < candidates; ++i)); do names+=("ft_$i"); done
files=(merged/*.safetensors)
for n in "${names[@]}"; do files+=("$n"/*.safetensors); done
cat "${files[@]}" >/dev/null  # warm the page cache once
read -r read_s read_kb read_faults < <(measure "$bin/io_floor" merged "${names[@]}")
read -r cat_s _ _ < <(measure bash -c 'cat "$@" >/dev/null' _ "${files[@]}")
read -r assay_s assay_kb assay_faults < <(measure "$bin/alloy-assay" -q merged "${names[@]}" --json "$work/assay.json")
ratio=$(awk -v m="$assay_s" -v c="$read_s" 'BEGIN { printf "%.2f", (c > 0 ? m / c : 0) }')
ratio_cat=$(awk -v m="$assay_s" -v c="$cat_s" 'BEGIN { printf "%.2f", (c > 0 ? m / c : 0) }')
printf "%-12s %10s %12s %12s\n" run seconds peak_rss_MB minor_faults
echo "candidates: ${#names[@]}"
printf "%-12s %10s %12d %12d\n" floor-read "$read_s" $((read_kb / 1024)) "$read_faults"
printf "%-12s %10s\n" cat "$cat_s"
printf "%-12s %10s %12d %12d\n" alloy-assay "$assay_s" $((assay_kb / 1024)) "$assay_faults"
echo "ratio assay/floor: ${ratio}x  assay/cat: ${ratio_cat}x"
if [[ "${HASH_CACHE:-0}" == 1 ]]; then
  cache="$work/hash-cache"
  rm -rf "$cache"
  "$bin/alloy-assay" -q merged "${names[@]}" --hash-cache "$cache" >/dev/null  # fills the cache
  read -r warm_s warm_kb warm_faults < <(measure "$bin/alloy-assay" -q merged "${names[@]}" --hash-cache "$cache")
  printf "%-12s %10s %12d %12d\n" assay/hc-warm "$warm_s" $((warm_kb / 1024)) "$warm_faults"
  echo "ratio assay/hc-warm over cat: $(awk -v m="$warm_s" -v c="$cat_s" 'BEGIN { printf "%.2f", (c > 0 ? m / c : 0) }')x"
  rm -rf "$cache"
fi
python3 - "$work/assay.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = {c["path"]: round(c["weight"], 4) for c in d["candidates"]}
print("verdict:", d["verdict"], d["method"], "weights:", w)
PY
# compare_sampled FULL_JSON SAMPLED_JSON LABEL: the sampled assay's verdict, weights and share read,
# and whether its verdict and method are the full assay's.
compare_sampled() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
full, sampled = (json.load(open(p)) for p in sys.argv[1:3])
w = {c["path"]: round(c["weight"], 4) for c in sampled["candidates"]}
same = (full["verdict"], full["method"]) == (sampled["verdict"], sampled["method"])
print(sys.argv[3], "verdict:", sampled["verdict"], sampled["method"], "weights:", w,
      "read:", sampled["sampling"]["elements_read"], "of", sampled["sampling"]["elements_total"], "elements;",
      "same verdict as the full assay" if same else "VERDICT DIFFERS from the full assay")
PY
}
if [[ -n "${SAMPLE:-}" ]]; then
  read -r s_s s_kb s_faults < <(measure "$bin/alloy-assay" -q merged "${names[@]}" --sample "$SAMPLE" --json "$work/assay-sampled.json")
  printf "%-12s %10s %12d %12d\n" "assay/$SAMPLE" "$s_s" $((s_kb / 1024)) "$s_faults"
  echo "ratio sampled/full assay: $(awk -v m="$s_s" -v c="$assay_s" 'BEGIN { printf "%.3f", (c > 0 ? m / c : 0) }')x"
  if [[ -n "${warm_s:-}" ]]; then
    echo "ratio sampled/hc-warm full assay: $(awk -v m="$s_s" -v c="$warm_s" 'BEGIN { printf "%.3f", (c > 0 ? m / c : 0) }')x"
  fi
  compare_sampled "$work/assay.json" "$work/assay-sampled.json" "sampled"
fi
if [[ -n "${DISGUISE:-}" ]]; then
  disguised="disguised-$DISGUISE"
  [[ -d "$disguised" ]] || "$bin/alloy-synth" perturb merged "$disguised" --kind "$DISGUISE" --seed 5 >&2
  files_d=("$disguised"/*.safetensors)
  for n in "${names[@]}"; do files_d+=("$n"/*.safetensors); done
  cat "${files_d[@]}" >/dev/null
  read -r dcat_s _ _ < <(measure bash -c 'cat "$@" >/dev/null' _ "${files_d[@]}")
  read -r d_s d_kb d_faults < <(measure "$bin/alloy-assay" -q "$disguised" "${names[@]}" --json "$work/assay-disguised.json")
  printf "%-12s %10s %12d %12d\n" "assay/$DISGUISE" "$d_s" $((d_kb / 1024)) "$d_faults"
  echo "ratio assay/$DISGUISE over cat: $(awk -v m="$d_s" -v c="$dcat_s" 'BEGIN { printf "%.2f", (c > 0 ? m / c : 0) }')x"
  python3 - "$work/assay-disguised.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = {c["path"]: round(c["weight"], 4) for c in d["candidates"]}
kinds = {}
for p in d.get("permutations", []):
    kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
print("disguised verdict:", d["verdict"], d["method"], "weights:", w, "alignment:", kinds)
PY
  if [[ -n "${SAMPLE:-}" ]]; then
    read -r ds_s ds_kb ds_faults < <(measure "$bin/alloy-assay" -q "$disguised" "${names[@]}" --sample "$SAMPLE" \
      --json "$work/assay-disguised-sampled.json")
    printf "%-12s %10s %12d %12d\n" "assay/$DISGUISE/$SAMPLE" "$ds_s" $((ds_kb / 1024)) "$ds_faults"
    echo "ratio sampled/full assay of $DISGUISE: $(awk -v m="$ds_s" -v c="$d_s" 'BEGIN { printf "%.3f", (c > 0 ? m / c : 0) }')x"
    compare_sampled "$work/assay-disguised.json" "$work/assay-disguised-sampled.json" "sampled disguised"
  fi
fi
if [[ -n "${SPARSE:-}" ]]; then
  # A sparsifying merge of the two parents on the base: the assay's sparse-merge statistics (the
  # magnitude and ratio histograms, the kept sets) are the extra work over a linear merge's.
  sparse="sparse-$SPARSE"
  if [[ ! -d "$sparse" ]]; then
    cat > "$sparse.yml" <<YAML
merge_method: $SPARSE
base_model: base
models:
  - model: ft_1
    parameters: {weight: 0.571, density: 0.5}
  - model: ft_2
    parameters: {weight: 0.429, density: 0.5}
dtype: bfloat16
YAML
    "$bin/alloy-merge" -q --no-provenance-hashes "$sparse.yml" "$sparse" >&2
  fi
  files_s=("$sparse"/*.safetensors ft_1/*.safetensors ft_2/*.safetensors base/*.safetensors)
  cat "${files_s[@]}" >/dev/null
  read -r scat_s _ _ < <(measure bash -c 'cat "$@" >/dev/null' _ "${files_s[@]}")
  read -r sp_s sp_kb sp_faults < <(measure "$bin/alloy-assay" -q "$sparse" ft_1 ft_2 base --json "$work/assay-sparse.json")
  printf "%-12s %10s %12d %12d\n" "assay/$SPARSE" "$sp_s" $((sp_kb / 1024)) "$sp_faults"
  echo "ratio assay/$SPARSE over cat: $(awk -v m="$sp_s" -v c="$scat_s" 'BEGIN { printf "%.2f", (c > 0 ? m / c : 0) }')x"
  python3 - "$work/assay-sparse.json" "$SPARSE" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = {c["path"]: round(c["weight"], 4) for c in d["candidates"]}
print(f"{sys.argv[2]} merge's verdict:", d["verdict"], d["method"], "weights:", w,
      "(the method named)" if d["method"] == sys.argv[2] else "(METHOD DIFFERS)")
PY
fi
