"""A restricted unpickler that resolves no global from the file.

Every GLOBAL/STACK_GLOBAL a pickle names goes through `SafeUnpickler.find_class`, which never
imports anything. It answers with:

- our own rebuild functions for the names torch writes (tensor rebuild functions, storage
  classes, dtypes), which build lazy `TensorRef`s instead of tensors;
- plain Python equivalents for harmless containers (OrderedDict, set, slice, ...);
- inert `PickledObject` stub classes for everything else: they keep the qualified name and the
  state (a pickled dataclass still shows its fields) and record a finding. A name that could
  run code when unpickled for real (os.system, builtins.eval, subprocess...) is recorded as a
  security error; any other class as a warning, because `torch.load(weights_only=True)`
  refuses it and `weights_only=False` would import and run its module.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import io
import pickle
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core.dtypes import BY_STORAGE_CLASS, DType, dtype_named, is_torch_dtype_name
from ckptkit.core.checkpoint import StorageRef, TensorRef

# Module roots whose globals can run arbitrary code or touch the system when called.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "runpy", "importlib", "shutil", "socket", "pty",
    "ctypes", "pickle", "_pickle", "marshal", "code", "codeop", "webbrowser", "commands",
    "platform", "multiprocessing", "signal", "asyncio", "http", "urllib", "requests", "io",
    "_io", "operator", "functools", "types", "inspect", "pdb", "timeit", "tempfile", "glob",
    "pathlib", "zipimport", "threading", "_thread", "ftplib", "smtplib", "telnetlib",
})
SAFE_BUILTINS = frozenset({"set", "frozenset", "slice", "complex", "bytearray", "range", "object",
                           "dict", "list", "tuple", "int", "float", "str", "bytes", "bool"})


@dataclass(frozen=True)
class GlobalRef:
    """A global the pickle referenced, and what ckptkit made of it."""

    module: str
    name: str
    kind: str            # "known" | "class" | "dangerous"

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"


class PickledObject:
    """An inert stand-in for an instance of a class the pickle names; never runs its code."""

    _global: GlobalRef

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledObject":
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["kwargs"] = kwargs
        obj.__dict__["state"] = None
        obj.__dict__["items"] = []
        obj.__dict__["called"] = False
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Reached only through REDUCE (cls(*args)); NEWOBJ calls __new__ alone. The pickle
        # writer re-emits the same opcode, so a rewritten file means what the original meant.
        self.__dict__["called"] = True

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:   # dict subclasses
        self.__dict__["items"].append((key, value))

    def append(self, value: Any) -> None:                  # list subclasses
        self.__dict__["items"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["items"].extend(values)

    @property
    def qualified_name(self) -> str:
        return self._global.qualified_name

    @property
    def is_dangerous(self) -> bool:
        return self._global.kind == "dangerous"

    def fields(self) -> dict[str, Any]:
        """The object's fields as a plain dict: its pickled state, else its constructor args."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}       # (dict, slots) form
        if isinstance(state, dict):
            return dict(state)
        if self.items and all(isinstance(i, tuple) and len(i) == 2 for i in self.items):
            return dict(self.items)
        if self.args:
            return {f"arg{i}": a for i, a in enumerate(self.args)}
        return {} if state is None else {"state": state}

    def __repr__(self) -> str:
        if self.is_dangerous:
            return f"<blocked call {self.qualified_name}{self.args!r}>"
        return f"<pickled {self.qualified_name}>"


@dataclass(frozen=True)
class TorchDtypeValue:
    """A `torch.float32`-style dtype object stored as a value (not a tensor's dtype)."""

    name: str

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclass(frozen=True)
class TorchDeviceValue:
    spec: str

    def __repr__(self) -> str:
        return f"device({self.spec!r})"


@dataclass
class NumpyArray:
    """A numpy array as pickled: dtype code, shape and raw bytes; numpy is not imported."""

    dtype: str = "?"
    shape: tuple[int, ...] = ()
    data: bytes = b""

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, rawdata)
        _, shape, dtype, _, raw = state
        self.shape = tuple(shape)
        self.dtype = dtype.code if isinstance(dtype, NumpyDtype) else str(dtype)
        self.data = raw.encode("latin1") if isinstance(raw, str) else bytes(raw)

    def __repr__(self) -> str:
        return f"ndarray {self.dtype}{list(self.shape)}"

    def tolist(self) -> list[Any] | None:
        """A 1-D array of plain numbers as the Python numbers ndarray.tolist() gives (numpy's RNG
        keys, for one); None for other dtypes and shapes (the memory order is not kept here)."""
        fmt = _STRUCT_CODES.get(self.dtype.lstrip("<>=|"))
        if fmt is None or len(self.shape) != 1 or struct.calcsize(fmt) * self.shape[0] != len(self.data):
            return None
        order = ">" if self.dtype.startswith(">") else "<"
        return list(struct.unpack(f"{order}{self.shape[0]}{fmt}", self.data))


