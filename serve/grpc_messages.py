"""The Open Inference Protocol's gRPC messages and methods (serve/proto/, the upstream
open_inference_grpc.proto), built from its compiled descriptor at import.

They live in a descriptor pool of their own, not protobuf's default one: tritonclient.grpc
registers Triton's superset of the same proto there under the same names (package `inference`),
and a process that holds both (the tests, the bench) would otherwise fail to import the second.
"""

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

PROTO_DIR = Path(__file__).resolve().parent / "proto"
PROTO = PROTO_DIR / "open_inference_grpc.proto"
DESCRIPTOR_SET = PROTO_DIR / "open_inference_grpc.binpb"
SERVICE = "inference.GRPCInferenceService"
# The one RPC that is an inference: Triton's statistics (serve/triton.py) count only it.
INFER_ENDPOINT = f"/{SERVICE}/ModelInfer"

_pool = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file:
    _pool.Add(_file)


def message(name: str) -> type[Message]:
    """The class of the message `inference.<name>`."""
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"inference.{name}"))


# Each method of the service: (request class, response class), by method name.
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    method.name: (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )
    for method in _pool.FindServiceByName(SERVICE).methods
}

ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
InferTensorContents = message("InferTensorContents")
