"""Tensor element types, in the three spellings checkpoints use for them.

torch zip/legacy files name a dtype through a storage class (``torch.FloatStorage``),
safetensors through a short code (``F32``), and people through the torch name (``float32``).
ckptkit speaks the torch name everywhere and converts at the edges. No torch import here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str              # torch name, e.g. "bfloat16"
    itemsize: int
    storage_class: str     # torch legacy storage class name, e.g. "BFloat16Storage"
    safetensors: str | None
    is_floating: bool = False


_ALL = [
    DType("float64", 8, "DoubleStorage", "F64", True),
    DType("float32", 4, "FloatStorage", "F32", True),
    DType("float16", 2, "HalfStorage", "F16", True),
    DType("bfloat16", 2, "BFloat16Storage", "BF16", True),
    DType("float8_e4m3fn", 1, "Float8_e4m3fnStorage", "F8_E4M3", True),
    DType("float8_e5m2", 1, "Float8_e5m2Storage", "F8_E5M2", True),
    DType("complex128", 16, "ComplexDoubleStorage", "C128"),
    DType("complex64", 8, "ComplexFloatStorage", "C64"),
    DType("int64", 8, "LongStorage", "I64"),
    DType("int32", 4, "IntStorage", "I32"),
    DType("int16", 2, "ShortStorage", "I16"),
    DType("int8", 1, "CharStorage", "I8"),
    DType("uint64", 8, "UInt64Storage", "U64"),
    DType("uint32", 4, "UInt32Storage", "U32"),
    DType("uint16", 2, "UInt16Storage", "U16"),
    DType("uint8", 1, "ByteStorage", "U8"),
    DType("bool", 1, "BoolStorage", "BOOL"),
    DType("qint8", 1, "QInt8Storage", None),
    DType("quint8", 1, "QUInt8Storage", None),
    DType("qint32", 4, "QInt32Storage", None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
BY_STORAGE_CLASS: dict[str, DType] = {d.storage_class: d for d in _ALL}
BY_SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in _ALL if d.safetensors}
# UntypedStorage holds bytes; torch pickles it when a storage is saved without a dtype.
BY_STORAGE_CLASS["UntypedStorage"] = BY_NAME["uint8"]
BY_STORAGE_CLASS["TypedStorage"] = BY_NAME["uint8"]
# Aliases torch itself accepts in `torch.<alias>` dtype globals.
_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64",
            "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128"}


def dtype_named(name: str) -> DType:
    """The dtype for a torch name or alias ("float32", "torch.float", "half"); KeyError if unknown."""
    bare = name.removeprefix("torch.")
    return BY_NAME[_ALIASES.get(bare, bare)]


def is_torch_dtype_name(name: str) -> bool:
    bare = name.removeprefix("torch.")
    return bare in BY_NAME or bare in _ALIASES
