#!/usr/bin/env bash
# Quick start, step 2: every check and test. Lint, format, types (Python and TypeScript), then
# pytest: unit tests, LSP end-to-end tests over stdio, the packaged .vsix, and real VS Code.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
echo "== ruff"; ruff check server tests bench examples; ruff format --check server tests bench examples
echo "== mypy"; mypy
echo "== tsc";  npm run --silent typecheck
echo "== pytest"
exec python -m pytest "$@"
