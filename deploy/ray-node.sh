#!/usr/bin/env bash
# Multi-node vLLM on Ray, one pod per node (LeaderWorkerSet; installed in the image as
# /usr/local/bin/sharq-ray-node). The leader starts the Ray head, waits until the whole group
# has joined, then runs `vllm serve "$@" --distributed-executor-backend ray`; a worker joins the
# leader's Ray cluster and blocks. Every pod runs the same image, so the sharq plugin is loaded in
# every Ray worker process (vLLM loads general plugins in each worker).
#
#   sharq-ray-node leader MODEL [vllm serve args...]
#   sharq-ray-node worker
#
# Env: LWS_LEADER_ADDRESS, LWS_GROUP_SIZE (set by LeaderWorkerSet), RAY_PORT (6379),
#      GROUP_WAIT_S (how long the leader waits for the group, default 900).
set -euo pipefail

role="${1:-}"
shift || true
port="${RAY_PORT:-6379}"
size="${LWS_GROUP_SIZE:-1}"

case "$role" in
leader)
    ray start --head --port="$port" --disable-usage-stats
    python3 - "$size" "${GROUP_WAIT_S:-900}" <<'PY'
import sys, time
import ray

want, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
ray.init(address="auto", logging_level="ERROR")
while True:
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    print(f"sharq-ray-node: {alive}/{want} nodes in the Ray cluster", flush=True)
    if alive >= want:
        break
    if time.time() > deadline:
        sys.exit(f"sharq-ray-node: only {alive}/{want} nodes joined in time")
    time.sleep(5)
PY
    exec vllm serve "$@" --distributed-executor-backend ray
    ;;
worker)
    addr="${LWS_LEADER_ADDRESS:?LWS_LEADER_ADDRESS is not set}:${port}"
    until ray health-check --address "$addr" >/dev/null 2>&1; do
        echo "sharq-ray-node: waiting for the Ray head at $addr"
        sleep 5
    done
    exec ray start --address="$addr" --block --disable-usage-stats
    ;;
*)
    echo "usage: sharq-ray-node leader MODEL [vllm serve args...] | sharq-ray-node worker" >&2
    exit 2
    ;;
esac
