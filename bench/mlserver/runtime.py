"""The onnxruntime runtime MLServer users write (MLServer ships none for ONNX).

Served by ``bench/serve.py --mlserver`` with adaptive batching (model-settings.json).
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)  # model-settings.json's uri, relative to it
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        y = self.session.run([self.output], {self.input: x})[0]
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(self.output, y)],
        )
