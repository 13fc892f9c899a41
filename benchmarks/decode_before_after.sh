#!/usr/bin/env bash
# Decode throughput of an older build ("before") and this checkout ("after") in one run on one
# machine, with a kernel profile per case: the issue-9 table in one call on a GPU (about 5 min on
# an H100 at the issue's shapes; CPU shapes elsewhere).
#
# Usage: bash benchmarks/decode_before_after.sh OLD OUTDIR
#   OLD     a folder holding an older prosg_jax/ package, e.g. from
#           `mkdir OLD && git archive <rev> prosg_jax | tar -x -C OLD`
#   OUTDIR  receives before.jsonl and after.jsonl (benchmarks/decode_bench.py --json rows)
# RWKV-7 at batch 1 and 64 runs both ways, "after" at unroll 1 and 4; the rest of the table
# (RWKV-7 at batch 16 and 256, RWKV-4 at 1-256) runs "after" only, at the better unroll.
set -euo pipefail
OLD=$(cd "${1:?usage: decode_before_after.sh OLD OUTDIR}" && pwd)
OUTDIR=${2:?usage: decode_before_after.sh OLD OUTDIR}
PY=${PY:-python3}
mkdir -p "$OUTDIR"
BENCH=(benchmarks/decode_bench.py --tokens "${TOKENS:-128}" --repeats 3)
PROFILE=${PROFILE:-/tmp/decode_profile}
PYTHONPATH="$OLD" "$PY" "${BENCH[@]}" --version 7 --batch 1,64 --json "$OUTDIR/before.jsonl" \
  --label before --profile "$PROFILE/before"
"$PY" "${BENCH[@]}" --version 7 --batch 1,64 --unroll 1,4 --compare "$OUTDIR/before.jsonl" \
  --json "$OUTDIR/after.jsonl" --label after --profile "$PROFILE/after"
UNROLL=$("$PY" - "$OUTDIR/after.jsonl" <<'PY'
import collections, json, math, sys
score = collections.defaultdict(float)
for line in open(sys.argv[1]):
    row = json.loads(line)
    score[row["unroll"]] += math.log(row["tok_s"])
print(max(score, key=score.get))
PY
)
echo "# the rest at unroll $UNROLL"
"$PY" "${BENCH[@]}" --version 7 --batch 16,256 --unroll "$UNROLL" --json "$OUTDIR/after.jsonl" --label after
"$PY" "${BENCH[@]}" --version 4 --batch 1,16,64,256 --unroll "$UNROLL" --json "$OUTDIR/after.jsonl" \
  --label after
