#!/usr/bin/env bash
# Runs the six exercises of docs/classroom.md end to end and writes the figures under
# docs/classroom/ (SVG charts, CSV and JSON results). Steps whose outputs exist are skipped, so an
# interrupted run resumes. Usage: bench/lmc_classroom.sh [WORK_DIR] [FIGURE_DIR]
#   LMC=path/to/alloy-lmc (default build-lmc/bin/alloy-lmc), MERGE, ASSAY likewise.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/lmc-classroom}
figs=${2:-$root/docs/classroom}
LMC=${LMC:-$root/build-lmc/bin/alloy-lmc}
MERGE=${MERGE:-$root/build-lmc/bin/alloy-merge}
ASSAY=${ASSAY:-$root/build-lmc/bin/alloy-assay}
mkdir -p "$work" "$figs"
cd "$work"
step() { echo "== $*" >&2; }
have() { [[ -e "$1" ]]; }

# Exercise 1: two seeds, the straight path, the barrier.
for s in 1 2; do
  have seed$s || { step "train seed $s"; $LMC train seed$s --layers 512,512 --epochs 8 --seed $s --lr 0.05 \
    --momentum 0.9 --batch 128 --json seed$s.train.json --csv seed$s.train.csv --svg seed$s.train.svg; }
done
have path_naive.json || { step "path naive"; $LMC path seed1 seed2 --json path_naive.json --csv path_naive.csv \
  --svg path_naive.svg --report path_naive.html >/dev/null; }

# Exercise 2: align, the barrier collapses; activation matching and REPAIR beside it.
have seed2_wm || { step "align weight"; $LMC align seed1 seed2 -o seed2_wm --method weight --json perms_wm.json; }
have seed2_am || { step "align activation"; $LMC align seed1 seed2 -o seed2_am --method activation --json perms_am.json; }
have path_wm.json || { step "path wm"; $LMC path seed1 seed2_wm --json path_wm.json --csv path_wm.csv --svg path_wm.svg >/dev/null; }
have path_am.json || { step "path am"; $LMC path seed1 seed2_am --json path_am.json --csv path_am.csv --svg path_am.svg >/dev/null; }
have path_wm_repair.json || { step "path wm + repair"; $LMC path seed1 seed2_wm --repair --json path_wm_repair.json \
  --csv path_wm_repair.csv --svg path_wm_repair.svg >/dev/null; }
have path_naive_repair.json || { step "path naive + repair"; $LMC path seed1 seed2 --repair --json path_naive_repair.json \
  --csv path_naive_repair.csv >/dev/null; }
have repair_mid || { step "repair t=0.5"; $LMC repair seed1 seed2_wm --t 0.5 -o repair_mid --json repair_mid.json >/dev/null; }
$LMC plot "$figs/ex1_naive_path.svg" --input path_naive.csv=naive --y test_loss --y train_loss \
  --title "Two seeds, straight path (784-512-512-10)" --y-label cross-entropy
$LMC plot "$figs/ex2_aligned_paths.svg" --input path_naive.csv=naive --input path_am.csv=activation \
  --input path_wm.csv=weight --input path_naive_repair.csv=naive+REPAIR --input path_wm_repair.csv=weight+REPAIR \
  --y test_loss --title "Test loss along the path, before and after alignment" --y-label "test cross-entropy"
$LMC plot "$figs/ex2_aligned_accuracy.svg" --input path_naive.csv=naive --input path_am.csv=activation \
  --input path_wm.csv=weight --input path_wm_repair.csv=weight+REPAIR --y test_accuracy \
  --title "Test accuracy along the path" --y-label "test accuracy"

# Curve (Garipov et al.): a Bezier curve between the unaligned endpoints.
have curve_ctrl || { step "curve"; $LMC curve seed1 seed2 -o curve_ctrl --epochs 4 --json curve.json --csv curve.csv \
  --svg "$figs/ex2_bezier_curve.svg" --report curve.html >/dev/null; }

# Exercise 3: width sweep, one hidden layer, 3 epochs.
echo "width,log2_width,naive_barrier,weight_barrier,activation_barrier,naive_train_barrier,weight_train_barrier,activation_train_barrier,acc_a,acc_b" > width.csv.tmp
for w in 32 64 128 256 512 1024; do
  for s in 1 2; do
    have w${w}_s$s || { step "width $w seed $s"; $LMC train w${w}_s$s --layers $w --epochs 3 --seed $s >/dev/null; }
  done
  have w${w}_wm || $LMC align w${w}_s1 w${w}_s2 -o w${w}_wm --method weight >/dev/null
  have w${w}_am || $LMC align w${w}_s1 w${w}_s2 -o w${w}_am --method activation >/dev/null
  for kind in naive wm am; do
    b=w${w}_s2; [[ $kind == wm ]] && b=w${w}_wm; [[ $kind == am ]] && b=w${w}_am
    have w${w}_path_$kind.json || $LMC path w${w}_s1 $b --points 11 --train-limit 10000 --json w${w}_path_$kind.json >/dev/null
  done
  python3 - "$w" >> width.csv.tmp <<'PY'
import json, math, sys
w = sys.argv[1]
j = {k: json.load(open(f"w{w}_path_{k}.json")) for k in ("naive", "wm", "am")}
p = j["naive"]["points"]
print(f"{w},{math.log2(int(w)):.0f},{j['naive']['loss_barrier']:.6f},{j['wm']['loss_barrier']:.6f},{j['am']['loss_barrier']:.6f},"
      f"{j['naive']['train_loss_barrier']:.6f},{j['wm']['train_loss_barrier']:.6f},{j['am']['train_loss_barrier']:.6f},"
      f"{p[0]['test_accuracy']:.4f},{p[-1]['test_accuracy']:.4f}")
