#!/usr/bin/env bash
# Install what the tests need on a fresh machine: Debian's chromium (for the page test)
# and the Python packages in .venv. Then: .venv/bin/python -m pytest
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
[ -d .venv ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
