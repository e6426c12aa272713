#!/bin/sh
# Regenerate the Python modules of Triton's gRPC service from the .proto files here.
#
# The .proto files are copied verbatim from github.com/triton-inference-server/common
# (protobuf/grpc_service.proto, protobuf/model_config.proto at commit
# 83adf7cf88a2f343005974dff3728be746de2d66; BSD-3-Clause, see NOTICE).
#
# Run from anywhere with a Python that has grpcio-tools 1.76 (protobuf 6.31 gencode,
# which runs on protobuf >= 6.31 and grpcio >= 1.76):
#     PYTHON=.venv/bin/python sh src/mlaas4hep/serve/_proto/gen.sh
#
# Two edits follow protoc, both with sed:
#  1. grpc_service_pb2 imports model_config_pb2 as a top-level module: made relative.
#  2. Both files register their descriptors in a private pool (_pool.POOL) instead of
#     protobuf's default one. tritonclient ships its own copy of the same .proto files;
#     a process that imports both (a notebook running a server and a client, a test)
#     would otherwise fail with "duplicate symbol 'inference.ServerLiveRequest'". The
#     wire format does not depend on the pool.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
cd "$here"
"$PYTHON" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
    grpc_service.proto model_config.proto
rm -f model_config_pb2_grpc.py
for f in grpc_service_pb2.py grpc_service_pb2_grpc.py grpc_service_pb2.pyi; do
    sed -i 's/^import model_config_pb2 as /from . import model_config_pb2 as /' "$f"
    sed -i 's/^import grpc_service_pb2 as /from . import grpc_service_pb2 as /' "$f"
done
for f in grpc_service_pb2.py model_config_pb2.py; do
    sed -i 's/^from google.protobuf import descriptor_pool as _descriptor_pool$/from ._pool import POOL as _POOL/' "$f"
    sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile(/_POOL.AddSerializedFile(/' "$f"
done
echo "generated in $here"
