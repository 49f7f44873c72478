"""Turning decoded checkpoint values into JSON-ready data and short human summaries."""
from __future__ import annotations

import math
from typing import Any

from ckptkit.core.checkpoint import TensorRef
from ckptkit.storage.safe_pickle import NumpyArray, NumpyDtype, PickledObject, TorchDeviceValue, TorchDtypeValue


def to_jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-ready rendering: tensors as descriptors, pickled objects as their name and fields."""
    if depth > 30:
        return "..."
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, TensorRef):
        return {"tensor": value.dtype.name, "shape": list(value.shape)}
    if isinstance(value, PickledObject):
        return {"pickled": value.qualified_name,
                "fields": {str(k): to_jsonable(v, depth + 1) for k, v in value.fields().items()}}
    if isinstance(value, NumpyArray):
        return {"ndarray": value.dtype, "shape": list(value.shape)}
    if isinstance(value, (TorchDtypeValue, TorchDeviceValue, NumpyDtype)):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, complex):
        return str(value)
    return repr(value)


def summarize(value: Any, width: int = 60) -> str:
    """One short line describing a value, for tables."""
    if isinstance(value, TensorRef):
        text = f"tensor {value.describe()}"
    elif isinstance(value, PickledObject):
        text = f"pickled {value.qualified_name} ({len(value.fields())} fields)"
    elif isinstance(value, dict):
        text = f"dict ({len(value)} keys: {', '.join(map(str, list(value)[:4]))}{', ...' if len(value) > 4 else ''})"
    elif isinstance(value, (list, tuple)) and len(value) <= 8 and all(
            isinstance(v, (int, float, str, bool, type(None))) for v in value):
        text = repr(list(value))
    elif isinstance(value, (list, tuple)):
        text = f"{type(value).__name__} of {len(value)}"
    elif isinstance(value, (bytes, bytearray)):
        text = f"bytes ({len(value)})"
    else:
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
