#!/usr/bin/env bash
# Serving peers side by side: mlaas4hep, NVIDIA Triton 2.51 (its onnxruntime backend) and MLServer 1.7,
# loaded by Triton's perf_analyzer on the same cores, servers alternating, then bench/peers.py prints
# the table (ratios to Triton, load averages) and writes it into bench/RESULTS-serve.md.
#
#   bench/peers.sh [--rounds 2] [--duration 4] [--points ...] [--no-mlserver] [--ours-args "..."]
#
# Builds or finds, under $PEERS_CACHE (default /work/.cache/triton, outside the repository), idempotently:
#   pytriton/                   nvidia-pytriton 0.7.0's wheel unpacked: the Triton 2.51 server binary
#   src/{onnxruntime_backend,core,common,backend}
#                               Triton's sources at r24.10: from $TRITON_SRC_MIRROR/triton-inference-server+NAME/repo
#                               (git directories; default /work/.mirror, where the search tool's `fetch` puts them),
#                               else `git clone --branch r24.10` from GitHub
#   ort/include/onnxruntime_c_api.h
#                               onnxruntime's C API header of 1.19 (the version r24.10 is written for; its C API
#                               is a subset of the 1.32 library's). onnxruntime's wheel ships no header, so it
#                               comes from $ORT_HEADER, or from yalue/onnxruntime_go's copy (a mirror as above, or
#                               GitHub), at its "Upgrade to onnxruntime 1.19.0" commit
#   install/backends/onnxruntime/libtriton_onnxruntime.so
#                               built with cmake, GPU off, linked to the project's pip onnxruntime (the same
#                               libonnxruntime.so our server runs)
#   ../mlserver-venv            MLServer 1.7 + onnxruntime in their own venv (MLServer pins its own FastAPI)
# and perf_analyzer with .ci/perf-analyzer.sh. Needs cmake, g++, git, unzip and rapidjson-dev (installed with
# apt-get when root). Exits 1 saying what is missing when a piece cannot be had.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PEERS_CACHE:-/work/.cache/triton}"
MIRROR="${TRITON_SRC_MIRROR:-/work/.mirror}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
TAG=r24.10
PYTRITON=0.7.0
ORT_GO_COMMIT=9abc5ad  # yalue/onnxruntime_go: "Upgrade to onnxruntime 1.19.0"
MLSERVER_VENV="${MLSERVER_VENV:-$(dirname "$CACHE")/mlserver-venv}"

say() { echo "peers.sh: $*" >&2; }
die() { say "$*"; exit 1; }
mkdir -p "$CACHE"

# --- the Triton server binary (nvidia-pytriton's wheel) ---------------------------------------------
TRITON_BIN="$CACHE/pytriton/pytriton/tritonserver/bin/tritonserver"
if [ ! -x "$TRITON_BIN" ]; then
  say "fetching nvidia-pytriton==$PYTRITON (the Triton 2.51 server binary)"
  mkdir -p "$CACHE/wheels"
  "$PY" -m pip download -q --no-deps -d "$CACHE/wheels" "nvidia-pytriton==$PYTRITON" \
    || die "MISSING Triton: cannot download nvidia-pytriton==$PYTRITON"
  rm -rf "$CACHE/pytriton.tmp" && mkdir "$CACHE/pytriton.tmp"
  unzip -q -o "$CACHE"/wheels/nvidia_pytriton-"$PYTRITON"-*.whl -d "$CACHE/pytriton.tmp"
  rm -rf "$CACHE/pytriton" && mv "$CACHE/pytriton.tmp" "$CACHE/pytriton"
fi
LIBTRITON="$(ls "$CACHE"/pytriton/nvidia_pytriton.libs/libtritonserver-*.so 2>/dev/null | head -1)"
[ -n "$LIBTRITON" ] || die "no libtritonserver in $CACHE/pytriton/nvidia_pytriton.libs"

