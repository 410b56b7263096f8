#!/usr/bin/env bash
# Runs the accuracy harness on a GPU machine that has torch + transformers but no network
# (the lent H100s): the model arrives as a GGUF file (the repo's travel limit is 64 MiB per
# call, so the GGUF was carried in ~50 MB pieces over consecutive calls into $STASH/<model>/)
# and the corpora as the cached text files (benchmarks/accuracy/corpora.py builds them here).
#
#   bash tools/gpu/accuracy_session.sh MODEL GGUF_NAME [TIMEOUT_S] [LAYERS_ONLY]
#
# Env: STASH (default /root/stash), OUT (result folder), PYTHONPATH must hold `gguf`.
set -uo pipefail
MODEL=$1; GGUF=$2; T=${3:-480}
STASH=${STASH:-/root/stash}; OUT=${OUT:-/tmp/acc-out}
export SHARQ_VLLM_CACHE=$STASH/cache PYTHONUNBUFFERED=1
D=/root/models/$MODEL
mkdir -p "$D" "$OUT"
if [[ ! -f $D/$GGUF ]]; then cat "$STASH/$MODEL"/*part* > "$D/$GGUF"; fi
sha256sum "$D/$GGUF"
A=(--model "$MODEL" --model-dir "$D" --gguf-file "$GGUF" --device cuda --corpora code,prose
   --tokens 200000 --window 2048 --batch 8 --methods "${METHODS:-all}" --state "$STASH/state-$MODEL.json"
   --out "$OUT/accuracy-$MODEL.json")
if [[ -z ${4:-} ]]; then
  timeout "$T" python3 -m benchmarks.accuracy.harness "${A[@]}" -v 2>&1 | grep -v "Loading weights\|Converting" | tee "$OUT/log-$MODEL.txt"
  cp "$STASH/state-$MODEL.json" "$OUT/" || true
  [[ -f $OUT/accuracy-$MODEL.json ]] || python3 -m benchmarks.accuracy.harness "${A[@]}" --finalize
fi
[[ ${NO_LAYERS:-} ]] && exit 0
for C in ${LAYER_CORPORA:-code prose}; do
  timeout 150 python3 -m benchmarks.accuracy.layers --model "$MODEL" --model-dir "$D" --gguf-file "$GGUF" \
    --device cuda --dtype bfloat16 --corpus $C --tokens ${LAYER_TOKENS:-4094} --window 2048 \
    --methods ${LAYER_METHODS:-nvfp4,w4a16-w16,w4a16-w16-search,sharq-nvfp4-4:8-pairs,sharq-nvfp4-2:4-w16} \
    --out "$OUT/layers-$MODEL-$C.json" 2>&1 | grep -v "Loading weights\|Converting" | tail -40
done
