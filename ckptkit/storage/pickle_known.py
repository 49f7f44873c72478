"""What ckptkit runs in place of the functions and classes torch and numpy pickles name.

`KNOWN` maps a (module, name) a checkpoint legitimately calls to ckptkit's own inert
equivalent: tensor rebuild functions build lazy `TensorRef`s, numpy's reconstruction builds
`NumpyArray` records, and a few builtins build plain values with bounded sizes. Functions with
`NEEDS_CALL` make a further call (torch's `_rebuild_from_type_v2(func, type, args, state)` calls
`func(*args)`); the unpickler hands them its own judged `call`.
"""
from __future__ import annotations

import builtins
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ckptkit.core.checkpoint import StorageRef, TensorRef
from ckptkit.core.dtypes import dtype_named
from ckptkit.storage.pickle_limits import PickleLimitError, check_keys
from ckptkit.storage.pickle_values import (
    _STRUCT_CODES,
    NumpyArray,
    NumpyDtype,
    PickledObject,
    TorchDeviceValue,
    TorchDtypeValue,
    UnsupportedPickle,
)

SAFE_BUILTINS = frozenset({"set", "frozenset", "slice", "complex", "bytearray", "range", "object",
                           "dict", "list", "tuple", "int", "float", "str", "bytes", "bool"})


def _numpy_scalar(dtype: Any, raw: Any = b"") -> Any:
    """numpy scalars (np.float64(0.5)) decode to the Python number they hold."""
    code = dtype.code if isinstance(dtype, NumpyDtype) else str(dtype)
    data = raw.encode("latin1") if isinstance(raw, str) else bytes(raw)
    fmt = _STRUCT_CODES.get(code.lstrip("<>=|"))
    if fmt is None or struct.calcsize(fmt) != len(data):
        return NumpyArray(code, (), data)
    value = struct.unpack((">" if code.startswith(">") else "<") + fmt, data)[0]
    return value


def _numpy_dtype(code: str, *_: Any) -> NumpyDtype:
    return NumpyDtype(code)


def _numpy_reconstruct(cls: Any, shape: Any, typecode: Any) -> NumpyArray:
    return NumpyArray()


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> NumpyArray:
    # Protocol 5 pickles arrays as _frombuffer(raw bytes, dtype, shape, order).
    code = dtype.code if isinstance(dtype, NumpyDtype) else str(dtype)
    return NumpyArray(code, tuple(shape), bytes(buffer))


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(latin1 text); only text encodings apply.
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode(encoding)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    *_: Any) -> TensorRef:
    """torch's _rebuild_tensor(_v2)(storage, offset, size, stride[, requires_grad, hooks, ...]):
    a TensorRef, refusing values no torch.save writes. One function, no helpers: it runs once
    per tensor record."""
    if isinstance(storage, PickledObject) and storage.qualified_name == "torch.storage._load_from_bytes":
        raise UnsupportedPickle("tensors written with pickle.dump instead of torch.save (each storage is a "
                                "nested torch.save blob); re-save them with torch.save")
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage record")
    # Counts are exact ints >= 0 (`type() is int`: bool is not a count, and no other int subclass
    # can come out of the unpickler).
    valid = (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride)
             and type(offset) is int and offset >= 0)
    if valid:
        for v in (size, stride):
            for n in v:
                if type(n) is not int or n < 0:
                    valid = False
    if not valid:
        raise pickle.UnpicklingError(f"tensor on storage {storage.key!r} has a damaged shape, stride or "
                                     f"offset ({str(size)[:40]}, {str(stride)[:40]}, {str(offset)[:20]})")
    return TensorRef(storage.dtype, tuple(size), tuple(stride), storage, offset, requires_grad=bool(requires_grad))


def _rebuild_tensor_v3(storage: StorageRef, offset: int, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, *_: Any) -> TensorRef:
    """Newer dtypes (uint16/32/64, float8) are saved on an untyped byte storage plus a dtype.

    The storage stays an untyped byte record (views of it may have other dtypes); offset and
    stride are in the tensor's own elements, which is how TensorRef reads them.
    """
    if not isinstance(dtype, TorchDtypeValue):
        stub = isinstance(dtype, type) and issubclass(dtype, PickledObject)
        name = dtype._global.qualified_name if stub else repr(dtype)[:60]
        raise pickle.UnpicklingError(f"tensor of dtype {name} (not a dtype ckptkit knows)")
    ref = _rebuild_tensor(storage, offset, size, stride, requires_grad)
    ref.dtype = dtype_named(dtype.name)   # the storage's own dtype is bytes: the tensor's is this one
    return ref


def _rebuild_parameter(data: TensorRef, requires_grad: bool = True, *_: Any) -> TensorRef:
    if isinstance(data, TensorRef):
        data.is_parameter = True
        data.requires_grad = bool(requires_grad)
    return data


