#!/usr/bin/env bash
# Reproduces pretrained/tiny_rwkv7_mqar_base.safetensors (the default run's base) on two CPU cores,
# about 55 minutes: an MQAR warm-up over byte ids 1-99, whose values include the ten digits, then
# three text phases at 2 layers x 64 wide, each starting from the last (warmup, lr 3e-3 held,
# cosine over its last 20%):
#   text   1,500 steps of the prompt_retention mixture of configs/pretrain_base_gpu.py
#          (the first version of this base: 54% of facts with 4 per prompt at D = 64);
#   text2  2,000 more steps of the same mixture (62%);
#   text3  2,500 steps of 4-fact prompts at D = 0-64 (with some 2-fact ones): binding (66%).
# Text alone never teaches copying a 4-digit code (results/text_base_probe/results.md).
# Usage: bash pretrained/tiny_rwkv7_mqar_base.sh WORKDIR  (writes WORKDIR/<phase>/base.safetensors;
# WORKDIR/text3/base.safetensors is the shipped file)
set -euo pipefail
W=${1:?usage: bash pretrained/tiny_rwkv7_mqar_base.sh WORKDIR}
python=${PYTHON:-.venv/bin/python}
"$python" train.py --config configs/mqar_distance_cpu.py --workdir "$W/mqar" \
  --config.train.stages=base --config.model.vocab_size=258 \
  --config.data.train_mixture=mqar/l128_kv8_voc100_n20000 --config.train.base.steps=500
text() {  # text PHASE FROM STEPS [MIXTURE]
  "$python" train.py --config configs/pretrain_base_gpu.py --workdir "$W/$1" \
    --config.init_from="$W/$2/base.safetensors" --config.data.data_dir="$W/tfds" \
    --config.model.d_model=64 --config.model.n_layer=2 --config.model.head_size=32 \
    --config.data.seq_len=512 --config.train.base.batch_size=16 --config.train.base.steps="$3" \
    --config.train.base.warmup_steps=30 ${4:+"--config.data.train_mixture=$4"}
}
text text mqar 1500
text text2 text 2000
f4=prompt_retention/d0_f4_n6000:1,prompt_retention/d16_f4_n6000:1,prompt_retention/d32_f4_n6000:1
text text3 text2 2500 "$f4,prompt_retention/d64_f4_n6000:2,prompt_retention/d64_f2_n6000:1"
