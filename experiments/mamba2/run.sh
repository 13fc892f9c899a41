#!/usr/bin/env bash
# ProSG on Mamba-2 (configs/mqar_mamba2_cpu.py), per training seed S: the base
# stage; the SG stage on the frozen base; the joint stage (1,000 steps, the
# default run's recipe); the control (the base trained alone for as many steps
# on the joint stage's data, rows of 448 tokens); then eval.py on the test split.
# Writes results/mamba2/seed<S>/{joint,sg}.json and results/mamba2/runs.md (mean
# over training runs). About 35 minutes a seed on two idle CPU cores.
# Usage: bash experiments/mamba2/run.sh WORKROOT [SEEDS]   (from the repository root)
set -euo pipefail
root=${1:?usage: bash experiments/mamba2/run.sh WORKROOT [SEEDS]}
seeds=${2:-0 1 2}
python=${PYTHON:-.venv/bin/python}
cfg=configs/mqar_mamba2_cpu.py
data=(--config.data.data_dir="$root/tfds" --config.train.progress_bar=false)
sg_mixture=$("$python" -c "
from prosg_jax.experiment import sibling_config
print(sibling_config('$cfg', 'mqar_mamba2_cpu').train.prosg.mixture)")
for s in $seeds; do
  w=$root/seed$s
  base=(--config.seed="$s" --config.init_from="$w/base/base.safetensors")
  joint=("${base[@]}" --config.train.stages=joint --config.train.joint.steps=1000 --config.train.joint.lr=6e-3)
  "$python" train.py --config "$cfg" --workdir "$w/base" --config.seed="$s" \
    --config.train.stages=base "${data[@]}"
  "$python" train.py --config "$cfg" --workdir "$w/sg" "${base[@]}" \
    --config.train.stages=prosg "${data[@]}"
  "$python" train.py --config "$cfg" --workdir "$w/joint" "${joint[@]}" "${data[@]}"
  "$python" train.py --config "$cfg" --workdir "$w/control" "${base[@]}" \
    --config.train.stages=base --config.train.base.steps=1000 --config.train.base.batch_size=16 \
    --config.data.seq_len=448 --config.train.base.mixture="$sg_mixture" "${data[@]}"
  "$python" eval.py --config "$cfg" --workdir "$w/joint" "${joint[@]}" "${data[@]}" \
    --config.eval.models=control="$w/control/base.safetensors" \
    --config.eval.methods=none@init,repeat_prompt@init,true_grad@init,none@control,repeat_prompt@control,prosg
  "$python" eval.py --config "$cfg" --workdir "$w/sg" "${base[@]}" --config.train.stages=prosg \
    "${data[@]}" --config.eval.methods=prosg
  mkdir -p "results/mamba2/seed$s"
  cp "$w/joint/results.json" "results/mamba2/seed$s/joint.json"
  cp "$w/sg/results.json" "results/mamba2/seed$s/sg.json"
  cp "$w/base/metrics.jsonl" "results/mamba2/seed$s/base_metrics.jsonl"
done
"$python" experiments/mamba2/aggregate.py results/mamba2/runs.md results/mamba2/seed*/
