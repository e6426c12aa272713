"""A Deep Sets / Particle-Flow network for ttH(bb) vs tt̄, over the jets as a set.

An *object-level* model file: ``model(input_shapes)`` receives the per-event
shape of each ``inputs:`` group of the dataset, e.g. ``{"jets": (10, 5),
"event": (2,)}``, and the module's ``forward(inputs, masks)`` gets a dict of
tensors per group and, per object group, a boolean mask ``(n, length)`` that
is True on padding slots. The dataset configuration to train it is
``examples/train_objects.yaml``.

The network (Komiske, Metodiev, Thaler, arXiv:1810.05165): the same small MLP
Φ maps each object to a latent vector, the vectors of the real objects are
summed (padding contributes nothing, so the output does not depend on the
order of the objects or on how many padding slots there are), and an MLP F
classifies the sum, joined by the event-level features. Every object group
gets its own Φ; every flat group joins F's input. It ends with a logit (the
trainer's loss applies the sigmoid, the ONNX export appends it).
"""

import torch
from torch import nn

LATENT = 32


class DeepSets(nn.Module):
    def __init__(self, input_shapes):
        super().__init__()
        self.objects = [g for g, s in input_shapes.items() if len(s) == 2]
        self.flat = [g for g, s in input_shapes.items() if len(s) == 1]
        self.phi = nn.ModuleDict(
            {
                g: nn.Sequential(
                    nn.Linear(input_shapes[g][1], 64), nn.ReLU(), nn.Linear(64, LATENT), nn.ReLU()
                )
                for g in self.objects
            }
        )
        width = LATENT * len(self.objects) + sum(input_shapes[g][0] for g in self.flat)
        self.f = nn.Sequential(
            nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, inputs, masks):
        parts = []
        for g in self.objects:
            real = (~masks[g]).unsqueeze(-1).to(inputs[g].dtype)  # (n, length, 1): 1 for real objects
            parts.append((self.phi[g](inputs[g]) * real).sum(dim=1))
        parts += [inputs[g] for g in self.flat]
        return self.f(torch.cat(parts, dim=1))


def model(input_shapes):
    return DeepSets(input_shapes)


def optimizer(params, learning_rate):  # training.learning_rate
    return torch.optim.Adam(params, lr=learning_rate)
