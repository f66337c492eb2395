#!/usr/bin/env bash
# The room benchmark against a service started here from a checkout (default: this one), then stopped.
#   scripts/room-bench.sh OUT [LABEL] [SOURCE_DIR] [-- room options...]
# e.g. before/after a change, one after the other on one machine:
#   git worktree add /tmp/before <commit>
#   scripts/room-bench.sh bench_results/room-before before /tmp/before
#   scripts/room-bench.sh bench_results/room-after after
# The service runs serve.yaml of SOURCE_DIR on 127.0.0.1 with the per-address stream cap off (every stream of the
# bench comes from one address); its whole process tree's CPU is sampled (serve.bench.cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
positional=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do positional+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
OUT=${positional[0]:?usage: scripts/room-bench.sh OUT [LABEL] [SOURCE_DIR] [-- room options...]}
LABEL=${positional[1]:-room}
SOURCE=$(cd "${positional[2]:-$REPO}" && pwd)
PORT=${ROOM_PORT:-28123}
export ASR_EVAL_DIR=${ASR_EVAL_DIR:-$(cd "$REPO/.." && pwd)/shared/eval}
CONFIG=$(mktemp --suffix=.yaml)
"$REPO/.venv/bin/python" - "$SOURCE/serve.yaml" "$CONFIG" "$PORT" <<'EOF'
import sys, yaml
source, target, port = sys.argv[1:]
config = yaml.safe_load(open(source))
config["http_options"].update(host="127.0.0.1", port=int(port))
config["applications"][0]["args"].setdefault("limits", {})["max_streams_per_client"] = 0
yaml.safe_dump(config, open(target, "w"), sort_keys=False)
EOF
cd "$SOURCE"
RAY_ADDRESS=local RAY_SERVE_PROXY_USE_GRPC=${RAY_SERVE_PROXY_USE_GRPC:-1} PYTHONPATH="$SOURCE" setsid "$REPO/.venv/bin/serve" run "$CONFIG" > "$CONFIG.log" 2>&1 &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; rm -f "$CONFIG"' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null || { tail -50 "$CONFIG.log"; exit 1; }
cd "$REPO"
.venv/bin/python -m serve.bench.room --url "ws://127.0.0.1:$PORT/v1/listen" --server-pid "$SERVER" \
  --label "$LABEL" --out "$OUT" "$@"
