#!/usr/bin/env bash
# Merge benchmark: times alloy-merge (linear, slerp, ties, dare_ties) against two yardsticks
# measured in the same run: the honest floor (io_floor: every input byte read and the output's
# bytes written the fastest way this machine allows: the faster of reading then writing and of
# writing on a second thread during the reads, with the buffer sizes measured by
# `io_floor --sweep` at the start) and `cat` of the inputs plus `cp` of one input of the output's
# size. It reports each merge's time as a ratio to both, its peak RSS and minor faults.
#
# Usage: bench/merge_bench.sh [SIZE_GB (default 2)] [WORK_DIR (default: a temp dir, removed after)]
# REPEAT=N (default 2) times every copy and merge N times, in N interleaved rounds (floor, cat + cp,
# merge), and reports the fastest of each (the peak RSS and faults are those of the fastest
# merge). Dirty pages are flushed (sync) before each timed run, so that one run's write-back does
# not throttle the next.
# MERGE_FLAGS="--no-provenance-hashes" passes extra flags to alloy-merge (here: skip the sha256 of
# the input and output files, to see what the hashing costs).
# HASH_CACHE=1 adds two rows each for linear and slerp: alloy-merge --hash-cache DIR with an empty
# DIR (cold: one run, which hashes and stores every input) and then with the filled DIR (warm: best
# of REPEAT; the inputs' digests come from the cache, the outputs are still hashed as written).
# COMPUTE_DTYPE=float16 or float32 sets the recipes' dtype (default bfloat16); with float32 the
# output stays bf16 (out_dtype), so that every row writes the same bytes as the floor. The models
# are bf16 either way: float16 converts and rounds every input on load, float32 widens it.
# Targets (issue 14): linear and slerp <= 2.5x the floor with provenance hashes, <= 1.5x without;
# ties and dare_ties <= 3x, peak RSS < 1 GiB.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-2}
work=${2:-$(mktemp -d /tmp/alloy-bench.XXXXXX)}
keep_work=${2:+1}
repeat=${REPEAT:-2}
compute_dtype=${COMPUTE_DTYPE:-bfloat16}
case $compute_dtype in
  bfloat16 | float16) dtype_lines="dtype: $compute_dtype" ;;
  float32) dtype_lines=$'dtype: float32\nout_dtype: bfloat16' ;;
  *) echo "merge_bench.sh: COMPUTE_DTYPE must be bfloat16, float16 or float32, not '$compute_dtype'" >&2; exit 2 ;;
esac
read -r -a merge_flags <<< "${MERGE_FLAGS:-}"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build" >/dev/null
bin="$root/build/bin"
cleanup() { [[ -n "${keep_work:-}" ]] || rm -rf "$work"; }
trap cleanup EXIT

echo "alloy merge benchmark: models of ${size} GB (bf16), compute dtype $compute_dtype, $(nproc) cores, best of $repeat${MERGE_FLAGS:+, alloy-merge $MERGE_FLAGS}" >&2
if [[ ! -d "$work/models/ft_2" ]]; then
  "$bin/alloy-synth" family "$work/models" --overwrite --size-gb "$size" --fine-tunes 2 --unrelated 0 >&2
