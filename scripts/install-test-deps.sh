#!/usr/bin/env bash
# Install what the tests need on a fresh machine: Debian's chromium (for the page test), espeak-ng
# (speech in German, French and Spanish for the multilingual tests) and the Python packages in .venv.
# Then: .venv/bin/python -m pytest
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -d .venv ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
