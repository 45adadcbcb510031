#!/usr/bin/env bash
# Regenerates the README's pictures (docs/images/) from real VS Code: packages the extension,
# runs the real-editor tests that take them (tests/vscode/editor.test.mjs, viewer.test.mjs and report.test.mjs: code-server + headless
# Chromium, on a throwaway copy of examples/), and copies the screenshots they keep.
#   scripts/screenshots.sh               package, then run
#   scripts/screenshots.sh --no-package  use the dist/torchls.vsix already built
# Needs what scripts/setup.sh installs (tests/vscode/node_modules, chromium, .venv with torch).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ "${1:-}" != "--no-package" ]]; then
  npm run package
fi
test -f dist/torchls.vsix || { echo "dist/torchls.vsix is missing: run without --no-package" >&2; exit 1; }

ARTIFACTS=tests/vscode/artifacts
rm -rf "$ARTIFACTS"
TORCHLS_VSIX="$ROOT/dist/torchls.vsix" \
TORCHLS_TEST_PYTHON="${TORCHLS_TEST_PYTHON:-$ROOT/.venv/bin/python}" \
  node --test tests/vscode/editor.test.mjs tests/vscode/viewer.test.mjs tests/vscode/report.test.mjs

# screenshot kept by the tests -> picture in the README
declare -A PICTURES=(
  [hover-model-class]=hover
  [quick-fix-menu]=quick-fix
  [kfold-inserted]=kfold
  [downgrade-notification]=downgrade
  [viewer-training-checkpoint]=viewer
  [viewer-filter]=viewer-filter
  [viewer-compare]=viewer-compare
  [viewer-hostile-pickle]=viewer-hostile
  [viewer-sharded]=viewer-sharded
  [viewer-high-contrast]=viewer-high-contrast
  [viewer-diff]=viewer-diff
  [convert-notification]=convert
  [inlay-shapes]=inlay-shapes
  [codelens]=codelens
  [model-report]=model-report
  [model-report-filter]=model-report-filter
  [shape-fix-menu]=shape-fix
)
mkdir -p docs/images
for shot in "${!PICTURES[@]}"; do
  cp "$ARTIFACTS/$shot.png" "docs/images/${PICTURES[$shot]}.png"
  echo "docs/images/${PICTURES[$shot]}.png <- $ARTIFACTS/$shot.png"
done
