#!/usr/bin/env bash
# Download, here, the wheels that the lent GPU host lacks (it has no network), into
# bench/.device-wheels/ (git-ignored). Carry that folder with the call:
#   bash bench/device-wheels.sh
#   device run: carry [bench/.device-wheels], command "bash bench/device.sh"
# The host runs CPython 3.12 on x86_64 with PyTorch, numpy, onnx, onnxruntime, pyyaml, rich,
# fsspec, xxhash, psutil, msgpack, cloudpickle, toolz, ... already installed (see the device
# tool's KINDS.md); only what is missing there is kept, so the folder stays a few tens of MB.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=bench/.device-wheels
PY=${PYTHON:-.venv/bin/python}
rm -rf "$dest"; mkdir -p "$dest"
# what bench/device.sh imports beyond the host's own packages
# (the versions installed here, so the host runs what the tests ran)
want=()
for p in uproot awkward awkward-cpp lz4 zstandard dask distributed; do
  want+=("$p==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
done
echo "downloading wheels for CPython 3.12 x86_64 into $dest ..."
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$dest" "${want[@]}"
# drop what the host already has (its image lists these packages)
present='numpy|packaging|fsspec|pyyaml|psutil|msgpack|cloudpickle|toolz|tornado_never|jinja2|markupsafe|click|sortedcontainers|urllib3|typing_extensions|importlib_metadata_never|zipp|pyarrow|cramjam_never|xxhash'
for w in "$dest"/*.whl; do
  n=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
  if [[ "$n" =~ ^($present)$ ]]; then rm -f "$w"; fi
done
du -sh "$dest"; ls "$dest"
