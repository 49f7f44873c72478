"""Writing a decoded tree back as a pickle that `torch.load` reads, without importing torch.

The inverse of `ckptkit.storage.safe_pickle`: tensors become torch's `_rebuild_tensor_v2` calls on
persistent storage ids, stubs of pickled objects are re-emitted with their original global,
arguments and state, so a rewritten checkpoint means what the original meant except for the
values a repair changed on purpose. Protocol 2, as `torch.save` writes.
"""
from __future__ import annotations

import io
import struct
from collections import OrderedDict
from typing import Any

from ckptkit.core.checkpoint import StorageRef, TensorRef
from ckptkit.core.errors import UnsupportedFeatureError
from ckptkit.storage.safe_pickle import NumpyArray, PickledObject, TorchDeviceValue, TorchDtypeValue

MARK, STOP, NONE, NEWTRUE, NEWFALSE = b"(", b".", b"N", b"\x88", b"\x89"
BININT1, BININT2, BININT, LONG1, BINFLOAT = b"K", b"M", b"J", b"\x8a", b"G"
BINUNICODE, GLOBAL, REDUCE, NEWOBJ, BUILD, BINPERSID = b"X", b"c", b"R", b"\x81", b"b", b"Q"
EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3 = b")", b"t", b"\x85", b"\x86", b"\x87"
EMPTY_LIST, APPENDS, EMPTY_DICT, SETITEMS = b"]", b"e", b"}", b"u"


