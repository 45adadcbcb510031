#!/usr/bin/env bash
# Quick start, step 1: install everything on a fresh Debian machine (Python 3.10+, Node 20),
# build the extension, and run torchls on the bundled example workspace.
#   - Debian: chromium and ripgrep (for the real-VS-Code tests), libkrb5-dev (code-server)
#   - Python: a virtualenv in .venv with torch 2.13.0 (CPU), torchls and the test tools
#   - npm: the client's packages, and code-server + playwright-core under tests/vscode
#   - dist/torchls.vsix: the packaged extension
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
step() { printf '\n== %s\n' "$*"; }
quiet_pip() { grep -vE '^(WARNING: Location|  )' || true; }

step "Debian packages"
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v rg >/dev/null || need+=(ripgrep)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev)
# Emacs + eglot for tests/editors (Neovim comes from PyPI: Debian's 0.7 is too old).
command -v emacs >/dev/null || need+=(emacs-nox)
dpkg -s elpa-eglot >/dev/null 2>&1 || need+=(elpa-eglot)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "chromium: $(command -v chromium)  ripgrep: $(command -v rg)  emacs: $(command -v emacs)"

step "Python environment (.venv)"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | quiet_pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt 2>&1 | quiet_pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1 | quiet_pip
.venv/bin/python -c "import torch, torchls; print('torch', torch.__version__, '| torchls', torchls.__version__)"

step "npm packages"
npm ci --no-audit --no-fund --loglevel=error
# code-server's ripgrep dependency downloads a binary in its install script; hand it Debian's.
RG_CACHE=$(mktemp -d)
mkdir -p "$RG_CACHE/vscode-ripgrep-cache-1.15.11"
tar -C "$(dirname "$(command -v rg)")" -czf \
  "$RG_CACHE/vscode-ripgrep-cache-1.15.11/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" rg
(cd tests/vscode && TMPDIR="$RG_CACHE" npm_config_yes=true npm_config_unsafe_perm=true \
  npm ci --no-audit --no-fund --loglevel=error)
rm -rf "$RG_CACHE"

step "Build the extension (dist/torchls.vsix)"
npm run --silent package >/dev/null
ls -l dist/torchls.vsix

step "torchls on the example workspace"
.venv/bin/python examples/make_checkpoints.py
(cd examples && "$ROOT/.venv/bin/torchls" doctor)
"$ROOT/.venv/bin/torchls" inspect examples/checkpoints/training.ckpt
(cd examples && "$ROOT/.venv/bin/torchls" profile model.py::SmallConvNet)
# train.py's loads are broken on purpose: `check` finds them and exits 1 (2 would be a usage error).
checked=0
(cd examples && "$ROOT/.venv/bin/torchls" check) || checked=$?
[ "$checked" -le 1 ]

cat <<'DONE'

Set up. Next:
  scripts/test.sh                                   run every test
  code --install-extension dist/torchls.vsix        install the extension in VS Code
  .venv/bin/torchls --help                          the command line
DONE
