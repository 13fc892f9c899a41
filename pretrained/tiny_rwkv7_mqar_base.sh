#!/usr/bin/env bash
# Reproduces pretrained/tiny_rwkv7_mqar_base.safetensors (the default run's base) on two CPU cores,
# about 12 minutes: an MQAR warm-up over byte ids 1-99, whose values include the ten digits, then
# the prompt_retention text mixture of configs/pretrain_base_gpu.py at 2 layers x 64 wide.
# Text alone never teaches copying a 4-digit code (results/text_base_probe/results.md).
# Usage: bash pretrained/tiny_rwkv7_mqar_base.sh WORKDIR  (writes WORKDIR/{mqar,text}/base.safetensors)
set -euo pipefail
W=${1:?usage: bash pretrained/tiny_rwkv7_mqar_base.sh WORKDIR}
python=${PYTHON:-.venv/bin/python}
"$python" train.py --config configs/mqar_distance_cpu.py --workdir "$W/mqar" \
  --config.train.stages=base --config.model.vocab_size=258 \
  --config.data.train_mixture=mqar/l128_kv8_voc100_n20000 --config.train.base.steps=500
"$python" train.py --config configs/pretrain_base_gpu.py --workdir "$W/text" \
  --config.init_from="$W/mqar/base.safetensors" \
  --config.model.d_model=64 --config.model.n_layer=2 --config.model.head_size=32 \
  --config.data.seq_len=512 --config.train.base.batch_size=16 --config.train.base.steps=1500 \
  --config.train.base.warmup_steps=30
