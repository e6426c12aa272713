"""The deployment tests use the serving tests' bundle (a small MLP on the generated ttH/ttbar sample)."""

from ..serve.conftest import tth_bundle  # noqa: F401 (a fixture)
