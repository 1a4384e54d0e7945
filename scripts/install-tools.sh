#!/usr/bin/env bash
# Installs Prometheus' tools from Debian's packages when they are missing:
# /usr/bin/promtool, /usr/bin/prometheus, /usr/bin/amtool, /usr/bin/prometheus-alertmanager,
# and openssl (the TLS test makes a throwaway certificate with it).
set -euo pipefail
need=()
for bin in promtool prometheus amtool prometheus-alertmanager openssl; do
  command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo ">> installing Debian packages prometheus and prometheus-alertmanager (missing: ${need[*]})"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "!! not root and no sudo: install 'prometheus' and 'prometheus-alertmanager' yourself;" >&2
    echo "!! tests that need them are skipped outside CI and fail in CI." >&2
    exit 0
  fi
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  prometheus prometheus-alertmanager openssl >/dev/null
echo ">> installed: $(promtool --version 2>&1 | head -1)"
