#!/usr/bin/env bash
# Creates the virtual environment and pip-installs mlaas4hep into it: everything `make demo` needs.
#
#   bash .ci/install.sh [VENV] [EXTRAS]      # defaults: .venv all   (`make test` adds ,test)
#
# Needs only a Python >= 3.10 with its venv module: no root, no system packages. PY picks the
# Python (default: the first of python3, python3.13 ... python3.10 on PATH that is >= 3.10).
# Each step prints what it does and roughly how long it takes; pip's full output goes to
# VENV/install.log, and its last lines are shown if it fails.
set -euo pipefail
venv=${1:-.venv}
extras=${2:-all}
start=$SECONDS

say() { printf '%s\n' "$*"; }
fail() { # first line, then hint lines
  say "mlaas4hep install: $1" >&2
  shift
  for line in "$@"; do say "  $line" >&2; done
  exit 1
}
ok_version() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; }

# Runs pip, showing one line per package it collects (rewritten in place on a terminal).
pip_step() {
  local log=$venv/install.log
  local tty=0
  [ -t 1 ] && tty=1
  say "        pip install $* (full output: $log)" >>"$log"
  if ! "$venv/bin/python" -m pip install --progress-bar off "$@" 2>&1 | tee -a "$log" | awk -v tty="$tty" '
      /^Collecting / { n++; line = sprintf("        %d: %s", n, $2)
                       if (tty) printf "\r\033[K%s", line; else print line; fflush() }
      /^Installing collected packages/ { if (tty) printf "\r\033[K"
                       printf "        unpacking and installing %d package%s ...\n", n, (n == 1 ? "" : "s"); fflush() }
      END { if (tty) printf "\r\033[K" }'; then
    say "        pip failed; its last lines (all of it is in $log):" >&2
    tail -n 15 "$log" | sed 's/^/          /' >&2
    exit 1
  fi
}

step_start=0
begin() {
  step_start=$SECONDS
  say "  $*"
}
done_step() { say "        done in $((SECONDS - step_start)) s"; }

# ------------------------------------------------------------------ a Python >= 3.10
if [ ! -x "$venv/bin/python" ]; then
  py=${PY:-}
  if [ -n "$py" ]; then
    command -v "$py" >/dev/null || fail "PY=$py: no such program"
    ok_version "$py" || fail "PY=$py is Python $("$py" -c 'import platform; print(platform.python_version())'); mlaas4hep needs >= 3.10"
  else
    for p in python3 python3.13 python3.12 python3.11 python3.10; do
      if command -v "$p" >/dev/null && ok_version "$p"; then
        py=$p
        break
      fi
    done
    [ -n "$py" ] || fail "mlaas4hep needs Python >= 3.10, and none is on PATH ($(python3 --version 2>&1 || true))." \
      "Install one (Debian/Ubuntu: apt-get install python3 python3-venv; EL9: dnf install python3.11), then: make demo PY=python3.11"
  fi
  say "mlaas4hep install: Python packages into $venv, about 2-4 minutes the first time (later runs skip it)"
  begin "[1/3] creating $venv with $(command -v "$py") (Python $("$py" -c 'import platform; print(platform.python_version())')) and updating pip ..."
  if ! "$py" -m venv "$venv" >/dev/null 2>"$venv.err"; then
    rm -rf "$venv"
    fail "$py cannot create a virtual environment: $(tail -n 1 "$venv.err")" \
      "Its venv module is missing: Debian/Ubuntu: apt-get install python3-venv; EL9: dnf install python3.11"
  fi
  rm -f "$venv.err"
  : >"$venv/install.log"
  pip_step -U pip
  done_step
else
  say "mlaas4hep install: updating the Python packages in $venv (extras: $extras) ..."
fi

# ------------------------------------------------------------------ PyTorch, then the rest
# torch is pinned to 2.13.0: where pip is configured with the CPU wheel (the project's machines),
# that is what it gets; from plain PyPI it is the default build with about 3 GB of CUDA
# libraries. TORCH_INDEX=https://download.pytorch.org/whl/cpu asks for the CPU build there.
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  torch=("torch==2.13.0")
  [ -n "${TORCH_INDEX:-}" ] && torch+=(--extra-index-url "$TORCH_INDEX")
  build=$("$venv/bin/python" -m pip install --dry-run --no-deps --ignore-installed --quiet --report - "${torch[@]}" 2>/dev/null |
    "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])' 2>/dev/null || true)
  case "$build" in
    *+cpu) begin "[2/3] PyTorch $build, the CPU build (750 MB installed; 30 s from a local wheel, 1-2 minutes to download) ..." ;;
    "") begin "[2/3] PyTorch 2.13.0 (1-4 minutes) ..." ;;
    *) begin "[2/3] PyTorch $build with its CUDA libraries (about 4 GB installed, 2-5 minutes to download) ..."
       say "        for the CPU build alone (750 MB): make clean; make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu" ;;
  esac
  pip_step "${torch[@]}"
  done_step
fi
begin "[3/3] mlaas4hep[$extras] and its dependencies (about 100 packages, 1-2 minutes) ..."
pip_step -e ".[$extras]"
done_step
say "mlaas4hep install: done in $((SECONDS - start)) s"