@dataclass
class NumpyDtype:
    code: str = "?"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.code = (state[1] if state[1] != "|" else "") + self.code


_STRUCT_CODES = {"f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h", "i1": "b",
                 "u8": "Q", "u4": "I", "u2": "H", "u1": "B", "b1": "?"}


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


class StorageType:
    """What `torch.FloatStorage` & co. stand for inside a persistent id: a dtype."""

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype


class UnsupportedPickle(pickle.UnpicklingError):
    """A well-formed pickle using something ckptkit cannot read (not damage)."""


def _tensor_ref(dtype: DType, storage: Any, offset: Any, size: Any, stride: Any,
                requires_grad: Any) -> TensorRef:
    """A TensorRef from a rebuild call's arguments, refusing values no torch.save writes."""
    if isinstance(storage, PickledObject) and storage.qualified_name == "torch.storage._load_from_bytes":
        raise UnsupportedPickle("tensors written with pickle.dump instead of torch.save (each storage is a "
                                "nested torch.save blob); re-save them with torch.save")
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage record")
    shape, strides = _int_tuple(size), _int_tuple(stride)
    if shape is None or strides is None or len(shape) != len(strides) or not _is_count(offset):
        raise pickle.UnpicklingError(f"tensor on storage {storage.key!r} has a damaged shape, stride or "
                                     f"offset ({str(size)[:40]}, {str(stride)[:40]}, {str(offset)[:20]})")
    return TensorRef(dtype, shape, strides, storage, offset, requires_grad=bool(requires_grad))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int_tuple(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, (tuple, list)) or not all(_is_count(v) for v in value):
        return None
    return tuple(value)


def _rebuild_tensor(storage: StorageRef, offset: int, size: Any, stride: Any, *rest: Any) -> TensorRef:
    dtype = storage.dtype if isinstance(storage, StorageRef) else None
    return _tensor_ref(dtype, storage, offset, size, stride, rest[0] if rest else False)  # type: ignore[arg-type]


def _rebuild_tensor_v3(storage: StorageRef, offset: int, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, *_: Any) -> TensorRef:
    """Newer dtypes (uint16/32/64, float8) are saved on an untyped byte storage plus a dtype.

    The storage stays an untyped byte record (views of it may have other dtypes); offset and
    stride are in the tensor's own elements, which is how TensorRef reads them.
    """
    if not isinstance(dtype, TorchDtypeValue):
        name = dtype.qualified_name if isinstance(dtype, type) and issubclass(dtype, PickledObject) else dtype
        raise pickle.UnpicklingError(f"tensor of dtype {name} (not a dtype ckptkit knows)")
    return _tensor_ref(dtype_named(dtype.name), storage, offset, size, stride, requires_grad)


def _rebuild_parameter(data: TensorRef, requires_grad: bool = True, *_: Any) -> TensorRef:
    if isinstance(data, TensorRef):
        data.is_parameter = True
        data.requires_grad = bool(requires_grad)
    return data


def _rebuild_from_type_v2(func: Callable[..., Any], new_type: Any, args: Any, state: Any) -> Any:
    value = func(*args)
    if isinstance(value, TensorRef) and isinstance(new_type, type) and issubclass(new_type, PickledObject):
        value.subclass = new_type._global.qualified_name
    return value


def _ordered_dict(*args: Any) -> OrderedDict[Any, Any]:
    return OrderedDict(*args)


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    # copyreg._reconstructor (protocol 0/1 objects): build a stub of cls, never call base.
    if isinstance(cls, type) and issubclass(cls, PickledObject):
        return cls.__new__(cls)
    raise pickle.UnpicklingError("copyreg._reconstructor on a non-class")


