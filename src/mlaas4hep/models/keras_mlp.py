"""MLaaS4HEP's ttH network as a compiled Keras 3 model: ``model(idim)``.

This is exactly what MLaaS4HEP users wrote. Keras 3 runs it on its torch
backend when TensorFlow is not installed (mlaas4hep selects it), or on
TensorFlow when it is.
"""

import keras


def model(idim):
    m = keras.Sequential(
        [
            keras.Input(shape=(idim,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    m.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="binary_crossentropy")
    return m
