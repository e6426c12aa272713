"""A Deep Sets network for ttH(bb) vs tt̄ in Keras 3, over the jets as a set.

The Keras twin of ``tth_deepsets.py``, trained by the same configuration
(``examples/train_objects.yaml``, ``model:`` pointing here). ``model(input_shapes)``
receives the per-event shape of each ``inputs:`` group of the dataset, e.g.
``{"jets": (10, 5), "event": (2,)}``, and returns a functional ``keras.Model``
whose inputs are **named** after what the trainer feeds it:

* one ``keras.Input(shape=(10, 5), name="jets")`` per group (``(features,)``
  for a flat group such as ``event``);
* one ``keras.Input(shape=(10,), name="jets_mask", dtype="bool")`` per object
  group: **True on padding slots**, as for PyTorch (a float mask, 1.0 on
  padding, works too).

These are also the inputs of the bundle's ``model.onnx``, in the order
``jets``, ``jets_mask``, ``event``.

The network (Komiske, Metodiev, Thaler, arXiv:1810.05165): the same small MLP
Φ maps each jet to a latent vector (a ``Dense`` layer on a ``(n, 10, 5)``
tensor acts on the last axis, so on every jet alike), the vectors of the real
jets are summed (padding is multiplied by 0: the score depends neither on the
order of the jets nor on the padding), and an MLP F classifies the sum, joined
by the event-level features. Every object group gets its own Φ; every flat
group joins F's input. It ends with a logit (a ``Dense`` without activation:
the trainer's loss uses ``from_logits``, the ONNX export appends the sigmoid).
"""

import keras

LATENT = 32


def masked_sum(latent, mask):
    """Sum of ``latent`` ``(n, length, k)`` over the real objects (``mask`` True on padding)."""
    real = keras.ops.cast(keras.ops.logical_not(keras.ops.cast(mask, "bool")), latent.dtype)
    return keras.ops.sum(latent * keras.ops.expand_dims(real, -1), axis=1)


def model(input_shapes):
    inputs, parts = [], []
    for group, shape in input_shapes.items():
        x = keras.Input(shape=shape, name=group)
        inputs.append(x)
        if len(shape) == 1:  # event-level features join F's input as they are
            parts.append(x)
            continue
        mask = keras.Input(shape=(shape[0],), name=f"{group}_mask", dtype="bool")
        inputs.append(mask)
        phi = keras.layers.Dense(64, activation="relu", name=f"{group}_phi1")(x)
        phi = keras.layers.Dense(LATENT, activation="relu", name=f"{group}_phi2")(phi)
        parts.append(masked_sum(phi, mask))
    h = keras.layers.Concatenate()(parts) if len(parts) > 1 else parts[0]
    h = keras.layers.Dense(64, activation="relu")(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    m = keras.Model(inputs, keras.layers.Dense(1)(h), name="keras_deepsets")
    m.compile(
        optimizer=keras.optimizers.Adam(learning_rate=2e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return m
