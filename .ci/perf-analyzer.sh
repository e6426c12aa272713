#!/usr/bin/env bash
# Triton's perf_analyzer for tests/serve/test_grpc_perf_analyzer.py and bench/serve.py, installed into
# .venv/perf_analyzer/ (or $PERF_ANALYZER_DIR):
#   perf_analyzer          the binary from the tritonclient 2.40.0 wheel (the last one that ships it;
#                          PyPI's "perf-analyzer" is a placeholder without it)
#   lib/libcudart.so.12    from the nvidia-cuda-runtime-cu12 wheel (linked in, no GPU needed)
#   lib/libb64.so.0d       Debian's libb64-0d, only when the system lacks it and it cannot be
#                          installed with apt-get (not root, no sudo -n): then unpacked from the .deb
# Run it as LD_LIBRARY_PATH=.venv/perf_analyzer/lib .venv/perf_analyzer/perf_analyzer ...
# Idempotent and silent when everything is there. Exits 1, saying what is missing, when it cannot
# install it (offline, no apt): the perf_analyzer tests are then skipped with that reason.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${PERF_ANALYZER_DIR:-$ROOT/.venv/perf_analyzer}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
TRITONCLIENT=2.40.0

have_b64() { ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d' || [ -e "$DEST/lib/libb64.so.0d" ]; }
runs() { LD_LIBRARY_PATH="$DEST/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$DEST/perf_analyzer" --version >/dev/null 2>&1; }

if [ -x "$DEST/perf_analyzer" ] && [ -e "$DEST/lib/libcudart.so.12" ] && have_b64 && runs; then
  exit 0
fi

mkdir -p "$DEST/lib"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$DEST/perf_analyzer" ]; then
  echo "perf-analyzer.sh: fetching perf_analyzer from tritonclient[all]==$TRITONCLIENT" >&2
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
      -d "$tmp" "tritonclient[all]==$TRITONCLIENT" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "perf-analyzer.sh: MISSING perf_analyzer: cannot download tritonclient==$TRITONCLIENT" >&2
    exit 1
  fi
  unzip -q -o -j "$tmp"/tritonclient-"$TRITONCLIENT"-*.whl \
    "tritonclient-$TRITONCLIENT.data/data/bin/perf_analyzer" -d "$tmp/bin"
  chmod 755 "$tmp/bin/perf_analyzer"
  mv "$tmp/bin/perf_analyzer" "$DEST/perf_analyzer"   # atomic: a half-copied binary is never seen
fi

if [ ! -e "$DEST/lib/libcudart.so.12" ]; then
  echo "perf-analyzer.sh: fetching libcudart.so.12 from nvidia-cuda-runtime-cu12" >&2
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "nvidia-cuda-runtime-cu12>=12,<13" \
      >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "perf-analyzer.sh: MISSING libcudart.so.12: cannot download nvidia-cuda-runtime-cu12" >&2
    exit 1
  fi
  unzip -q -o -j "$tmp"/nvidia_cuda_runtime_cu12-*.whl 'nvidia/cuda_runtime/lib/libcudart.so.12' -d "$tmp/lib"
  mv "$tmp/lib/libcudart.so.12" "$DEST/lib/libcudart.so.12"
fi

if ! have_b64; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    echo "perf-analyzer.sh: installing Debian's libb64-0d" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libb64-0d >/dev/null
  elif command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
      && (cd "$tmp" && apt-get download -qq libb64-0d >/dev/null 2>&1); then
    # no root: unpack the package's library next to libcudart instead
    dpkg-deb -x "$tmp"/libb64-0d_*.deb "$tmp/deb"
    cp -L "$(find "$tmp/deb" -name 'libb64.so.0d*' | head -n 1)" "$DEST/lib/libb64.so.0d"
  else
    echo "perf-analyzer.sh: MISSING libb64.so.0d (Debian package libb64-0d): not root, no sudo -n," \
      "and apt-get download failed; install libb64-0d to run perf_analyzer" >&2
    exit 1
  fi
fi

if ! runs; then
  echo "perf-analyzer.sh: $DEST/perf_analyzer does not run:" >&2
  LD_LIBRARY_PATH="$DEST/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$DEST/perf_analyzer" --version 2>&1 | tail -n 3 >&2 || true
  exit 1
fi
echo "perf-analyzer.sh: perf_analyzer installed in $DEST" >&2