_KNOWN: dict[tuple[str, str], Any] = {
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
    _KNOWN[(_mod, "_reconstruct")] = _numpy_reconstruct
    _KNOWN[(_mod, "scalar")] = _numpy_scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _KNOWN[(_mod, "_frombuffer")] = _numpy_frombuffer
MAX_BUILT_ITEMS = 1 << 28   # a checkpoint's containers are built item by item, never from a count


def _bounded(make: Callable[..., Any]) -> Callable[..., Any]:
    """A builtin that refuses sizes meant to exhaust memory: bytes(10**11), list(range(10**12))."""
    def build(*args: Any) -> Any:
        for arg in args:
            size = arg if isinstance(arg, int) and not isinstance(arg, bool) else (
                len(arg) if isinstance(arg, range) else 0)
            if make in (bytes, bytearray, list, tuple, set, frozenset) and size > MAX_BUILT_ITEMS:
                raise pickle.UnpicklingError(f"{make.__name__}() of {size} items: no checkpoint builds that")
        return make(*args)
    return build


for _name in SAFE_BUILTINS:
    _KNOWN[("builtins", _name)] = _bounded(getattr(builtins, _name))


@dataclass
class UnpickleResult:
    value: Any
    globals: list[GlobalRef] = field(default_factory=list)

    @property
    def dangerous(self) -> list[GlobalRef]:
        return [g for g in self.globals if g.kind == "dangerous"]

    @property
    def classes(self) -> list[GlobalRef]:
        return [g for g in self.globals if g.kind == "class"]


class SafeUnpickler(pickle._Unpickler):
    """`pickle.Unpickler` whose find_class never imports; see the module docstring.

    Built on the pure-Python unpickler on purpose: the C one keeps its memo in an array that a
    damaged LONG_BINPUT index (one flipped bit) resizes to billions of entries and zero-fills,
    so the process is killed for memory instead of reporting a damaged file. Here the memo is a
    dict. (Measured: open_checkpoint of a 275 KB data.pkl takes 72 ms instead of 58 ms.)
    """

    def __init__(self, file: io.BufferedIOBase,
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self._persistent = persistent_load
        self.globals: dict[tuple[str, str], GlobalRef] = {}
        self._stub_classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles (torch.save's default) spell names the Python 2 way
        # (__builtin__.eval, copy_reg._reconstructor, commands.Popen); the stock find_class maps
        # them before importing, and so do we before judging them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in _KNOWN:
            self._note(module, name, "known")
            return _KNOWN[key]
        if module == "torch" and name in BY_STORAGE_CLASS:
            self._note(module, name, "known")
            return StorageType(BY_STORAGE_CLASS[name])
        if module in ("torch", "torch.storage") and name in ("UntypedStorage", "TypedStorage"):
            self._note(module, name, "known")
            return StorageType(BY_STORAGE_CLASS["UntypedStorage"])
        if module == "torch" and is_torch_dtype_name(name):
            self._note(module, name, "known")
            return TorchDtypeValue(dtype_named(name).name)
        kind = "dangerous" if _is_dangerous(module, name) else "class"
        self._note(module, name, kind)
        return self._stub(module, name, kind)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("persistent id in a pickle that should have none")
        return self._persistent(pid)

    def _note(self, module: str, name: str, kind: str) -> None:
        self.globals.setdefault((module, name), GlobalRef(module, name, kind))

    def _stub(self, module: str, name: str, kind: str) -> type:
        key = (module, name)
        if key not in self._stub_classes:
            qualname = name.rsplit(".", 1)[-1] or "object"
            cls = type(qualname, (PickledObject,), {"_global": GlobalRef(module, name, kind),
                                                    "__module__": "ckptkit.stubs"})
            self._stub_classes[key] = cls
        return self._stub_classes[key]


def _is_dangerous(module: str, name: str) -> bool:
    root = module.split(".", 1)[0]
    if root in ("builtins", "__builtin__"):
        return name not in SAFE_BUILTINS
    return root in DANGEROUS_MODULES or name in ("system", "popen", "eval", "exec", "execfile",
                                                 "compile", "__import__", "getattr", "apply")


def safe_loads(data: bytes, persistent_load: Callable[[Any], Any] | None = None) -> UnpickleResult:
    """Unpickle `data` without resolving any global from it. Raises pickle/Value/... errors as-is."""
    return safe_load_stream(io.BytesIO(data), persistent_load)


def safe_load_stream(file: io.BufferedIOBase,
                     persistent_load: Callable[[Any], Any] | None = None) -> UnpickleResult:
    """Unpickle one pickle from `file`, leaving the file positioned just after it."""
    unpickler = SafeUnpickler(file, persistent_load)
    with _quiet_interpreter_reports():
        value = unpickler.load()
    return UnpickleResult(value, list(unpickler.globals.values()))


@contextmanager
def _quiet_interpreter_reports() -> Iterator[None]:
    """Keep CPython's own error reports off the user's terminal while unpickling.

    When a damaged BYTEARRAY8 length makes the C unpickler fail, CPython (3.11) prints
    "SystemError: deallocated bytearray object has exported buffers" through sys.excepthook
    before raising the real error, which we turn into one line. Only that report is silenced.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if not (kind is SystemError and "exported buffers" in str(exc)):
            previous(kind, exc, tb)

    sys.excepthook = hook
    try:
        yield
    finally:
        sys.excepthook = previous