class TreePickler:
    """Emits protocol-2 opcodes for the value types the safe unpickler produces."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.storages: dict[str, StorageRef] = {}   # every storage the pickle refers to, by key

    def dumps(self, value: Any) -> bytes:
        self.out.write(b"\x80\x02")
        self.save(value)
        self.out.write(STOP)
        return self.out.getvalue()

    def save(self, v: Any) -> None:
        if not self._save_scalar(v):
            self._save_compound(v)

    def _save_scalar(self, v: Any) -> bool:
        """None, bools, numbers, strings and bytes; False (nothing written) for any other value."""
        w = self.out.write
        if v is None:
            w(NONE)
        elif v is True or v is False:   # before int: bool is an int
            w(NEWTRUE if v else NEWFALSE)
        elif isinstance(v, int):
            self._int(v)
        elif isinstance(v, float):
            w(BINFLOAT + struct.pack(">d", v))
        elif isinstance(v, str):
            self._str(v)
        elif isinstance(v, (bytes, bytearray)):
            self._global("_codecs", "encode")
            self._tuple([bytes(v).decode("latin1"), "latin1"])
            w(REDUCE)
        else:
            return False
        return True

    def _save_compound(self, v: Any) -> None:
        """Tensors, containers, and the stand-ins the safe unpickler makes for pickled objects."""
        w = self.out.write
        if isinstance(v, TensorRef):
            self._tensor(v)
        elif isinstance(v, OrderedDict):   # before dict: an OrderedDict is a dict
            self._global("collections", "OrderedDict")
            w(EMPTY_TUPLE + REDUCE)
            self._setitems(v)
        elif isinstance(v, dict):
            w(EMPTY_DICT)
            self._setitems(v)
        elif isinstance(v, list):
            w(EMPTY_LIST)
            self._appends(v)
        elif isinstance(v, tuple):
            self._tuple(list(v))
        elif isinstance(v, (set, frozenset)):
            self._global("builtins", type(v).__name__)
            self._tuple([list(v)])
            w(REDUCE)
        else:
            self._stand_in(v)

    def _stand_in(self, v: Any) -> None:
        """What the safe unpickler made of torch's and other pickled objects, as they were."""
        if isinstance(v, PickledObject):
            self._object(v)
        elif isinstance(v, StorageRef):
            self._storage(v)
        elif isinstance(v, type) and issubclass(v, PickledObject):     # a global named, not called
            self._global(v._global.module, v._global.name)
        elif isinstance(v, TorchDtypeValue):
            self._global("torch", v.name)
        elif isinstance(v, TorchDeviceValue):
            self._global("torch", "device")
            self._tuple([v.spec])
            self.out.write(REDUCE)
        elif isinstance(v, NumpyArray):
            raise UnsupportedFeatureError(None, f"rewriting a pickled numpy array ({v!r}) is not supported")
        else:
            raise UnsupportedFeatureError(None, f"cannot write a value of type {type(v).__name__}")

    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self.out.write(BININT1 + bytes([v]))
        elif 0 <= v < 65536:
            self.out.write(BININT2 + struct.pack("<H", v))
        elif -(2 ** 31) <= v < 2 ** 31:
            self.out.write(BININT + struct.pack("<i", v))
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out.write(LONG1 + bytes([len(raw)]) + raw)

    def _str(self, v: str) -> None:
        raw = v.encode("utf-8", "surrogatepass")
        self.out.write(BINUNICODE + struct.pack("<I", len(raw)) + raw)

    def _global(self, module: str, name: str) -> None:
        self.out.write(GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")

    def _tuple(self, items: list[Any]) -> None:
        if not items:
            self.out.write(EMPTY_TUPLE)
            return
        small = {1: TUPLE1, 2: TUPLE2, 3: TUPLE3}.get(len(items))
        if small is None:
            self.out.write(MARK)
        for item in items:
            self.save(item)
        self.out.write(small or TUPLE)

    def _appends(self, items: list[Any]) -> None:
        if not items:
            return
        self.out.write(MARK)
        for item in items:
            self.save(item)
        self.out.write(APPENDS)

    def _setitems(self, d: dict[Any, Any]) -> None:
        if not d:
            return
        self.out.write(MARK)
        for k, val in d.items():
            self.save(k)
            self.save(val)
        self.out.write(SETITEMS)

    def _tensor(self, t: TensorRef) -> None:
        self.storages.setdefault(t.storage.key, t.storage)
        if not t.is_parameter:
            self._rebuild_call(t, t.requires_grad)
            return
        # nn.Parameter: _rebuild_parameter(_rebuild_tensor_v2(...), requires_grad, hooks)
        self._global("torch._utils", "_rebuild_parameter")
        self.out.write(MARK)
        self._rebuild_call(t, False)
        self.save(t.requires_grad)
        self.save(OrderedDict())
        self.out.write(TUPLE + REDUCE)

    def _rebuild_call(self, t: TensorRef, requires_grad: bool) -> None:
        """`_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, or for the
        newer dtypes torch keeps on an untyped byte storage (uint16/32/64, float8, float4...)
        `_rebuild_tensor_v3(..., hooks, dtype)`, as torch.save writes them. Such a storage
        may come typed from another format (a safetensors F8_E4M3 tensor): torch has no class
        to name for it, so it is written untyped, its size in bytes."""
        s = t.storage
        v3 = t.dtype is not s.dtype or s.dtype.storage_class is None
        self._global("torch._utils", "_rebuild_tensor_v3" if v3 else "_rebuild_tensor_v2")
        self.out.write(MARK)
        self._storage(s, untyped=v3)
        self.save(t.storage_offset)
        self._tuple(list(t.shape))
        self._tuple(list(t.stride))
        self.save(requires_grad)
        self.save(OrderedDict())
        if v3:
            self._global("torch", t.dtype.name)
        self.out.write(TUPLE + REDUCE)

    def _storage(self, s: StorageRef, untyped: bool = False) -> None:
        """The persistent id of a storage, as torch.save writes it: its typed class and size in
        elements, or UntypedStorage and its size in bytes (always for a dtype torch has no
        storage class for). Also a storage on its own, as a quantized tensor's
        `_rebuild_qtensor(storage, ...)` holds it."""
        self.storages.setdefault(s.key, s)
        storage_class = None if untyped else s.dtype.storage_class
        self.out.write(MARK)
        self.save("storage")
        if storage_class is None:
            self._global("torch.storage", "UntypedStorage")
        else:
            self._global("torch", storage_class)
        self.save(s.key)
        self.save(s.location)
        self.save(s.nbytes if storage_class is None else s.numel)
        self.out.write(TUPLE + BINPERSID)

    def _object(self, obj: PickledObject) -> None:
        module, name = obj._global.module, obj._global.name
        self._global(module, name)
        self._tuple(list(obj.args))
        self.out.write(REDUCE if obj.called else NEWOBJ)
        if obj.items:
            pairs = all(isinstance(i, tuple) and len(i) == 2 for i in obj.items)
            if pairs:
                self._setitems(dict(obj.items))
            else:
                self._appends(obj.items)
        if obj.state is not None:
            self.save(obj.state)
            self.out.write(BUILD)


def dumps_tree(tree: Any) -> tuple[bytes, dict[str, StorageRef]]:
    """The pickle bytes for `tree` and the storages it refers to (to be written beside it)."""
    pickler = TreePickler()
    return pickler.dumps(tree), pickler.storages
