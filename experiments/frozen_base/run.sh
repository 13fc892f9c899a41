#!/usr/bin/env bash
# Issue 34, step 1: how much a training run moves the frozen-base ProSG on
# distance-controlled MQAR (configs/mqar_distance_cpu.py: its SG stage, six
# targets, the base frozen). Training runs, in the order they are made, so a
# partial run still yields the most telling subset:
#   base 0 (pretrained/mqar_base.safetensors, the config's base stage at seed 0)
#     with SG-stage seeds 0, 1, 2;
#   bases 1 and 2 (the base stage at --config.seed 1, 2) with SG seed 0;
#   bases 1 and 2 with SG seeds 1, 2.
# Each SG run is scored by eval.py (none and prosg, test split, D up to 4,096)
# and copied to results/frozen_base/b<B>_sg<S>.json; runs already there are
# skipped, so the script resumes. Then experiments/frozen_base/aggregate.py
# writes results/frozen_base/runs.md. About 9 minutes an SG run and 15 minutes
# a base on two idle CPU cores.
# Usage: bash experiments/frozen_base/run.sh WORKROOT [RUNS [VARIANT]]   (from the repository root)
# RUNS: "B:S ..." to make only those runs, e.g. "0:0 0:1 0:2".
# VARIANT (issue 34, steps 2-3): a name from the table below; its flags go after
# the SG stage's, its runs to WORKROOT/VARIANT and results/frozen_base/VARIANT/
# (with the flags in flags.txt), and experiments/frozen_base/aggregate.py
# writes results/frozen_base/variants.md, one row per variant.
set -euo pipefail
top=${1:?usage: bash experiments/frozen_base/run.sh WORKROOT [RUNS [VARIANT]]}
root=$top
runs=${2:-0:0 0:1 0:2 1:0 2:0 1:1 1:2 2:1 2:2}
variant=${3:-}
# The flags of each variant, one override each where the idea allows it:
#   lr6e-3     the SG stage at the joint stage's lr (there it made every seed learn)
#   steps3000  three times the SG stage's steps (its loss still falls at step 1,000)
#   steps6000  six times (at step 3,000 training accuracy still rises)
#   steps3000_other  steps3000 and other together (do the two gains add?)
#   other      forget rows continue from another example's prompt state (full of
#              other facts, as a state overwritten by distractor bindings is)
#              instead of the empty state
#   distill0.5 half the loss is KL to the base without deltas reading from the prompt's
#              state (the teacher): near the prompt it says "do not disturb", from
#              another state "restore what the prompt's state gave"
#   distill1   that KL alone, no LM loss
#   lora2      the parameter-efficient middle: the joint stage (lr 6e-3, as the
#              default run) with the base frozen and a rank-2 LoRA on the six target
#              matrices, 4,608 parameters (2.8% of the base's 162,624)
declare -A VARIANTS=(
  [lr6e-3]="--config.train.prosg.lr=6e-3"
  [steps3000]="--config.train.prosg.steps=3000"
  [steps6000]="--config.train.prosg.steps=6000"
  [steps3000_other]="--config.train.prosg.steps=3000 --config.train.forget_state=other"
  [other]="--config.train.forget_state=other"
  [distill0.5]="--config.prosg.distill_weight=0.5"
  [distill1]="--config.prosg.distill_weight=1.0"
  [lora2]="--config.train.stages=joint --config.train.joint.steps=1000 --config.train.joint.lr=6e-3 --config.train.lora_rank=2"
)
python=${PYTHON:-.venv/bin/python}
cfg=configs/mqar_distance_cpu.py
out=results/frozen_base
extra=()
if [ -n "$variant" ]; then
  [ -n "${VARIANTS[$variant]+x}" ] || { echo "unknown variant '$variant' (${!VARIANTS[*]})" >&2; exit 2; }
  read -r -a extra <<< "${VARIANTS[$variant]}"
  out=$out/$variant
  mkdir -p "$out"
  echo "${VARIANTS[$variant]}" > "$out/flags.txt"
  root=$root/$variant
fi
mkdir -p "$out"
common=(--config.data.data_dir="$top/tfds" --config.train.progress_bar=false)

base_file() {  # the base of base seed $1, trained first if needed
  if [ "$1" = 0 ]; then echo pretrained/mqar_base.safetensors; return; fi
  local w=$top/base$1
  if [ ! -f "$w/base.safetensors" ]; then
    "$python" train.py --config "$cfg" --workdir "$w" --config.seed="$1" \
      --config.train.stages=base "${common[@]}" >&2
    cp "$w/metrics.jsonl" "results/frozen_base/base$1_metrics.jsonl"
  fi
  echo "$w/base.safetensors"
}

sg_run() {  # SG stage seed $2 on base seed $1, then its eval
  local b=$1 s=$2 w=$root/b$1_sg$2
  [ -f "$out/b${b}_sg${s}.json" ] && return
  local base
  base=$(base_file "$b")
  local flags=(--config.seed="$s" --config.init_from="$base" --config.train.stages=prosg "${extra[@]}")
  "$python" train.py --config "$cfg" --workdir "$w" "${flags[@]}" "${common[@]}"
  "$python" eval.py --config "$cfg" --workdir "$w" "${flags[@]}" "${common[@]}" \
    --config.eval.methods=none,prosg
  cp "$w/metrics.jsonl" "$out/b${b}_sg${s}_metrics.jsonl"
  cp "$w/results.json" "$out/b${b}_sg${s}.json"
}

for run in $runs; do sg_run "${run%:*}" "${run#*:}"; done
"$python" experiments/frozen_base/aggregate.py results/frozen_base
