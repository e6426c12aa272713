"""A streaming scikit-learn classifier: ``model()`` with no argument.

SGDClassifier with the logistic loss learns through ``partial_fit``, one batch at
a time, so it trains on datasets larger than memory. It is exported to ONNX with
skl2onnx.
"""

from sklearn.linear_model import SGDClassifier


def model():
    return SGDClassifier(loss="log_loss", alpha=1e-5, learning_rate="adaptive", eta0=0.01, random_state=0)
