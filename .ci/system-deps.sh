#!/usr/bin/env bash
# Debian packages the tests use: a real XRootD server, nginx for HTTP Range reads,
# Chromium for the browser tests, and wrk for bench/serve.py. Installed only when missing.
set -euo pipefail
need=()
command -v xrootd >/dev/null || need+=(xrootd-server xrootd-client)
command -v nginx >/dev/null || need+=(nginx-light)
command -v chromium >/dev/null || need+=(chromium)
command -v wrk >/dev/null || need+=(wrk)   # load generator of bench/serve.py
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
