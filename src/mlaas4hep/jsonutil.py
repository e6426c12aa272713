"""JSON helpers shared by the layers: numpy-aware encoding, and stable content hashes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """``json.dumps(..., default=jsonable)``: numpy scalars as numbers, arrays (numpy, torch)
    as lists, anything else (paths, enums) as its string."""
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def digest(obj: Any) -> str:
    """The SHA-256 (hex) of ``obj`` as canonical JSON (sorted keys, unknown types as strings):
    the same content gives the same digest in every process and run."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