PY
done
mv width.csv.tmp width.csv
$LMC plot "$figs/ex3_width_sweep.svg" --input width.csv=barrier --x log2_width --y naive_barrier --y activation_barrier \
  --y weight_barrier --title "Test-loss barrier vs width (784-W-10, 3 epochs)" --y-label "test-loss barrier"
$LMC plot "$figs/ex3_width_sweep_aligned.svg" --input width.csv=aligned --x log2_width --y activation_train_barrier \
  --y weight_train_barrier --y activation_barrier --y weight_barrier \
  --title "Barrier after alignment vs width (train and test)" --y-label "loss barrier"

# Exercise 4: spawn and fine-tune. Pretrain k epochs (k = 0, 1, 2), then two 2-epoch fine-tunes
# that differ only in their data order.
have spawn0 || $LMC train spawn0 --layers 512,512 --epochs 0 --seed 7 >/dev/null
have spawn1 || $LMC train spawn1 --from spawn0 --epochs 1 --seed 7 >/dev/null
have spawn2 || $LMC train spawn2 --from spawn1 --epochs 1 --seed 8 >/dev/null
echo "pretrain_epochs,loss_barrier,accuracy_barrier,train_loss_barrier,acc_a,acc_b" > spawn.csv.tmp
for k in 0 1 2; do
  for d in 101 102; do
    have spawn${k}_ft$d || { step "spawn $k fine-tune $d"; $LMC train spawn${k}_ft$d --from spawn$k --epochs 2 --data-seed $d >/dev/null; }
  done
  have spawn${k}_path.json || $LMC path spawn${k}_ft101 spawn${k}_ft102 --points 11 --train-limit 10000 \
    --json spawn${k}_path.json --csv spawn${k}_path.csv >/dev/null
  python3 - "$k" >> spawn.csv.tmp <<'PY'
import json, sys
k = sys.argv[1]
j = json.load(open(f"spawn{k}_path.json"))
p = j["points"]
print(f"{k},{j['loss_barrier']:.6f},{j['accuracy_barrier']:.6f},{j['train_loss_barrier']:.6f},{p[0]['test_accuracy']:.4f},{p[-1]['test_accuracy']:.4f}")
PY
done
mv spawn.csv.tmp spawn.csv
$LMC plot "$figs/ex4_spawn.svg" --input spawn0_path.csv="pretrain 0" --input spawn1_path.csv="pretrain 1" \
  --input spawn2_path.csv="pretrain 2" --y test_loss --title "Spawn and fine-tune: test loss between the two fine-tunes" \
  --y-label "test cross-entropy"

# Exercise 5: task vectors. Base = spawn1 (1 epoch on all classes); fine-tune on 0-4 and on 5-9.
have task_a || $LMC train task_a --from spawn1 --epochs 2 --classes 0-4 --data-seed 11 >/dev/null
have task_b || $LMC train task_b --from spawn1 --epochs 2 --classes 5-9 --data-seed 12 >/dev/null
cat > linear.yml <<Y
merge_method: linear
models:
  - {model: task_a, parameters: {weight: 0.5}}
  - {model: task_b, parameters: {weight: 0.5}}
dtype: float32
Y
cat > task_arithmetic.yml <<Y
merge_method: task_arithmetic
base_model: spawn1
models:
  - {model: task_a, parameters: {weight: 1.0}}
  - {model: task_b, parameters: {weight: 1.0}}
dtype: float32
Y
cat > ties.yml <<Y
merge_method: ties
base_model: spawn1
models:
  - {model: task_a, parameters: {weight: 1.0, density: 0.5}}
  - {model: task_b, parameters: {weight: 1.0, density: 0.5}}
parameters: {normalize: true}
dtype: float32
Y
echo "model,test_accuracy,accuracy_0_4,accuracy_5_9,test_loss" > tasks.csv.tmp
for m in spawn1 task_a task_b linear task_arithmetic ties; do
  if [[ -e $m.yml ]] && ! have merged_$m; then $MERGE $m.yml merged_$m >/dev/null; fi
  dir=$m; [[ -e $m.yml ]] && dir=merged_$m
  have eval_$m.json || $LMC eval $dir --json eval_$m.json >/dev/null
  python3 - "$m" >> tasks.csv.tmp <<'PY'
import json, sys
m = sys.argv[1]
t = json.load(open(f"eval_{m}.json"))["test"]
print(f"{m},{t['accuracy']:.4f},{t['accuracy_classes_0_4']:.4f},{t['accuracy_classes_5_9']:.4f},{t['loss']:.4f}")
PY
done
mv tasks.csv.tmp tasks.csv

# Exercise 6: the detector on real training.
cat > assay_merge.yml <<Y
merge_method: linear
models:
  - {model: task_a, parameters: {weight: 0.7}}
  - {model: task_b, parameters: {weight: 0.3}}
dtype: float32
Y
have merged_assay || $MERGE assay_merge.yml merged_assay >/dev/null
have assay.json || $ASSAY merged_assay spawn1 task_a task_b seed1 --json assay.json --recipe assay_recovered.yml \
  --report assay.html > assay.txt 2>&1 || echo "alloy-assay failed: see $work/assay.txt" >&2

# Copy the small results next to the figures.
cp path_naive.json path_wm.json path_am.json path_wm_repair.json path_naive_repair.json curve.json repair_mid.json \
  width.csv spawn.csv tasks.csv "$figs/" 2>/dev/null || true
[[ -e assay.txt ]] && cp assay.txt "$figs/assay.txt"
[[ -e assay_recovered.yml ]] && cp assay_recovered.yml "$figs/"
cp seed1.train.csv seed2.train.csv "$figs/"
echo "done: figures in $figs" >&2
