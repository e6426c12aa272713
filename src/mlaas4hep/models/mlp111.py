"""The reference MLP of the benchmarks: 111 -> 256 -> 256 -> 128 -> 1 (ReLU).

Written for any ``idim`` (111 features in ``bench/train.py``). It returns a
logit; the default BCE-with-logits loss and Adam at ``training.learning_rate``
are used, and the ONNX export appends the sigmoid.
"""

from torch import nn


def model(idim):
    return nn.Sequential(
        nn.Linear(idim, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 1),
    )
