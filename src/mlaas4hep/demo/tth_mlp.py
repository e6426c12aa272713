"""MLaaS4HEP's ttH(bb) network, in PyTorch: Dense 128 → Dropout 0.5 → Dense 64 → Dropout 0.5 → sigmoid.

A model file for ``mlaas4hep train``: it defines ``model(idim)``. The network
ends in a logit; the training loop uses BCE-with-logits and the ONNX export
appends the sigmoid, so served scores are probabilities. Adam, learning rate
1e-3, as in the original.
"""

import torch
from torch import nn


def model(idim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(idim, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(64, 1),
    )


def optimizer(params):
    return torch.optim.Adam(params, lr=1e-3)
