#!/usr/bin/env bash
# Puts the server's pure-Python dependencies and torchls itself into bundled/libs, which the
# .vsix carries: the user's interpreter then needs only torch and friends, never pygls.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf bundled/libs
mkdir -p bundled/libs
# Pure-Python wheels only, resolved for the oldest Python we support, so the bundle runs on any
# interpreter from 3.10 on and on any platform.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile \
  --target bundled/libs --only-binary=:all: \
  --implementation py --python-version 3.10 --abi none --platform any \
  -r scripts/bundled-requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
cp -r server/torchls bundled/libs/torchls
find bundled/libs -name __pycache__ -type d -prune -exec rm -rf {} +
rm -rf bundled/libs/bin
test -f bundled/libs/pygls/__init__.py && test -f bundled/libs/lsprotocol/types.py
echo "bundled: $(ls bundled/libs | grep -v dist-info | tr '\n' ' ')"
