#!/usr/bin/env bash
# Reproduces the two shipped bases of the default run (configs/default.py) on two CPU cores:
#   pretrained/mqar_base.safetensors     the base the default run starts from: 1,600 base
#                                        steps of configs/mqar_distance_cpu.py from scratch
#                                        (MQAR at D = 0, then D <= 64), about 10 minutes;
#   pretrained/mqar_control.safetensors  the control: that base trained alone for as many
#                                        steps as the default's joint stage, on its data
#                                        (D <= 256), batch 16 packed rows of 448 tokens so
#                                        that D = 256 fits (3, 2 or 1 examples a row at
#                                        D = 0/64/256: about twice the joint stage's
#                                        examples), about 7 minutes.
# Usage: bash pretrained/mqar_base.sh WORKDIR  (writes WORKDIR/{base,control}/base.safetensors;
# copy them to pretrained/mqar_base.safetensors and pretrained/mqar_control.safetensors). The
# control starts from the base just built; to rebuild the control alone, run its command with
# --config.init_from=pretrained/mqar_base.safetensors.
set -euo pipefail
W=$(realpath -m "${1:?usage: bash pretrained/mqar_base.sh WORKDIR}")
cd "$(dirname "$0")/.."  # the repository root: configs and train.py are relative to it
python=${PYTHON:-.venv/bin/python}
"$python" train.py --config configs/mqar_distance_cpu.py --workdir "$W/base" \
  --config.train.stages=base --config.train.progress_bar=false
joint_mixture=$("$python" -c 'import runpy; c = runpy.run_path("configs/default.py")["get_config"](); print(c.train.joint.mixture or c.data.train_mixture)')
joint_steps=$("$python" -c 'import runpy; print(runpy.run_path("configs/default.py")["get_config"]().train.joint.steps)')
"$python" train.py --config configs/default.py --workdir "$W/control" \
  --config.init_from="$W/base/base.safetensors" --config.train.stages=base \
  --config.train.base.steps="$joint_steps" --config.train.base.batch_size=16 \
  --config.data.seq_len=448 --config.train.base.mixture="$joint_mixture"
