#!/bin/bash
# Ablations of the embedded default's ProSG stage, each one config override.
#
#   bash results/ablations/run.sh [WORKROOT]    # ~1 h on 2 CPU cores
#
# Every row trains the SG module for STEPS steps (default 200, a quarter of the
# default run's) on the shipped base and scores it teacher-forced on the test
# split at D = 64 and 4096 (3 seeds x 16 examples), then results.md is rebuilt
# from the rows' results.json. Rows already evaluated are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-/tmp/prosg_ablations}
STEPS=${STEPS:-200}
PY=${PY:-python}
ALL=att.key,att.value,att.receptance,att.output,ffn.key,ffn.value
ROWS=(
  "default|"
  "rank 1|--config.prosg.rank=1"
  "rank 4|--config.prosg.rank=4"
  "rank 16|--config.prosg.rank=16"
  "rank 64|--config.prosg.rank=64"
  "targets: FFN only|--config.prosg.matrices=ffn.value"
  "targets: attention only|--config.prosg.matrices=att.value,att.output"
  "targets: all six|--config.prosg.matrices=$ALL"
  "pooling: sketch|--config.prosg.pooling=sketch"
  "pooling: power|--config.prosg.pooling=power"
  "trainable base (joint stage)|--config.train.stages=joint --config.train.joint.steps=$STEPS"
  "with SG matching loss|--config.prosg.sg_match_weight=1.0"
  "without forget augmentation|--config.train.forget_frac=0.0"
)
COMMON=(--config configs/tiny_cpu.py "--config.data.data_dir=$ROOT/tfds")
EVAL=(--config.eval.exact_match=teacher_forced --config.eval.distances=64,4096 --config.eval.mqar= --config.eval.num_examples=16)
for i in "${!ROWS[@]}"; do
  name=${ROWS[$i]%%|*}; overrides=${ROWS[$i]#*|}
  w=$ROOT/row$i
  if [ -f "$w/results.json" ]; then continue; fi
  methods=prosg; [ "$i" = 0 ] && methods=none,repeat_prompt,prosg
  echo "== $name ($overrides)"
  # shellcheck disable=SC2086
  $PY train.py "${COMMON[@]}" --workdir "$w" --config.train.prosg.steps="$STEPS" \
    --config.train.progress_bar=False --config.train.log_every=50 $overrides
  # shellcheck disable=SC2086
  $PY eval.py "${COMMON[@]}" --workdir "$w" "${EVAL[@]}" --config.eval.methods=$methods $overrides
done
ROWNAMES=$(printf '%s\n' "${ROWS[@]}") $PY - "$ROOT" "$STEPS" > results/ablations/results.md <<'PY'
import json, os, sys
root, steps = sys.argv[1], sys.argv[2]
rows = [r.split("|", 1) for r in os.environ["ROWNAMES"].splitlines()]
print(f"# Ablations of the default's ProSG stage ({steps} steps each)\n")
print("Test split, 4 facts per prompt, teacher-forced exact match (mean ± std over 3 seeds x 16")
print("examples) of the facts alone and of all answers (facts and closing word), and answer-token")
print("perplexity; `bash results/ablations/run.sh`, 2 CPU cores.\n")
print("| variant | override | facts D=64 | facts D=4096 | all D=4096 | ppl D=4096 |")
print("|---|---|---|---|---|---|")
def cell(r, key, m, d):
    return f"{100 * r[key][m][d]:.1f}% ± {100 * r[key + '_std'][m][d]:.1f}%"
def line(name, over, r, m):
    ppl = r["perplexity"]["prompt_retention"][m]["4096"]
    facts = [cell(r, "prompt_retention_facts", m, d) for d in ("64", "4096")]
    all_ = cell(r, "prompt_retention", m, "4096")
    print(f"| {name} | `{over or '-'}` | {' | '.join(facts)} | {all_} | {ppl:.2f} |")
missing = []
for i, (name, over) in enumerate(rows):
    path = f"{root}/row{i}/results.json"
    if not os.path.exists(path):
        missing.append(name)
        continue
    r = json.load(open(path))
    if i == 0:
        line("base model alone (method none)", "", r, "none")
        line("repeat_prompt", "", r, "repeat_prompt")
    line(name, over, r, "prosg")
if missing:
    print(f"\nNot run yet (rerun the script to add them): {', '.join(missing)}.")
print("\nRWKV-4 base: not run (no tiny RWKV-4 base is shipped; pretraining one needs the GPU).")
PY
cat results/ablations/results.md
