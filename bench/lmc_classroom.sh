#!/usr/bin/env bash
# Runs the six exercises of docs/classroom.md end to end and writes the figures under
# docs/classroom/ (SVG charts with the JSON of their numbers, CSV and JSON results). Steps whose
# outputs exist are skipped, so an interrupted run resumes.
# Usage: bench/lmc_classroom.sh [WORK_DIR] [FIGURE_DIR]
#   LMC=path/to/alloy-lmc (default build-lmc/bin/alloy-lmc), MERGE, ASSAY likewise;
#   SEED_A, SEED_B: the two seeds of exercises 1-2 (default 1 and 3, docs/classroom.md says why).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/lmc-classroom}
figs=${2:-$root/docs/classroom}
LMC=${LMC:-$root/build-lmc/bin/alloy-lmc}
MERGE=${MERGE:-$root/build-lmc/bin/alloy-merge}
ASSAY=${ASSAY:-$root/build-lmc/bin/alloy-assay}
seed_a=${SEED_A:-1}
seed_b=${SEED_B:-3}
A=seed$seed_a
B=seed$seed_b
mkdir -p "$work" "$figs"
cd "$work"

# once OUT CMD...: runs CMD, its standard output discarded, unless OUT exists.
once() {
  local out=$1
  shift
  [[ -e $out ]] && return 0
  echo "== $out" >&2
  "$@" >/dev/null
}
# fields FILE KEY...: the values at the dotted KEYs of a JSON file (points.-1.test_accuracy is the
# last point's), comma-separated, numbers with 6 decimals.
fields() {
  python3 - "$@" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
out = []
for key in sys.argv[2:]:
    v = doc
    for part in key.split("."):
        v = v[int(part)] if isinstance(v, list) else v[part]
    out.append(f"{v:.6f}" if isinstance(v, float) else str(v))
print(",".join(out))
PY
}
# chart NAME PLOT-ARGS...: docs/classroom/NAME.svg and the plotted numbers in NAME.json.
chart() {
  local name=$1
  shift
  $LMC plot "$figs/$name.svg" --json "$figs/$name.json" "$@"
}
# recipe FILE METHOD BASE MODEL=WEIGHT[/DENSITY]... : a float32 mergekit recipe (BASE may be -).
recipe() {
  local file=$1 method=$2 base=$3 spec model weight density
  shift 3
  {
    echo "merge_method: $method"
    [[ $base != - ]] && echo "base_model: $base"
    echo "models:"
    for spec in "$@"; do
      model=${spec%%=*} weight=${spec#*=} density=
      [[ $weight == */* ]] && density=", density: ${weight#*/}" weight=${weight%%/*}
      echo "  - {model: $model, parameters: {weight: $weight$density}}"
    done
    [[ $method == ties ]] && echo "parameters: {normalize: true}"
    echo "dtype: float32"
  } >"$file"
}
path_args=(--points 11 --train-limit 10000)  # the sweeps' shorter paths

# Exercise 1: two seeds, the straight path, the barrier. Seeds 1-6 are all trained, to show how
# much the endpoints' accuracy varies with the seed (seeds.csv).
{
  echo "seed,test_accuracy,test_loss"
  for s in $(printf '%s\n' 1 2 3 4 5 6 $seed_a $seed_b | sort -nu); do
    once seed$s $LMC train seed$s --layers 512,512 --epochs 8 --seed $s --lr 0.05 --momentum 0.9 --batch 128 \
      --json seed$s.train.json --csv seed$s.train.csv --svg seed$s.train.svg
    echo "$s,$(fields seed$s.train.json epochs.-1.test_accuracy epochs.-1.test_loss)"
  done
} >seeds.csv.tmp
mv seeds.csv.tmp seeds.csv
once path_naive.json $LMC path $A $B --json path_naive.json --csv path_naive.csv --svg path_naive.svg \
  --report path_naive.html

# Exercise 2: align, the barrier collapses; activation matching and REPAIR beside it.
once ${B}_wm $LMC align $A $B -o ${B}_wm --method weight --json perms_wm.json
once ${B}_am $LMC align $A $B -o ${B}_am --method activation --json perms_am.json
for kind in wm am; do
  once path_$kind.json $LMC path $A ${B}_$kind --json path_$kind.json --csv path_$kind.csv --svg path_$kind.svg
done
once path_wm_repair.json $LMC path $A ${B}_wm --repair --json path_wm_repair.json --csv path_wm_repair.csv
once path_naive_repair.json $LMC path $A $B --repair --json path_naive_repair.json --csv path_naive_repair.csv
once repair_mid $LMC repair $A ${B}_wm --t 0.5 -o repair_mid --json repair_mid.json
chart ex1_naive_path --input path_naive.csv=naive --y test_loss --y train_loss \
  --title "Two seeds, straight path (784-512-512-10)" --y-label cross-entropy
chart ex2_aligned_paths --input path_naive.csv=naive --input path_am.csv=activation --input path_wm.csv=weight \
  --input path_naive_repair.csv=naive+REPAIR --input path_wm_repair.csv=weight+REPAIR --y test_loss \
  --title "Test loss along the path, before and after alignment" --y-label "test cross-entropy"
chart ex2_aligned_accuracy --input path_naive.csv=naive --input path_am.csv=activation --input path_wm.csv=weight \
  --input path_wm_repair.csv=weight+REPAIR --y test_accuracy --title "Test accuracy along the path" \
  --y-label "test accuracy"

# Curve (Garipov et al.): a Bezier curve between the unaligned endpoints (its numbers: curve.json).
once curve_ctrl $LMC curve $A $B -o curve_ctrl --epochs 4 --json curve.json --csv curve.csv \
  --svg "$figs/ex2_bezier_curve.svg" --report curve.html

# Exercise 3: width sweep, one hidden layer, 3 epochs.
{
  echo "width,log2_width,naive_barrier,weight_barrier,activation_barrier,naive_train_barrier,weight_train_barrier,activation_train_barrier,acc_a,acc_b"
  for w in 32 64 128 256 512 1024; do
    for s in 1 2; do once w${w}_s$s $LMC train w${w}_s$s --layers $w --epochs 3 --seed $s; done
    for kind in wm am; do
      method=weight; [[ $kind == am ]] && method=activation
      once w${w}_$kind $LMC align w${w}_s1 w${w}_s2 -o w${w}_$kind --method $method
    done
    once w${w}_path_naive.json $LMC path w${w}_s1 w${w}_s2 "${path_args[@]}" --json w${w}_path_naive.json
    for kind in wm am; do
      once w${w}_path_$kind.json $LMC path w${w}_s1 w${w}_$kind "${path_args[@]}" --json w${w}_path_$kind.json
    done
    echo "$w,$(python3 -c "import math; print(round(math.log2($w)))")"\
,$(fields w${w}_path_naive.json loss_barrier),$(fields w${w}_path_wm.json loss_barrier)\
,$(fields w${w}_path_am.json loss_barrier),$(fields w${w}_path_naive.json train_loss_barrier)\
,$(fields w${w}_path_wm.json train_loss_barrier),$(fields w${w}_path_am.json train_loss_barrier)\
,$(fields w${w}_path_naive.json points.0.test_accuracy points.-1.test_accuracy)
  done
} >width.csv.tmp
mv width.csv.tmp width.csv
chart ex3_width_sweep --input width.csv=barrier --x log2_width --y naive_barrier --y activation_barrier \
  --y weight_barrier --title "Test-loss barrier vs width (784-W-10, 3 epochs)" --y-label "test-loss barrier"
chart ex3_width_sweep_aligned --input width.csv=aligned --x log2_width --y activation_train_barrier \
  --y weight_train_barrier --y activation_barrier --y weight_barrier \
  --title "Barrier after alignment vs width (train and test)" --y-label "loss barrier"

# Exercise 4: spawn and fine-tune. Pretrain k epochs (k = 0, 1, 2), then two 2-epoch fine-tunes
# that differ only in their data order.
once spawn0 $LMC train spawn0 --layers 512,512 --epochs 0 --seed 7
once spawn1 $LMC train spawn1 --from spawn0 --epochs 1 --seed 7
once spawn2 $LMC train spawn2 --from spawn1 --epochs 1 --seed 8
{
  echo "pretrain_epochs,loss_barrier,accuracy_barrier,train_loss_barrier,acc_a,acc_b"
  for k in 0 1 2; do
    for d in 101 102; do once spawn${k}_ft$d $LMC train spawn${k}_ft$d --from spawn$k --epochs 2 --data-seed $d; done
    once spawn${k}_path.json $LMC path spawn${k}_ft101 spawn${k}_ft102 "${path_args[@]}" --json spawn${k}_path.json \
      --csv spawn${k}_path.csv
    echo "$k,$(fields spawn${k}_path.json loss_barrier accuracy_barrier train_loss_barrier \
      points.0.test_accuracy points.-1.test_accuracy)"
  done
} >spawn.csv.tmp
mv spawn.csv.tmp spawn.csv
chart ex4_spawn --input spawn0_path.csv="pretrain 0" --input spawn1_path.csv="pretrain 1" \
  --input spawn2_path.csv="pretrain 2" --y test_loss --title "Spawn and fine-tune: test loss between the two fine-tunes" \
  --y-label "test cross-entropy"

# Exercise 5: task vectors. Base = spawn1 (1 epoch on all classes); fine-tune on 0-4 and on 5-9.
once task_a $LMC train task_a --from spawn1 --epochs 2 --classes 0-4 --data-seed 11
once task_b $LMC train task_b --from spawn1 --epochs 2 --classes 5-9 --data-seed 12
recipe linear.yml linear - task_a=0.5 task_b=0.5
recipe task_arithmetic.yml task_arithmetic spawn1 task_a=1.0 task_b=1.0
recipe ties.yml ties spawn1 task_a=1.0/0.5 task_b=1.0/0.5
{
  echo "model,test_accuracy,accuracy_0_4,accuracy_5_9,test_loss"
  for m in spawn1 task_a task_b linear task_arithmetic ties; do
    dir=$m
    if [[ -e $m.yml ]]; then
      dir=merged_$m
      once $dir $MERGE $m.yml $dir
    fi
    once eval_$m.json $LMC eval $dir --json eval_$m.json
    echo "$m,$(fields eval_$m.json test.accuracy test.accuracy_classes_0_4 test.accuracy_classes_5_9 test.loss)"
  done
} >tasks.csv.tmp
mv tasks.csv.tmp tasks.csv

# Exercise 6: the detector on real training.
recipe assay_merge.yml linear - task_a=0.7 task_b=0.3
once merged_assay $MERGE assay_merge.yml merged_assay
if [[ ! -e assay.json ]]; then
  $ASSAY merged_assay spawn1 task_a task_b $A --json assay.json --recipe assay_recovered.yml \
    --report assay.html >assay.txt 2>&1 || echo "alloy-assay failed: see $work/assay.txt" >&2
fi

# The small results next to the figures, and the headline figures on standard error.
cp path_naive.json path_wm.json path_am.json path_wm_repair.json path_naive_repair.json curve.json repair_mid.json \
  perms_wm.json seeds.csv width.csv spawn.csv tasks.csv seed[0-9]*.train.csv "$figs/"
for f in assay.txt assay_recovered.yml; do [[ -e $f ]] && cp $f "$figs/"; done
{
  echo "endpoints ($A, $B): test accuracy $(fields path_naive.json points.0.test_accuracy points.-1.test_accuracy)," \
    "test loss $(fields path_naive.json points.0.test_loss points.-1.test_loss)"
  for p in naive am wm naive_repair wm_repair; do
    echo "path $p: loss_barrier,accuracy_barrier,train_loss_barrier = $(fields path_$p.json loss_barrier \
      accuracy_barrier train_loss_barrier)"
  done
  echo "curve: max test loss curve,line,endpoints = $(fields curve.json curve_max_test_loss line_max_test_loss \
    endpoint_max_test_loss)"
  echo "done: figures in $figs"
} >&2
