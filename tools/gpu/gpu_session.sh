#!/usr/bin/env bash
# One GPU session over many calls, with the GPU work in background lanes.
#
# The lent machines have no network and take at most 64 MiB per call, so the vLLM bundle and a
# 1.1 GB model arrive over ~20 calls made back to back (the machine goes back after 30 s idle,
# and after 30 min held). Jobs run in "lanes": background processes in their own session
# (setsid), which outlive the call that started them, so GPU work overlaps the transfers. Every
# call ends with `collect`, so what finished comes back at once and nothing is lost when the
# machine goes back.
#
# Here (CPU machine), once:   bash tools/gpu/gpu_session.sh pack     -> .device-carry/cNN/ (git-ignored)
#                             bash tools/gpu/gpu_session.sh plan     -> the calls: carry lists + commands
#   (env: PACK_MODELS="qwen gemma smollm2", PACK_VLLM=0 for a session without vLLM, CARRY_DIR,
#    LIMIT: bytes a call may carry beside the tracked tree, default 64 MiB - tree - 1 MiB)
# On the device, every call:  bash tools/gpu/gpu_session.sh stash .device-carry/cNN [.device-vllm/pN]
#                             bash tools/gpu/gpu_session.sh lane NAME GPUS JOB...   (starts a lane)
#                             bash tools/gpu/gpu_session.sh status; bash tools/gpu/gpu_session.sh collect
# One job in the foreground:  bash tools/gpu/gpu_session.sh job NAME
# A lane runs its JOBs in order; a JOB written `@OTHER` waits until job OTHER (any lane) is done.
# Lanes run from a snapshot of the repo taken when the lane starts (later calls re-copy the tree).
#
# Jobs (results and logs under $RES/JOB/, state in $RES/JOB.rc):
#   kernel-tests  GPU kernel tests (tools/gpu/gpu_check.sh tests; prebuilt library)
#   kernel-bench  kernel benchmark (tools/gpu/gpu_check.sh bench)
#   kernel-install  the documented installs on the GPU: a wheel without _C (kernels compiled at first
#                 use from the package's sources, checked against the reference) and one with _C
#   serving-8b, serving-qwen, serving-online-8b, serving-profile-8b   gpu_serving.sh offline-8b / qwen /
#                 online-8b / profile-8b
#   tp2-serving   Llama-3.1-8B shape, TP=2, fp8 then sharq (tools/gpu/gpu_serving.sh tp2); 2 GPUs
#   qwen-model    join the Qwen2.5-Coder-1.5B-Instruct GGUF pieces, sha256, convert to bf16
#   qwen-greedy   greedy tokens through vLLM: SharQ kernels (compile + CUDA graphs) vs the
#                 PyTorch reference path (same compile cache), benchmarks/realmodel/greedy_check.py
#                 (gemma-greedy, smollm2-greedy: the same for the small models)
#   qwen-tp2      the same prompts at TP=2 (kernels) vs TP=1; 2 GPUs
#   qwen-prequant sharq-vllm quantize -> inspect -> vllm serve DST (no flag) -> chat completion;
#                 bytes on disk and load time vs the bf16 folder served with online quantization
#   qwen-abuse    vllm serve --quantization sharq --api-key + benchmarks/robustness/load_abuse.py
#   qwen-acc-code, qwen-acc-prose   accuracy harness, 200k tokens, bf16 activations
#   qwen-layers-prose  per-layer-group KL / perplexity attribution of the W4A16 roundings (layers.py)
#   gemma-model, gemma-acc, smollm2-model, smollm2-acc   the same for the small models
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
STASH=${STASH:-$HOME/stash}
RES=${RES:-$HOME/results}
OUT=${OUT:-$PWD/session_out}
MODELS=${MODELS:-$HOME/models}
mkdir -p "$STASH" "$RES" "$MODELS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export SHARQ_VLLM_CACHE=$STASH/cache

