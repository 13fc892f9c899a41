#!/usr/bin/env bash
# Reproduces pretrained/multiturn_prosg/: the default run (pretrained/mqar_prosg)
# fine-tuned for sessions with configs/multiturn_cpu.py, in two legs of 1,000
# joint steps (about 7 minutes each on two idle CPU cores):
#   W/leg1: from pretrained/mqar_prosg (its base and SG module), seed 0;
#   W/leg2: from W/leg1, seed 3 (a fresh order of the same data).
# Usage: bash pretrained/multiturn_prosg.sh WORKDIR   (W/leg2 is the shipped run;
# copy its run.json, base.safetensors, prosg.safetensors and metrics.jsonl).
set -euo pipefail
W=$(realpath -m "${1:?usage: bash pretrained/multiturn_prosg.sh WORKDIR}")
cd "$(dirname "$0")/.."  # the repository root: configs and train.py are relative to it
python=${PYTHON:-.venv/bin/python}
common=(--config.data.data_dir="$W/tfds" --config.train.progress_bar=false)
"$python" train.py --config configs/multiturn_cpu.py --workdir "$W/leg1" --config.seed=0 \
  --config.init_from=pretrained/mqar_prosg/base.safetensors --config.sg_from=pretrained/mqar_prosg \
  "${common[@]}"
"$python" train.py --config configs/multiturn_cpu.py --workdir "$W/leg2" --config.seed=3 \
  --config.init_from="$W/leg1/base.safetensors" --config.sg_from="$W/leg1" "${common[@]}"
