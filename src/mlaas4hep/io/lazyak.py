"""awkward, imported when first needed.

awkward takes about 0.4 s to import. A server given flat tensors, or a preprocessing that
computes from flat branches, never needs it, so the modules a server loads
(:mod:`.preprocess`, :mod:`.expr`) reach it through here: :func:`is_awkward` is False for
everything while awkward is not imported (nothing can be an ``ak.Array`` then), and
:func:`awkward` imports it.
"""

from __future__ import annotations

import sys
from typing import Any


def awkward() -> Any:
    """The awkward module, imported now if it was not."""
    import awkward

    return awkward


def is_awkward(values: Any) -> bool:
    """Whether ``values`` is an ``ak.Array``, without importing awkward."""
    ak = sys.modules.get("awkward")
    return ak is not None and isinstance(values, ak.Array)