DTENSOR = "torch.distributed.tensor.DTensor"


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any, *,
                          call: Callable[[Any, tuple[Any, ...]], Any]) -> Any:
    # torch calls func(*args) itself: the unpickler judges that call like any other.
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 with arguments that are not a tuple")
    dtensor = _dtensor(func, new_type, args, state)
    if dtensor is not None:
        return dtensor
    value = call(func, args)
    if isinstance(value, TensorRef) and isinstance(new_type, type) and issubclass(new_type, PickledObject):
        value.subclass = new_type._global.qualified_name
    return value


def _dtensor(func: Any, new_type: Any, args: tuple[Any, ...], state: Any) -> TensorRef | None:
    """A DTensor (FSDP2, tensor parallel) as torch.save pickles it: `_rebuild_wrapper_subclass(DTensor,
    dtype, size, ...)` makes the outer tensor of the logical `size`, then its state sets
    `_local_tensor` (this rank's part, a plain tensor record) and `_spec` (mesh and placements, kept
    as stubs). Read as that local tensor, knowing its global shape; None for anything else."""
    named = [getattr(getattr(x, "_global", None), "qualified_name", None) for x in (func, new_type)]
    if named != ["torch._utils._rebuild_wrapper_subclass", DTENSOR] or len(args) < 3:
        return None
    # torch's object state: a dict, or (dict or None, slots dict) for a class with __slots__ as DTensor
    parts = state if isinstance(state, tuple) else (state,)
    fields = {k: v for part in parts if isinstance(part, dict) for k, v in part.items()}
    local, size = fields.get("_local_tensor"), args[2]
    if not (isinstance(local, TensorRef) and isinstance(size, tuple)
            and all(type(n) is int and n >= 0 for n in size) and len(size) == len(local.shape)):
        return None
    local.subclass, local.global_shape = DTENSOR, size
    return local


def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    if args and isinstance(args[0], (list, tuple)):
        check_keys([kv[0] for kv in args[0] if isinstance(kv, (list, tuple)) and kv], "OrderedDict")
    return OrderedDict(*args)


def _reconstructor(cls: Any, base: Any, state: Any = None, *,
                   call: Callable[[Any, tuple[Any, ...]], Any]) -> Any:
    """copyreg._reconstructor (protocol 0/1 objects): base.__new__(cls, state), then base.__init__
    unless base is object. A stub of cls is built; a base other than a harmless builtin type would
    run its own __init__, so that call is judged like any other."""
    if not (isinstance(cls, type) and issubclass(cls, PickledObject)):
        raise pickle.UnpicklingError("copyreg._reconstructor on a non-class")
    if base not in _HARMLESS_BASES:
        call(base, (state,))
    return cls.__new__(cls)


KNOWN: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): tuple,
    ("torch", "device"): lambda spec, index=None: TorchDeviceValue(
        f"{spec}:{index}" if index is not None else str(spec)),
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("numpy", "ndarray"): NumpyArray,
    ("numpy", "dtype"): _numpy_dtype,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    KNOWN[(_mod, "_reconstruct")] = _numpy_reconstruct
    KNOWN[(_mod, "scalar")] = _numpy_scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    KNOWN[(_mod, "_frombuffer")] = _numpy_frombuffer
MAX_BUILT_ITEMS = 1 << 20   # a checkpoint's containers are built item by item, never from a count


def _bounded(make: Callable[..., Any]) -> Callable[..., Any]:
    """A builtin that refuses sizes meant to exhaust memory: bytes(10**11), list(range(10**12))."""
    def build(*args: Any) -> Any:
        for arg in args:
            size = arg if isinstance(arg, int) and not isinstance(arg, bool) else (
                len(arg) if isinstance(arg, range) else 0)
            if make in (bytes, bytearray, list, tuple, set, frozenset) and size > MAX_BUILT_ITEMS:
                raise PickleLimitError(f"{make.__name__}() of {size:,} items: no checkpoint builds that "
                                       f"(container-size limit {MAX_BUILT_ITEMS:,})")
        if make in (set, frozenset, dict) and args and isinstance(args[0], (list, tuple)):
            check_keys(args[0] if make is not dict else [kv[0] for kv in args[0] if isinstance(kv, tuple) and kv],
                       make.__name__)
        return make(*args)
    return build


for _name in SAFE_BUILTINS:
    KNOWN[("builtins", _name)] = _bounded(getattr(builtins, _name))



_HARMLESS_BASES = frozenset(KNOWN[("builtins", n)] for n in ("object", "dict", "list", "set", "int", "float",
                                                            "str", "bytes", "tuple", "frozenset"))
NEEDS_CALL = frozenset({_rebuild_from_type_v2, _reconstructor})
