"""The private protobuf descriptor pool of the generated Triton modules (see gen.sh)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
