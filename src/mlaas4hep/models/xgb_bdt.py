"""A boosted decision tree with XGBoost: ``model()`` returns an ``XGBClassifier``.

Its parameters (depth, learning rate, number of trees as ``n_estimators``) drive
training; the data reach XGBoost through ``xgboost.DataIter`` into a
``QuantileDMatrix`` (streamed, quantised), and the model is exported to ONNX with
onnxmltools.
"""

from xgboost import XGBClassifier


def model():
    return XGBClassifier(
        n_estimators=100, max_depth=5, learning_rate=0.2, subsample=0.8, tree_method="hist", random_state=0
    )
