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
# Usage: bash experiments/frozen_base/run.sh WORKROOT [RUNS]   (from the repository root)
# RUNS: "B:S ..." to make only those runs, e.g. "0:0 0:1 0:2".
set -euo pipefail
root=${1:?usage: bash experiments/frozen_base/run.sh WORKROOT [RUNS]}
runs=${2:-0:0 0:1 0:2 1:0 2:0 1:1 1:2 2:1 2:2}
python=${PYTHON:-.venv/bin/python}
cfg=configs/mqar_distance_cpu.py
out=results/frozen_base
mkdir -p "$out"
common=(--config.data.data_dir="$root/tfds" --config.train.progress_bar=false)

base_file() {  # the base of base seed $1, trained first if needed
  if [ "$1" = 0 ]; then echo pretrained/mqar_base.safetensors; return; fi
  local w=$root/base$1
  if [ ! -f "$w/base.safetensors" ]; then
    "$python" train.py --config "$cfg" --workdir "$w" --config.seed="$1" \
      --config.train.stages=base "${common[@]}" >&2
    cp "$w/metrics.jsonl" "$out/base$1_metrics.jsonl"
  fi
  echo "$w/base.safetensors"
}

sg_run() {  # SG stage seed $2 on base seed $1, then its eval
  local b=$1 s=$2 w=$root/b$1_sg$2
  [ -f "$out/b${b}_sg${s}.json" ] && return
  local base
  base=$(base_file "$b")
  local flags=(--config.seed="$s" --config.init_from="$base" --config.train.stages=prosg)
  "$python" train.py --config "$cfg" --workdir "$w" "${flags[@]}" "${common[@]}"
  "$python" eval.py --config "$cfg" --workdir "$w" "${flags[@]}" "${common[@]}" \
    --config.eval.methods=none,prosg
  cp "$w/metrics.jsonl" "$out/b${b}_sg${s}_metrics.jsonl"
  cp "$w/results.json" "$out/b${b}_sg${s}.json"
}

for run in $runs; do sg_run "${run%:*}" "${run#*:}"; done
"$python" experiments/frozen_base/aggregate.py "$out"
