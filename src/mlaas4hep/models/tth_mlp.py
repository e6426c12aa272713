"""MLaaS4HEP's ttH(bb) network, in PyTorch.

Dense(128) -> Dropout(0.5) -> Dense(64) -> Dropout(0.5) -> sigmoid output, trained
with Adam at 1e-3 (arXiv:2007.14781). ``model(idim)`` receives the number of
features. The network ends with a logit: the trainer's default loss,
BCEWithLogitsLoss, applies the sigmoid in a numerically stable way, and the ONNX
export appends it, so the bundle outputs probabilities.
"""

import torch
from torch import nn


def model(idim):
    return nn.Sequential(
        nn.Linear(idim, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(64, 1),
    )


def optimizer(params, learning_rate):  # training.learning_rate
    return torch.optim.Adam(params, lr=learning_rate)
