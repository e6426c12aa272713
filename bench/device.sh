#!/usr/bin/env bash
# The scale and GPU figures in one prepared call (issue 14).
#
#   bash bench/device.sh [--smoke] [OUTDIR]
#
# Run from the repository root. Writes everything to OUTDIR (default: $OUT when set,
# else bench/out/device):
#   machine.txt        CPU model, cores, GPU, driver, Python and library versions
#   scale.md           streaming with 1, 4, 8, 16 decoding workers (process pool and Dask
#                      LocalCluster), each point timed over >= 20 s; efficiency = rate(N) / (N x rate(1))
#   train-bs*.md       the reference MLP and the ttH network on CUDA from the decoded cache,
#                      batch 1024 and 8192, next to the same network fed from tensors already
#                      on the GPU (the ceiling); once more with amp (bfloat16 autocast)
#   e2e.txt            `mlaas4hep train` with device: cuda on a small config: bundle + ONNX parity
#   log.txt            everything the steps printed
#
# On the lent GPU host (no network) the project's missing dependencies come as wheels:
# run `bash bench/device-wheels.sh` here first, and carry bench/.device-wheels with the call.
# --smoke runs every step with tiny sizes on the CPU (make test runs it), so the script is
# known to work before machine time is spent on it. Budget on a 16-core H100 host: about 6 min.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
outdir=${OUT:-bench/out/device}
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) outdir=$a ;;
  esac
done
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
log="$outdir/log.txt"
: >"$log"
exec > >(tee -a "$log") 2>&1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
step() { echo "== $* ($(date +%T))"; }
failed=()
# a step that fails is reported and the others still run: machine time is precious
try() { "$@" || { failed+=("$*"); echo "!! failed: $*"; }; }

# 1. what the host lacks, from carried wheels
if ! "$PY" -c "import uproot, awkward, lz4, dask, distributed" 2>/dev/null; then
  if [ -d bench/.device-wheels ]; then
    step "installing carried wheels"
    "$PY" -m pip install -q --no-index --find-links bench/.device-wheels \
      uproot awkward lz4 zstandard dask distributed
  else
    echo "uproot/awkward/dask missing and no bench/.device-wheels: run 'bash bench/device-wheels.sh' first" >&2
    exit 2
  fi
fi

# 2. the machine
step "machine"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cores: $(nproc)"
  echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /'
  else
    echo "gpu: none"
  fi
  "$PY" - <<'EOF'
import importlib.metadata as m, platform
print("python:", platform.python_version())
for p in ("torch", "numpy", "uproot", "awkward", "onnx", "onnxruntime", "dask", "distributed"):
    try:
        print(f"{p}: {m.version(p)}")
    except m.PackageNotFoundError:
        print(f"{p}: not installed")
try:
    import torch
    print("cuda:", torch.version.cuda, "available:", torch.cuda.is_available())
except ImportError:
    pass
EOF
} | tee "$outdir/machine.txt"

if [ "$smoke" = 1 ]; then
  # Dask is left out here: tests/scale covers it, and a LocalCluster start on a loaded 2-core CI box can stall
  device=cpu workers=1,2 events=20000 files=2 minsec=0 tev=1000 epochs=2 batches="256" nets=tth dask=--no-dask
else
  device=cuda workers=1,4,8,16 events=2000000 files=8 minsec=20 tev=500000 epochs=4 batches="1024 8192" nets=tth,mlp111 dask=
fi
data="$outdir/data"

# 3. parallel decoding: process pool and Dask
step "streaming scale-out: workers $workers"
try timeout 300 "$PY" bench/scale.py --workers "$workers" --events "$events" --files "$files" --chunk-size 20000 \
  --repeat 1 --min-seconds "$minsec" --dir "$data/scale" --out "$outdir/scale.md" $dask

# 4. training from the decoded cache vs tensors on the device
for bs in $batches; do
  for amp in "" "--amp"; do
    tag="bs$bs${amp:+-amp}"
    step "training $nets, batch $bs ${amp:-(fp32)}"
    try timeout 300 "$PY" bench/train.py --device "$device" --nets "$nets" --events "$tev" --epochs "$epochs" \
      --batch-size "$bs" --repeat 1 $amp --data "$data/train" --out "$outdir/train-$tag.md"
  done
done

# 5. the trainer's CUDA path end to end: a bundle whose ONNX parity check passes
step "mlaas4hep train, device $device, end to end"
cat >"$outdir/e2e.yaml" <<EOF
tree: Events
files:
  - {path: "$data/train/ttH_*.root", label: 1, name: ttH}
  - {path: "$data/train/ttbar_*.root", label: 0, name: ttbar}
branches: [MET_pt, nJet, Jet_pt, Jet_eta, Jet_phi, Jet_mass, Jet_btagDeepFlavB]
jagged: {Jet: 6}
chunk_size: 50000
cache_dir: $outdir/cache
model: $PWD/src/mlaas4hep/models/tth_mlp.py
training: {epochs: 2, batch_size: 1024, device: $device, name: tth-e2e, plots: false}
EOF
try timeout 300 "$PY" -m mlaas4hep.cli train "$outdir/e2e.yaml" --out "$outdir/e2e-run"
try "$PY" - "$outdir/e2e-run" "$device" "$outdir/e2e.txt" <<'EOF'
import json, sys
from pathlib import Path
run, device = Path(sys.argv[1]), sys.argv[2]
sys.stdout = open(sys.argv[3], "w")
meta = json.loads((run / "bundle" / "bundle.json").read_text())
metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
parity = meta.get("parity") or metrics.get("onnx_parity") or {}
print("device:", metrics.get("device", "?"), "| val AUC:", metrics.get("val_auc", "?"))
print("onnx parity:", json.dumps(parity))
ok = (
    (run / "bundle" / "model.onnx").exists()
    and str(metrics.get("device", "")).startswith(device)
    and 0 <= parity.get("max_abs_diff", 1) <= parity.get("tolerance", 0)
)
print("end to end:", "PASS" if ok else "FAIL")
sys.stdout.close()
print(Path(sys.argv[3]).read_text(), file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
rm -rf "$outdir/data" "$outdir/cache" "$outdir/e2e-run"
if [ ${#failed[@]} -gt 0 ]; then
  step "done with ${#failed[@]} failed step(s): ${failed[*]}"
  exit 1
fi
step "done: $outdir"