# --- Triton's onnxruntime backend, built against the pip onnxruntime ---------------------------------
ORT_LIB="$("$PY" -c 'import onnxruntime, pathlib; print(next(pathlib.Path(onnxruntime.__file__).parent.glob("capi/libonnxruntime.so.*")))')"
BACKEND="$CACHE/install/backends/onnxruntime"
if [ ! -e "$BACKEND/libtriton_onnxruntime.so" ]; then
  command -v cmake >/dev/null && command -v g++ >/dev/null || die "MISSING cmake or g++ (apt-get install cmake g++)"
  if [ ! -e /usr/include/rapidjson/document.h ]; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q rapidjson-dev >/dev/null || die "MISSING rapidjson-dev"
    else die "MISSING rapidjson-dev (apt-get install rapidjson-dev)"; fi
  fi
  for r in onnxruntime_backend core common backend; do
    [ -e "$CACHE/src/$r/CMakeLists.txt" ] && continue
    rm -rf "$CACHE/src/$r" && mkdir -p "$CACHE/src/$r"
    m="$MIRROR/triton-inference-server+$r/repo"
    if [ -d "$m" ]; then
      say "sources: $r at $TAG from $m"
      git --git-dir="$m" archive "$TAG" | tar -x -C "$CACHE/src/$r"
    else
      say "sources: cloning $r at $TAG"
      git clone -q --depth 1 --branch "$TAG" "https://github.com/triton-inference-server/$r" "$CACHE/src/$r" \
        || die "MISSING Triton's $r sources at $TAG (fetch github:triton-inference-server/$r)"
    fi
  done
  # common's unit tests want GoogleTest, which the backend does not need
  sed -i 's/^\(\s*\)add_subdirectory(test)$/\1# add_subdirectory(test)  # bench\/peers.sh: no GoogleTest/' \
    "$CACHE/src/common/src/CMakeLists.txt"
  mkdir -p "$CACHE/ort/include" "$CACHE/ort/lib"
  if [ ! -e "$CACHE/ort/include/onnxruntime_c_api.h" ]; then
    if [ -n "${ORT_HEADER:-}" ]; then cp "$ORT_HEADER" "$CACHE/ort/include/onnxruntime_c_api.h"
    elif [ -d "$MIRROR/yalue+onnxruntime_go/repo" ]; then
      git --git-dir="$MIRROR/yalue+onnxruntime_go/repo" show "$ORT_GO_COMMIT:onnxruntime_c_api.h" \
        > "$CACHE/ort/include/onnxruntime_c_api.h"
    else
      git clone -q https://github.com/yalue/onnxruntime_go "$CACHE/ort/go" \
        && git -C "$CACHE/ort/go" show "$ORT_GO_COMMIT:onnxruntime_c_api.h" > "$CACHE/ort/include/onnxruntime_c_api.h" \
        || die "MISSING onnxruntime_c_api.h (set ORT_HEADER, or fetch github:yalue/onnxruntime_go)"
    fi
  fi
  ln -sf "$ORT_LIB" "$CACHE/ort/lib/libonnxruntime.so"
  say "building Triton's onnxruntime backend (about a minute)"
  rm -rf "$CACHE/build" && mkdir -p "$CACHE/build"
  (
    cd "$CACHE/build"
    cmake "$CACHE/src/onnxruntime_backend" -DCMAKE_BUILD_TYPE=Release -DTRITON_ENABLE_GPU=OFF \
      -DTRITON_ENABLE_STATS=ON \
      -DTRITON_ONNXRUNTIME_INCLUDE_PATHS="$CACHE/ort/include" -DTRITON_ONNXRUNTIME_LIB_PATHS="$CACHE/ort/lib" \
      -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
      -DFETCHCONTENT_SOURCE_DIR_REPO-COMMON="$CACHE/src/common" \
      -DFETCHCONTENT_SOURCE_DIR_REPO-CORE="$CACHE/src/core" \
      -DFETCHCONTENT_SOURCE_DIR_REPO-BACKEND="$CACHE/src/backend" \
      -DCMAKE_INSTALL_PREFIX="$CACHE/install" >cmake.log 2>&1 || { tail -20 cmake.log >&2; exit 1; }
    make -j"$(nproc)" install >make.log 2>&1 || { tail -20 make.log >&2; exit 1; }
  ) || die "the onnxruntime backend did not build (logs in $CACHE/build)"
fi
# the backend finds both libraries next to itself (RUNPATH $ORIGIN): the same onnxruntime as ours, and
# the server's own libtritonserver under the name it was linked with (the wheel renamed it)
ln -sf "$ORT_LIB" "$BACKEND/libonnxruntime.so.1"
ln -sf "$LIBTRITON" "$BACKEND/libtritonserver.so"

# --- perf_analyzer and MLServer -------------------------------------------------------------------------
PERF_ANALYZER_DIR="${PERF_ANALYZER_DIR:-$(dirname "$PY")/../perf_analyzer}"
if [ -z "${PERF_ANALYZER:-}" ]; then
  PERF_ANALYZER_DIR="$PERF_ANALYZER_DIR" PYTHON="$PY" "$ROOT/.ci/perf-analyzer.sh" \
    || die "MISSING perf_analyzer (.ci/perf-analyzer.sh)"
  export PERF_ANALYZER="$PERF_ANALYZER_DIR/perf_analyzer"
fi
MLSERVER_ARGS=()
if [[ " $* " != *" --no-mlserver "* ]]; then
  if [ ! -x "$MLSERVER_VENV/bin/mlserver" ]; then
    say "installing MLServer 1.7 into $MLSERVER_VENV"
    python3 -m venv "$MLSERVER_VENV" && "$MLSERVER_VENV/bin/pip" install -q "mlserver==1.7.*" onnxruntime \
      || die "MISSING MLServer (pip install mlserver==1.7.* into $MLSERVER_VENV); --no-mlserver runs without it"
  fi
  MLSERVER_ARGS=(--mlserver "$MLSERVER_VENV/bin/mlserver")
fi

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$ROOT/bench/peers.py" --tritonserver "$TRITON_BIN" --triton-backends "$CACHE/install/backends" \
  "${MLSERVER_ARGS[@]}" "$@"
