"""Generated modules of Triton's gRPC service (``inference.GRPCInferenceService``).

Made by ``gen.sh`` in this folder from Triton's published ``grpc_service.proto``
and ``model_config.proto`` (BSD-3-Clause, NVIDIA; see ``NOTICE``). Do not edit
the ``*_pb2*`` files: change ``gen.sh`` and rerun it.
"""
