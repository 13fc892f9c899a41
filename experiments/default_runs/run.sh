#!/usr/bin/env bash
# The default run (configs/default.py) trained and evaluated with three training seeds, then
# the mean over runs: writes results/default/seed<S>/results.{json,md} and
# results/default/runs.md. Each run is the README's main job with --config.seed=S
# (seed 0 is exactly the main job); about 10 minutes each on two idle CPU cores.
# Usage: bash experiments/default_runs/run.sh WORKROOT   (from the repository root)
set -euo pipefail
W=${1:?usage: bash experiments/default_runs/run.sh WORKROOT}
python=${PYTHON:-.venv/bin/python}
out=results/default
for s in 0 1 2; do
  "$python" train.py --workdir "$W/seed$s" --config.seed="$s" --config.data.data_dir="$W/tfds"
  "$python" eval.py --workdir "$W/seed$s" --config.seed="$s" --config.data.data_dir="$W/tfds"
  mkdir -p "$out/seed$s"
  cp "$W/seed$s/results.json" "$W/seed$s/results.md" "$W/seed$s/metrics.jsonl" "$out/seed$s/"
done
cp "$W/seed0/recall_vs_distance.png" "$out/"
"$python" experiments/default_runs/aggregate.py "$out/runs.md" "$out"/seed{0,1,2}/results.json
