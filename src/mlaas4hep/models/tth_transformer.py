"""A small transformer for ttH(bb) vs tt̄: self-attention over the jets, with their mask.

An *object-level* model file (see ``tth_deepsets.py`` for the ``model(input_shapes)``
convention; dataset configuration: ``examples/train_objects.yaml``).

Each object group's objects are embedded by a linear layer, then two
:class:`torch.nn.TransformerEncoder` layers let every jet attend to every other
real jet: the group's mask (True on padding) is the ``src_key_padding_mask``,
so padding slots are never attended to. The encoded real objects are averaged
(masked mean pooling), joined by the event-level features, and an MLP gives a
logit. No positional encoding: the jets are a set (the dataset sorts them by
pt, which the attention does not rely on).

An event without any real object of a group would leave attention nothing to
attend to (NaN): its first slot is let through the attention, and its pooled
vector is then zero (the mean over no object), so the score never depends on
what the padding slots hold.
"""

import torch
from torch import nn

D_MODEL = 32


class SetTransformer(nn.Module):
    def __init__(self, input_shapes, layers=2, heads=4):
        super().__init__()
        self.objects = [g for g, s in input_shapes.items() if len(s) == 2]
        self.flat = [g for g, s in input_shapes.items() if len(s) == 1]
        self.embed = nn.ModuleDict({g: nn.Linear(input_shapes[g][1], D_MODEL) for g in self.objects})
        self.encode = nn.ModuleDict(
            {
                g: nn.TransformerEncoder(
                    nn.TransformerEncoderLayer(
                        D_MODEL, heads, dim_feedforward=2 * D_MODEL, dropout=0.1, batch_first=True
                    ),
                    layers,
                    enable_nested_tensor=False,
                )
                for g in self.objects
            }
        )
        width = D_MODEL * len(self.objects) + sum(input_shapes[g][0] for g in self.flat)
        self.head = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, inputs, masks):
        parts = []
        for g in self.objects:
            pad = masks[g]
            # an event with no real object: its first slot goes through attention (see above)
            first = pad[:, :1] & ~pad.all(dim=1, keepdim=True)
            h = self.encode[g](
                self.embed[g](inputs[g]), src_key_padding_mask=torch.cat([first, pad[:, 1:]], 1)
            )
            real = (~pad).unsqueeze(-1).to(h.dtype)  # pooling: the real objects only
            parts.append((h * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0))
        parts += [inputs[g] for g in self.flat]
        return self.head(torch.cat(parts, dim=1))


def model(input_shapes):
    return SetTransformer(input_shapes)


def optimizer(params, learning_rate):  # training.learning_rate
    return torch.optim.Adam(params, lr=learning_rate)
