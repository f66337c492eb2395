#!/usr/bin/env bash
# Install the service's packages and run it: http://127.0.0.1:8000/ (page), ws://…/v1/listen.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -r requirements.txt
# Serve's proxy hands WebSocket messages to the Ingress over gRPC (serve/deploy/app.py: PROXY_ENV).
export RAY_SERVE_PROXY_USE_GRPC=1
# RAY_SERVE_ENABLE_HA_PROXY=1 in the environment: HAProxy holds the port instead (README: "The high-throughput ingress").
exec serve run serve.yaml "$@"
