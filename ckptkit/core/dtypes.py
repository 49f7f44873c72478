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
    # The class a torch pickle names for a storage of this dtype (``torch.FloatStorage``); None
    # where torch has no such class: it saves the tensor on an untyped byte storage and names
    # the dtype itself (``_rebuild_tensor_v3``). Only classes torch really has: a pickle naming
    # one that it lacks does not load.
    storage_class: str | None
    safetensors: str | None
    is_floating: bool = False       # a float torch casts to another (float4_e2m1fn_x2 it cannot)
    # safetensors counts this many values per element: its F4 packs two 4-bit floats a byte,
    # which torch holds as one float4_e2m1fn_x2 element (the last dimension is twice torch's).
    packed: int = 1
    # (mask, pattern): a byte b of this one-byte float is NaN or Inf when b & mask == pattern.
    nonfinite_byte: tuple[int, int] | None = None


# Every dtype torch can save, checked against torch's own list (tests/formats/test_every_dtype.py):
# storage classes from torch.storage._dtype_to_storage_type_map, safetensors codes from
# safetensors' Dtype (it has no complex128 or complex32).
_ALL = [
    DType("float64", 8, "DoubleStorage", "F64", True),
    DType("float32", 4, "FloatStorage", "F32", True),
    DType("float16", 2, "HalfStorage", "F16", True),
    DType("bfloat16", 2, "BFloat16Storage", "BF16", True),
    DType("float8_e4m3fn", 1, None, "F8_E4M3", True, nonfinite_byte=(0x7F, 0x7F)),    # S.1111.111 is NaN
    DType("float8_e5m2", 1, None, "F8_E5M2", True, nonfinite_byte=(0x7C, 0x7C)),      # exponent 11111: Inf/NaN
    DType("float8_e4m3fnuz", 1, None, "F8_E4M3FNUZ", True, nonfinite_byte=(0xFF, 0x80)),  # NaN is "-0"
    DType("float8_e5m2fnuz", 1, None, "F8_E5M2FNUZ", True, nonfinite_byte=(0xFF, 0x80)),
    DType("float8_e8m0fnu", 1, None, "F8_E8M0", True, nonfinite_byte=(0xFF, 0xFF)),    # MX block scales
    DType("float4_e2m1fn_x2", 1, None, "F4", packed=2),
    DType("complex128", 16, "ComplexDoubleStorage", None),
    DType("complex64", 8, "ComplexFloatStorage", "C64"),
    DType("complex32", 4, None, None),
    DType("int64", 8, "LongStorage", "I64"),
    DType("int32", 4, "IntStorage", "I32"),
    DType("int16", 2, "ShortStorage", "I16"),
    DType("int8", 1, "CharStorage", "I8"),
    DType("uint64", 8, None, "U64"),
    DType("uint32", 4, None, "U32"),
    DType("uint16", 2, None, "U16"),
    DType("uint8", 1, "ByteStorage", "U8"),
    DType("bool", 1, "BoolStorage", "BOOL"),
    DType("qint8", 1, "QInt8Storage", None),
    DType("quint8", 1, "QUInt8Storage", None),
    DType("qint32", 4, "QInt32Storage", None),
    DType("quint4x2", 1, "QUInt4x2Storage", None),
    DType("quint2x4", 1, "QUInt2x4Storage", None),
    # Bit containers with no arithmetic (custom kernels' packed data): read and copied as bytes.
    DType("bits8", 1, None, None),
    DType("bits16", 2, None, None),
    DType("bits1x8", 1, None, None),
    DType("bits2x4", 1, None, None),
    DType("bits4x2", 1, None, None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
BY_STORAGE_CLASS: dict[str, DType] = {d.storage_class: d for d in _ALL if d.storage_class}
BY_SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in _ALL if d.safetensors}
# UntypedStorage holds bytes; torch pickles it when a storage is saved without a dtype.
BY_STORAGE_CLASS["UntypedStorage"] = BY_NAME["uint8"]
BY_STORAGE_CLASS["TypedStorage"] = BY_NAME["uint8"]
# Aliases torch itself accepts in `torch.<alias>` dtype globals.
_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64",
            "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128",
            "chalf": "complex32"}


def dtype_named(name: str) -> DType:
    """The dtype for a torch name or alias ("float32", "torch.float", "half"); KeyError if unknown."""
    bare = name.removeprefix("torch.")
    return BY_NAME[_ALIASES.get(bare, bare)]


def is_torch_dtype_name(name: str) -> bool:
    bare = name.removeprefix("torch.")
    return bare in BY_NAME or bare in _ALIASES