# job-name prefix -> model asset; the pins (wheels, GGUF file names, sha256) live in one place,
# sharq_vllm/assets/catalog.py, and are read from there (stdlib-only import, no torch needed)
declare -A ASSET=([qwen]=qwen2.5-coder [gemma]=gemma3 [smollm2]=smollm2)
asset_pairs() { local k; for k in "${!ASSET[@]}"; do printf '%s=%s ' "$k" "${ASSET[$k]}"; done; }
gguf_name() {  # PREFIX -> the asset's GGUF file name
  PYTHONPATH=$PWD python3 -c 'import sys; from sharq_vllm.assets import MODELS; print(MODELS[sys.argv[1]].gguf_name)' "${ASSET[$1]}"
}

log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# ---------------------------------------------------------------- pack (CPU machine) --------
pack() {
  # .device-carry/cNN: what each call carries beside .device-vllm/pN; per call at most
  # LIMIT bytes in all (default: the 64 MiB travel limit minus the tracked tree, which travels
  # with every call, and 1 MiB for untracked files and slack).
  local tree limit cache=${SHARQ_VLLM_CACHE_LOCAL:-$HOME/.cache/sharq-vllm}
  tree=$(git ls-files -z 2>/dev/null | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
  limit=${LIMIT:-$(( (64 << 20) - ${tree:-0} - (1 << 20) ))}
  local py=python3 carry=${CARRY_DIR:-.device-carry}
  rm -rf "$carry" && mkdir -p "$carry"
  PYTHONPATH=$PWD $py - "$limit" "$cache" "${PACK_MODELS:-qwen gemma smollm2}" "$carry" "$(asset_pairs)" <<'PY'
import gzip, hashlib, os, shutil, sys
from pathlib import Path
from sharq_vllm.assets import MODELS
limit, cache, models = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split()
assets = dict(kv.split("=", 1) for kv in sys.argv[5].split())  # job prefix -> asset name
names = {m: MODELS[a].gguf_name for m, a in assets.items()}
root = Path(sys.argv[4])
vllm_dir = Path(os.environ.get("PACK_VLLM_DIR", ".device-vllm"))  # tests point it elsewhere
vllm = sorted(vllm_dir.glob("p*")) if os.environ.get("PACK_VLLM", "1") != "0" else []
def size(p):
    if not p.exists():
        return 0
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
first_extra = [Path("build/prebuilt"), Path("benchmarks/serving/.shapes")]
calls = []  # list of (free bytes, dir)
def new_call(fixed):
    i = len(calls) + 1
    d = root / f"c{i:02d}"; d.mkdir()
    calls.append([limit - fixed, d])
    return calls[-1]
# call 1..3 share room with the vLLM bundle parts; call 1 also with the prebuilt lib + shapes
for i, p in enumerate(vllm or [Path("-")]):
    fixed = size(p) + (sum(size(e) for e in first_extra) if i == 0 else 0)
    new_call(fixed)
# small things (tokenizers, corpora, the gguf wheel) into the first call with room for them (call
# 1 may be full already: bundle part 1 + the prebuilt library + the serving shapes)
extra = root / "_extra"; extra.mkdir()
for w in sorted((Path(".device-model/m1")).glob("gguf-*.whl")):
    shutil.copy(w, extra / w.name)
corp = extra / "corpora"; corp.mkdir()
for t in sorted((cache / "corpora").glob("*.txt")):
    with open(t, "rb") as f, gzip.open(corp / (t.name + ".gz"), "wb", compresslevel=6) as g:
        shutil.copyfileobj(f, g)
# the tokenizer files that sharq_vllm.assets wrote here: the device's transformers (5.17) converts
# Gemma 3's GGUF tokenizer wrongly (benchmarks/accuracy/harness.py TOKENIZER_PINS)
for m in models:
    src = cache / "models" / f"{assets[m]}-bfloat16"
    files = [f for f in sorted(src.glob("*")) if f.name.startswith("tokenizer") or f.name in
             ("chat_template.jinja", "special_tokens_map.json")]
    if files:
        d = extra / f"{m}-tokenizer"; d.mkdir()
        for f in files:
            with open(f, "rb") as fi, gzip.open(d / (f.name + ".gz"), "wb", compresslevel=6) as fo:
                shutil.copyfileobj(fi, fo)
room = next((c for c in calls if c[0] >= size(extra)), None) or new_call(0)
shutil.move(str(extra), str(room[1] / "extra"))
room[0] -= size(room[1] / "extra")
# model pieces, in order, filling each call
ci = 0
for m in models:
    src = cache / "gguf" / names[m]
    data_len = src.stat().st_size
    h = hashlib.sha256()
    with open(src, "rb") as f:
        k = 0
        while True:
            while ci < len(calls) and calls[ci][0] < (1 << 20):
                ci += 1
            if ci >= len(calls):
                new_call(0)
            n = min(calls[ci][0], 1 << 62)
            chunk = f.read(n)
            if not chunk:
                break
            h.update(chunk)
            (calls[ci][1] / f"{m}.gguf.{k:03d}").write_bytes(chunk)
            calls[ci][0] -= len(chunk)
            k += 1
    (calls[ci][1] / f"{m}.gguf.manifest").write_text(f"{names[m]} {k} {data_len} {h.hexdigest()}\n")
for free, d in calls:
    print(d, f"{(limit - free) / 2**20:.1f} MiB", " ".join(sorted(x.name for x in d.iterdir())))
PY
}

# ---------------------------------------------------------------- stash (device) -----------
stash() {
  local d
  for d in "$@"; do
    if [ -x "$d/on-device.sh" ] || [ -f "$d/on-device.sh" ]; then
      mode=stash; [ -f "$HOME/vllm-bundle/.want-install" ] && mode=install
      case "$d" in *p3*) mode=install;; esac
      bash "$d/on-device.sh" "$mode" "$d" 2>&1 | tail -2
    elif [ -n "$(ls -A "$d" 2>/dev/null)" ]; then  # a call may carry nothing but a bundle part
      cp -r "$d"/* "$STASH"/
    fi
  done
  if [ -d "$STASH/extra" ]; then
    mkdir -p "$STASH/cache/corpora" "$STASH/wheels"
    for g in "$STASH"/extra/corpora/*.gz; do [ -f "$g" ] && gunzip -c "$g" > "$STASH/cache/corpora/$(basename "$g" .gz)"; done
    cp "$STASH"/extra/*.whl "$STASH/wheels/" 2>/dev/null
    local t
    for t in "$STASH"/extra/*-tokenizer; do
      [ -d "$t" ] || continue
      mkdir -p "$STASH/$(basename "$t")"
      for g in "$t"/*.gz; do gunzip -c "$g" > "$STASH/$(basename "$t")/$(basename "$g" .gz)"; done
    done
    rm -rf "$STASH/extra"
  fi
  local pieces=("$STASH"/*.gguf.[0-9]*)
  log "stash: $(du -sh "$STASH" | cut -f1); ${#pieces[@]} model pieces; vllm: $([ -f "$HOME/vllm-site/.complete" ] && echo ready || echo not yet)"
}

# ---------------------------------------------------------------- lanes --------------------
lane() {
  local name=$1 gpus=$2; shift 2
  local snap
  snap="$HOME/snap-$name-$(date +%s)"
  mkdir -p "$snap"
  tar -cf - --exclude=./.venv --exclude=./.hypothesis --exclude=./.mypy_cache --exclude=./.device-carry --exclude=./.device-vllm --exclude=./.device-model \
      --exclude=./session_out --exclude=./.git . | tar -xf - -C "$snap"
  echo "$*" > "$RES/lane-$name.jobs"
  setsid nohup env CUDA_VISIBLE_DEVICES="$gpus" LANE="$name" bash "$snap/tools/gpu/gpu_session.sh" _run_lane "$@" \
    > "$RES/lane-$name.log" 2>&1 < /dev/null &
  log "lane $name (GPUs $gpus) started: $*"
}

_run_lane() {
  local j
  for j in "$@"; do
    if [ "${j#@}" != "$j" ]; then
      log "waiting for ${j#@}"
      while [ ! -f "$RES/${j#@}.rc" ]; do sleep 5; done
      continue
    fi
    if [ -f "$RES/$j.rc" ]; then log "$j already ran (rc $(cat "$RES/$j.rc"))"; continue; fi
    mkdir -p "$RES/$j"
    echo "$(date +%s)" > "$RES/$j.start"
    log "start $j (GPUs ${CUDA_VISIBLE_DEVICES:-all})"
    ( job "$j" ) > "$RES/$j/job.log" 2>&1
    local rc=$?
    echo "$rc" > "$RES/$j.rc"
    log "end $j rc=$rc after $(( $(date +%s) - $(cat "$RES/$j.start") ))s"
  done
}

status() {
  local f j
  for f in "$RES"/lane-*.jobs; do
    [ -f "$f" ] || continue
    echo "lane $(basename "$f" .jobs | sed 's/lane-//'): $(cat "$f")"
  done
  for f in "$RES"/*.start; do
    [ -f "$f" ] || continue
    j=$(basename "$f" .start)
    if [ -f "$RES/$j.rc" ]; then
      echo "  $j: rc=$(cat "$RES/$j.rc") ($(( $(stat -c %Y "$RES/$j.rc") - $(cat "$f") ))s)"
    else
      echo "  $j: running $(( $(date +%s) - $(cat "$f") ))s | $(tr '\r' '\n' < "$RES/$j/job.log" | grep -v '^\s*$' | tail -1 | cut -c1-150)"
    fi
  done
  nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader 2>/dev/null | tr '\n' ';'; echo
}

collect() {
  mkdir -p "$OUT"
  # logs are cleaned of progress bars; the tarball stays far below the 16 MiB per-file limit
  local tmp; tmp=$(mktemp -d)
  (cd "$RES" && find . -type f ! -name '*.safetensors' ! -name '*.bin' -size -40M | while read -r f; do
      mkdir -p "$tmp/$(dirname "$f")"
      case "$f" in
        *.log|*.txt) tr '\r' '\n' < "$f" | grep -v -E 'Capturing CUDA graphs|it/s\]|s/it\]|^\s*$' > "$tmp/$f" ;;
        *) cp "$f" "$tmp/$f" ;;
      esac
    done)
  tar -czf "$OUT/results.tgz" -C "$tmp" . && rm -rf "$tmp"
  ls -la "$OUT/results.tgz" | awk '{print "collect:", $5, "bytes"}'
}

# ---------------------------------------------------------------- jobs ---------------------
plugin_site() {
  # vLLM finds plugins through entry points: a minimal dist-info beside the repo on PYTHONPATH
  local site=$HOME/sharq-site
  if [ ! -f "$site/sharq_vllm-0.0.0.dist-info/entry_points.txt" ]; then
    mkdir -p "$site/sharq_vllm-0.0.0.dist-info"
    printf 'Metadata-Version: 2.1\nName: sharq-vllm\nVersion: 0.0.0\n' > "$site/sharq_vllm-0.0.0.dist-info/METADATA"
    printf '[vllm.general_plugins]\nsharq = sharq_vllm:register\n[console_scripts]\nsharq-vllm = sharq_vllm.cli:main\n' \
      > "$site/sharq_vllm-0.0.0.dist-info/entry_points.txt"
  fi
  export PYTHONPATH=$site:$HOME/vllm-site:$HOME/gguf-site:$PWD:${PYTHONPATH:-}
}

use_kernels() { export SHARQ_EXT_LIB=$PWD/build/prebuilt/libsharq_C.so SHARQ_JIT=0; }
use_reference() { export SHARQ_EXT_LIB='' SHARQ_JIT=0; }

wait_vllm() { while [ ! -f "$HOME/vllm-site/.complete" ]; do sleep 5; done; }

pieces_complete() {  # MODEL: all pieces named in its manifest are in $STASH
  local m=$1 man have
  man=$(cat "$STASH/$m.gguf.manifest" 2>/dev/null) || return 1
  have=("$STASH/$m".gguf.[0-9]*)
  [ -f "${have[0]}" ] && [ "${#have[@]}" -ge "$(echo "$man" | cut -d' ' -f2)" ]
}

join_pieces() {  # MODEL DEST_FILE: concatenate the pieces in order and check the sha256
  local m=$1 dest=$2 man
  pieces_complete "$m" || { log "$m: pieces missing"; return 3; }
  man=$(cat "$STASH/$m.gguf.manifest")
  mkdir -p "$(dirname "$dest")"
  cat "$STASH/$m".gguf.[0-9]* > "$dest"
  echo "$(echo "$man" | cut -d' ' -f4)  $dest" | sha256sum -c --quiet || { log "$m: sha256 mismatch"; return 3; }
  log "$m: joined $(echo "$man" | cut -d' ' -f2) pieces, $(stat -c %s "$dest") bytes, sha256 ok"
}

model_job() {  # join pieces, check, install gguf, convert GGUF -> bf16 folder
  local m=$1 gguf
  gguf=$(gguf_name "$1") || return 2
  log "waiting for all pieces of $gguf"
  until pieces_complete "$m"; do sleep 5; done
  join_pieces "$m" "$MODELS/$m-gguf/$gguf" || return 3
  python3 -m pip install -q --no-deps --no-index --target "$HOME/gguf-site" "$STASH"/wheels/gguf-*.whl 2>&1 | tail -2
  export PYTHONPATH=$HOME/gguf-site:${PYTHONPATH:-}
  local t0=$SECONDS
  # the CPU machine's tokenizer files (see pack) instead of this machine's conversion: the
  # device's transformers 5.17 converts some GGUF tokenizers wrongly (SmolLM2: eos_token_id 1,
  # the GGUF says 2); they are checked against the GGUF metadata all the same
  local tokdir=""
  [ -d "$STASH/$m-tokenizer" ] && tokdir="$STASH/$m-tokenizer" && log "tokenizer files from the CPU machine: $(ls "$tokdir" | tr '\n' ' ')"
  python3 -m benchmarks.realmodel.convert_gguf "$MODELS/$m-gguf/$gguf" "$MODELS/$m-bf16" $tokdir || return 4
  log "converted in $((SECONDS - t0))s"; du -sb "$MODELS/$m-bf16"
}

acc_job() {  # MODEL CORPUS [METHODS]
  local m=$1 c=$2 methods=${3:-${ACC_METHODS:-bf16,fp8,nvfp4,mxfp4,nvfp4-w32,w4a16-w32,w4a16-w16,sharq-nvfp4-2:4,sharq-nvfp4-4:8-pairs,dense+dense,sharq-mxfp4,sharq-plus-rtn,nvfp4-w16-search-up,w4a16-w16-search-up,w4a16-w16-up6,sharq-plus,sharq-plus-dense}}
  while [ ! -f "$RES/$m-model.rc" ]; do sleep 5; done
  [ "$(cat "$RES/$m-model.rc")" = 0 ] || { log "$m-model failed"; return 3; }
  export PYTHONPATH=$HOME/gguf-site:$PWD:${PYTHONPATH:-}
  timeout "${ACC_TIMEOUT:-720}" python3 -m benchmarks.accuracy.harness --model "${ASSET[$m]}" \
    --model-dir "$MODELS/$m-bf16" --device cuda --corpora "$c" --tokens 200000 --window 2048 \
    --batch "${ACC_BATCH:-2}" --methods "$methods" --state "$RES/$m-acc-$c/state.json" \
    --out "$RES/$m-acc-$c/accuracy-$m-$c.json" -v 2>&1 | grep -v "Loading weights\|Converting"
  local rc=${PIPESTATUS[0]}
  [ -f "$RES/$m-acc-$c/accuracy-$m-$c.json" ] || python3 -m benchmarks.accuracy.harness --model "${ASSET[$m]}" \
    --model-dir "$MODELS/$m-bf16" --corpora "$c" --tokens 200000 --window 2048 --batch "${ACC_BATCH:-2}" \
    --methods "$methods" --state "$RES/$m-acc-$c/state.json" --out "$RES/$m-acc-$c/accuracy-$m-$c.json" --finalize
  return "$rc"
}

serve_until_healthy() {  # PORT LOGFILE TIMEOUT ARGS... ; sets SERVER_PID
  local port=$1 logf=$2 t=$3; shift 3
  setsid python3 -m vllm.entrypoints.openai.api_server --host 127.0.0.1 --port "$port" "$@" > "$logf" 2>&1 &
  SERVER_PID=$!
  local t0=$SECONDS
  while (( SECONDS - t0 < t )); do
    if curl -sf "http://127.0.0.1:$port/health" > /dev/null; then log "server :$port healthy after $((SECONDS - t0))s"; return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { log "server :$port died"; tail -30 "$logf"; return 1; }
    sleep 2
  done
  log "server :$port not healthy after ${t}s"; tail -30 "$logf"; return 1
}

stop_server() { [ -n "${SERVER_PID:-}" ] && kill -TERM -- "-$SERVER_PID" 2>/dev/null; sleep 3; kill -KILL -- "-$SERVER_PID" 2>/dev/null; SERVER_PID=; }

job() {
  local j=$1 o=$RES/$1
  mkdir -p "$o"
  case "$j" in
    kernel-tests) OUT=$o SHARQ_TOTAL_S=420 bash tools/gpu/gpu_check.sh tests ;;
    kernel-bench)  # FP8 / Marlin baselines come from vLLM: wait for the bundle
      wait_vllm; export PYTHONPATH=$HOME/vllm-site:${PYTHONPATH:-}
      OUT=$o SHARQ_TOTAL_S=300 bash tools/gpu/gpu_check.sh bench ;;
    kernel-install)  # issue 16 item 5 on the GPU: wheels built as documented, kernels from site-packages
      local d; d=$(mktemp -d)
      log "wheel without _C (SHARQ_BUILD_CUDA=0, as pip's isolated default build gives): JIT at first use"
      SHARQ_BUILD_CUDA=0 python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$d/dist0" . || return 4
      unzip -l "$d"/dist0/*.whl | grep -E "_C|csrc" | awk '{print $4}'
      python3 -m pip install -q --no-deps --no-index --target "$d/site0" "$d"/dist0/*.whl || return 5
      (cd "$d" && env -u SHARQ_EXT_LIB PYTHONPATH="$d/site0" SHARQ_BUILD_DIR="$d/jit" timeout 600 \
        python3 -m sharq_vllm.kernels.build check) || return 6
      (cd "$d" && env -u SHARQ_EXT_LIB PYTHONPATH="$d/site0" SHARQ_BUILD_DIR="$d/jit" python3 -c "
import torch
from sharq_vllm import ops, reference
x = torch.randn(5, 4096, device='cuda', dtype=torch.bfloat16) * 3
ok, how = ops.kernel_path_available('cuda'); print('kernel path:', ok, how)
a, b = torch.ops.sharq.prepare(x, 'nvfp4', '4:8-pairs'), reference.prepare_activation(x, 'nvfp4', '4:8-pairs').x_hat
print('prepare from the JIT library == reference:', torch.equal(a, b)); assert ok and torch.equal(a, b)
") || return 7
      log "wheel with _C (pip wheel --no-build-isolation, as README says for GPU machines)"
      python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$d/dist1" . || return 8
      unzip -l "$d"/dist1/*.whl | grep -E "_C" | awk '{print $4}'
      python3 -m pip install -q --no-deps --no-index --target "$d/site1" "$d"/dist1/*.whl || return 9
      (cd "$d" && env -u SHARQ_EXT_LIB PYTHONPATH="$d/site1" SHARQ_JIT=0 python3 -m sharq_vllm.kernels.build check) ;;
    serving-8b|serving-qwen|serving-online-8b|serving-profile-8b)  # gpu_serving.sh stages, each in its own OUT
      wait_vllm
      local st=${j#serving-}; [ "$st" = 8b ] && st=offline-8b
      OUT=$o BUDGET_S=${SERVING_BUDGET_S:-560} SHARQ_EXT_LIB=$PWD/build/prebuilt/libsharq_C.so SHARQ_JIT=0 \
        bash tools/gpu/gpu_serving.sh "$st" ;;
    tp2-serving)
      wait_vllm
      OUT=$o BUDGET_S=${TP2_BUDGET_S:-420} SHARQ_EXT_LIB=$PWD/build/prebuilt/libsharq_C.so SHARQ_JIT=0 \
        bash tools/gpu/gpu_serving.sh tp2 ;;
    qwen-model|gemma-model|smollm2-model) model_job "${j%-model}" ;;
    qwen-acc-code|qwen-acc-prose|gemma-acc-code|gemma-acc-prose|smollm2-acc-code|smollm2-acc-prose)
      local m=${j%%-*} c=${j##*-}
      acc_job "$m" "$c" ;;
    qwen-layers-prose)  # which layer groups make sharq-plus' weights miss target (c) on Qwen prose
      while [ ! -f "$RES/qwen-model.rc" ]; do sleep 5; done
      export PYTHONPATH=$HOME/gguf-site:$PWD:${PYTHONPATH:-}
      timeout 900 python3 -m benchmarks.accuracy.layers --model qwen2.5-coder --model-dir "$MODELS/qwen-bf16" \
        --device cuda --dtype bfloat16 --corpus prose --tokens 200000 --window 2048 --batch 2 \
        --methods w4a16-w16,w4a16-w16-search-up,w4a16-w16-up6 --out "$o/layers-qwen2.5-coder-prose.json" ;;
    qwen-greedy|gemma-greedy|smollm2-greedy)
      wait_vllm; plugin_site
      while [ ! -f "$RES/${j%-greedy}-model.rc" ]; do sleep 5; done
      local M=$MODELS/${j%-greedy}-bf16
      ( use_kernels; timeout 420 python3 -m benchmarks.realmodel.greedy_check run --model "$M" \
          --max-tokens 48 --gpu-memory-utilization 0.2 --out "$o/greedy-kernel.json" ) > "$o/kernel.log" 2>&1
      log "kernel rc=$?"; grep -E "sharq: quantized|kernel_path|->|Error" "$o/kernel.log" | tail -12
      ( use_reference; timeout 420 python3 -m benchmarks.realmodel.greedy_check run --model "$M" \
          --max-tokens 48 --gpu-memory-utilization 0.2 --out "$o/greedy-reference.json" ) > "$o/reference.log" 2>&1
      log "reference rc=$?"; grep -E "kernel_path|->|Error" "$o/reference.log" | tail -12
      python3 -m benchmarks.realmodel.greedy_check compare "$o/greedy-kernel.json" "$o/greedy-reference.json" \
        --tie-nats 0.5 --out "$o/greedy-compare.json" ;;
    qwen-greedy-ref)  # the reference half of qwen-greedy again, against its kernel run
      wait_vllm; plugin_site
      ( use_reference; timeout 420 python3 -m benchmarks.realmodel.greedy_check run --model "$MODELS/qwen-bf16" \
          --max-tokens 48 --gpu-memory-utilization 0.2 --out "$o/greedy-reference.json" ) > "$o/reference.log" 2>&1
      log "reference rc=$?"; grep -E "kernel_path|->|Error" "$o/reference.log" | tail -12
      python3 -m benchmarks.realmodel.greedy_check compare "$RES/qwen-greedy/greedy-kernel.json" "$o/greedy-reference.json" \
        --tie-nats 0.5 --out "$o/greedy-compare.json" ;;
    qwen-tp2)
      wait_vllm; plugin_site; use_kernels
      while [ ! -f "$RES/qwen-greedy.rc" ]; do sleep 5; done
      timeout 420 python3 -m benchmarks.realmodel.greedy_check run --model "$MODELS/qwen-bf16" --tp 2 \
          --max-tokens 48 --gpu-memory-utilization 0.2 --out "$o/greedy-tp2.json" > "$o/tp2.log" 2>&1
      log "tp2 rc=$?"; grep -E "kernel_path|->|Error" "$o/tp2.log" | tail -12
      python3 -m benchmarks.realmodel.greedy_check compare "$RES/qwen-greedy/greedy-kernel.json" "$o/greedy-tp2.json" \
        --tie-nats 0.5 --out "$o/tp2-compare.json" ;;
    qwen-prequant)
      wait_vllm; plugin_site; use_kernels
      local M=$MODELS/qwen-bf16 D=$MODELS/qwen-sharq t0=$SECONDS
      python3 -m sharq_vllm.cli quantize "$M" "$D" --overwrite --no-progress || return 5
      log "quantize took $((SECONDS - t0))s"
      python3 -m sharq_vllm.cli inspect "$D" | tail -15
      du -sb "$M" "$D"; du -sb "$M"/*.safetensors "$D"/*.safetensors
      serve_until_healthy 8101 "$o/server-prequant.log" 400 --model "$D" --served-model-name qwen-sharq \
        --max-model-len 4096 --gpu-memory-utilization 0.2 --kv-cache-memory 4294967296 || return 6
      curl -s http://127.0.0.1:8101/v1/chat/completions -H 'Content-Type: application/json' -d '{"model": "qwen-sharq",
        "messages": [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}],
        "max_tokens": 128, "temperature": 0}' | tee "$o/chat.json"; echo
      grep -E "sharq|Loading weights took|Model loading took|model weights took|init engine" "$o/server-prequant.log" | grep -v "quantized model\." | tail -12
      stop_server
      # the same folder as bf16 with online quantization, for load time and memory side by side
      serve_until_healthy 8102 "$o/server-online.log" 400 --model "$M" --quantization sharq --served-model-name qwen-online \
        --max-model-len 4096 --gpu-memory-utilization 0.2 --kv-cache-memory 4294967296 || return 7
      curl -s http://127.0.0.1:8102/v1/chat/completions -H 'Content-Type: application/json' -d '{"model": "qwen-online",
        "messages": [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}],
        "max_tokens": 128, "temperature": 0}' > "$o/chat-online.json"
      grep -E "Loading weights took|Model loading took|model weights took|init engine" "$o/server-online.log" | tail -6
      stop_server
      python3 - "$o/chat.json" "$o/chat-online.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["choices"][0]["message"]["content"] for p in sys.argv[1:3])
print("prequantized == online quantization reply:", a == b)
PY
      ;;
    qwen-abuse)
      wait_vllm; plugin_site; use_kernels
      export VLLM_API_KEY=sharq-abuse-key-$RANDOM
      serve_until_healthy 8103 "$o/server.log" 400 --model "$MODELS/qwen-bf16" --quantization sharq \
        --served-model-name qwen --max-model-len 2048 --gpu-memory-utilization 0.3 --api-key "$VLLM_API_KEY" || return 6
      timeout 600 python3 -m benchmarks.robustness.load_abuse --url http://127.0.0.1:8103 --api-key "$VLLM_API_KEY" \
        --pid "$SERVER_PID" --rounds 3 --valid 200 --disconnects 40 --bad-repeats 4 --noauth 10 --workers 64 \
        --json "$o/robustness-gpu.json"
      local rc=$?
      stop_server
      return $rc ;;
    sleep) sleep 5 ;;
    *) log "unknown job $j"; return 2 ;;
  esac
}

plan() {  # the calls of one session, in order, from the packed .device-carry (CPU machine)
  local carry=${CARRY_DIR:-.device-carry} c n=0 extra
  for c in "$carry"/c[0-9]*; do
    n=$((n + 1)); extra=""
    [ -d ".device-vllm/p$n" ] && extra=" .device-vllm/p$n"
    [ "$n" = 1 ] && extra="$extra build/prebuilt benchmarks/serving/.shapes"
    echo "call $n: carry [$c$extra]"
    local parts=${extra%% build*}
    echo "        bash tools/gpu/gpu_session.sh stash ${parts:+${parts# } }$c"
  done
  echo "Start the lanes in call 1 (after its stash), e.g. the session of 2026-11-27:"
  echo "  lane k0 0 kernel-tests; lane k1 1 kernel-bench; lane a 0,1 @kernel-tests @kernel-bench tp2-serving;"
  echo "  lane q0 0 @tp2-serving qwen-model qwen-greedy qwen-greedy-ref qwen-prequant; lane q1 1 @tp2-serving @qwen-model qwen-acc-code qwen-acc-prose;"
  echo "  lane q3 1 @tp2-serving @qwen-model qwen-abuse; lane t 0,1 @qwen-prequant @qwen-abuse qwen-tp2"
  echo "Keep a call in flight (e.g. 'sleep 120; bash tools/gpu/gpu_session.sh status; bash tools/gpu/gpu_session.sh collect')"
  echo "until the jobs end: the machine goes back after 30 s without one."
}

cmd=${1:-status}; shift || true
case "$cmd" in
  pack) pack ;;
  plan) plan ;;
  join) join_pieces "$@" ;;
  stash) stash "$@"; status ;;
  lane) lane "$@" ;;
  _run_lane) _run_lane "$@" ;;
  status) status ;;
  collect) collect ;;
  job) job "$@" ;;
  *) sed -n '2,35p' "$0"; exit 2 ;;
esac