fi
out_bytes=$(du -b "$work/models/ft_1/model.safetensors" | cut -f1)
# The buffer sizes of the floor: measured here, now, over all three models and an output file.
cat "$work"/models/{base,ft_1,ft_2}/*.safetensors >/dev/null
"$bin/io_floor" --sweep --out "$work/sweep.bin" --out-bytes "$out_bytes" "$work"/models/{base,ft_1,ft_2} > "$work/sweep.json"
read -r read_buffer write_buffer < <(python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(d["best_read_buffer"], d["best_write_buffer"])' "$work/sweep.json")
echo "io_floor --sweep: fastest read buffer $read_buffer, write buffer $write_buffer bytes" >&2

# faster A B: whether A seconds is less than B seconds, or B is empty (nothing timed yet).
faster() { [[ -z "$2" ]] || awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# measure COMMAND...: runs the command under /usr/bin/time $repeat times (after a sync each);
# prints "seconds peak_kb minor_faults" of the fastest run. FRESH=PATH removes PATH (the run's
# output) before each run, outside the clock: every run, the floor's and the merge's alike, writes
# a new file. Overwriting the last run's synced output instead put the truncation of 1 GB of
# written blocks on the clock (0.3-2 s here), which inflated the floor 2-3x and made it swing.
measure() {
  local log="$work/time.log" best=""
  for ((r = 0; r < repeat; ++r)); do
    [[ -z "${FRESH:-}" ]] || rm -rf "$FRESH"
    sync
    /usr/bin/time -f "%e %M %R" -o "$log" "$@" >/dev/null 2>"$work/stderr.log" || { cat "$work/stderr.log" >&2; return 1; }
    if faster "$(cut -d' ' -f1 "$log")" "${best%% *}"; then best=$(cat "$log"); fi
  done
  echo "$best"
}

cat > "$work/models/linear.yml" <<YAML
merge_method: linear
models:
  - model: ft_1
    parameters: {weight: 0.571}
  - model: ft_2
    parameters: {weight: 0.429}
$dtype_lines
YAML
cat > "$work/models/slerp.yml" <<YAML
merge_method: slerp
base_model: base
models: [base, ft_1]
parameters: {t: 0.4}
$dtype_lines
YAML
cat > "$work/models/ties.yml" <<YAML
merge_method: ties
base_model: base
models:
  - model: ft_1
    parameters: {weight: 0.5, density: 0.5}
  - model: ft_2
    parameters: {weight: 0.5, density: 0.5}
$dtype_lines
YAML
sed 's/^merge_method: ties$/merge_method: dare_ties/' "$work/models/ties.yml" > "$work/models/dare_ties.yml"

# row NAME MERGE_S PEAK_KB FAULTS: one line of the table, with floor_s and catcp_s of this method.
row() {
  local ratio_floor ratio_catcp
  ratio_floor=$(awk -v m="$2" -v c="$floor_s" 'BEGIN { printf "%.2f", (c > 0 ? m / c : 0) }')
  ratio_catcp=$(awk -v m="$2" -v c="$catcp_s" 'BEGIN { printf "%.2f", (c > 0 ? m / c : 0) }')
  printf "%-14s %8s %8s %8s %11s %11s %12d %12d\n" "$1" "$floor_s" "$catcp_s" "$2" "${ratio_floor}x" "${ratio_catcp}x" \
    $(($3 / 1024)) "$4"
}

printf "%-14s %8s %8s %8s %11s %11s %12s %12s\n" method floor_s catcp_s merge_s ratio_floor ratio_catcp peak_rss_MB minor_faults
for method in linear slerp ties dare_ties; do
  case $method in
    linear) inputs=(ft_1 ft_2) ;;
    slerp) inputs=(base ft_1) ;;
    ties | dare_ties) inputs=(base ft_1 ft_2) ;;
  esac
  cd "$work/models"
  files=()
  for input in "${inputs[@]}"; do files+=("$input"/*.safetensors); done
  # Warm the page cache once so every run reads from memory, then time the floor, cat + cp and
  # the merge.
  cat "${files[@]}" >/dev/null
  # Interleaved: each round times the two floors, cat + cp and the merge once, and each takes its
  # fastest round. Timed one after the other (all floor runs, then all merges), a change in the
  # machine's state over the minute between them (these VMs' page-cache writes swing 2x when the
  # host reclaims memory) moved one side of the ratio alone.
  floor_s="" catcp_s="" merge_s=""
  for ((round = 0; round < repeat; ++round)); do
    # The floor is the faster of the serial one (the reads, then the write) and the overlapped one
    # (the write on a second thread during the reads), as a merge on 2 cores overlaps them too.
    read -r f _ _ < <(FRESH="$work/copy.bin" repeat=1 measure "$bin/io_floor" --read-buffer "$read_buffer" \
      --write-buffer "$write_buffer" --out "$work/copy.bin" --out-bytes "$out_bytes" "${inputs[@]}")
    read -r o _ _ < <(FRESH="$work/copy.bin" repeat=1 measure "$bin/io_floor" --overlap --read-buffer "$read_buffer" \
      --write-buffer "$write_buffer" --out "$work/copy.bin" --out-bytes "$out_bytes" "${inputs[@]}")
    if faster "$o" "$f"; then f=$o; fi
    read -r c _ _ < <(FRESH="$work/copy.bin" repeat=1 measure bash -c 'cat "${@:2}" >/dev/null && cp ft_1/model.safetensors "$1"' \
      _ "$work/copy.bin" "${files[@]}")
    read -r m kb fl < <(FRESH="$work/out-$method" repeat=1 measure "$bin/alloy-merge" -q --overwrite "${merge_flags[@]}" \
      "$method.yml" "$work/out-$method")
    if faster "$f" "$floor_s"; then floor_s=$f; fi
    if faster "$c" "$catcp_s"; then catcp_s=$c; fi
    if faster "$m" "$merge_s"; then merge_s=$m peak_kb=$kb faults=$fl; fi
  done
  rm -rf "$work/copy.bin" "$work/out-$method"
  row "$method" "$merge_s" "$peak_kb" "$faults"
  if [[ "${HASH_CACHE:-0}" == 1 && $method != *ties ]]; then
    cache="$work/hash-cache"
    rm -rf "$cache"
    read -r merge_s peak_kb faults < <(FRESH="$work/out-$method" repeat=1 measure "$bin/alloy-merge" -q --overwrite --hash-cache "$cache" \
      "${merge_flags[@]}" "$method.yml" "$work/out-$method")
    row "$method/hc-cold" "$merge_s" "$peak_kb" "$faults"
    read -r merge_s peak_kb faults < <(FRESH="$work/out-$method" measure "$bin/alloy-merge" -q --overwrite --hash-cache "$cache" \
      "${merge_flags[@]}" "$method.yml" "$work/out-$method")
    row "$method/hc-warm" "$merge_s" "$peak_kb" "$faults"
    rm -rf "$work/out-$method" "$cache"
  fi
done
