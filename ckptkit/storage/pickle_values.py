"""The values the restricted unpickler builds instead of running the file's code.

`PickledObject` stands in for an instance of any class the pickle names (and for the result of
any call ckptkit refused to make); the others are plain records of torch and numpy values.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any

from ckptkit.core.dtypes import DType


@dataclass(frozen=True)
class GlobalRef:
    """A global the pickle referenced, and what ckptkit made of it.

    kind: "known" (decoded by ckptkit), "class" (a class rebuilt from plain data, or a name only
    referenced), "dangerous" (something `pickle.load` would call that could run any code).
    `call`: for a dangerous one, the call as `pickle.load` would make it, arguments included.
    """

    module: str
    name: str
    kind: str
    call: str = ""

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


class PickledObject:
    """An inert stand-in for an instance of a class the pickle names; never runs its code."""

    _global: GlobalRef
    # Set per instance by __new__ (through __dict__, so no class attribute exists): declared
    # here so the type checker knows what the unpickler fills in.
    args: tuple[Any, ...]            # the constructor arguments (REDUCE / NEWOBJ)
    kwargs: dict[str, Any]           # NEWOBJ_EX keyword arguments
    state: Any                       # whatever BUILD passed to __setstate__; None if none
    items: list[Any]                 # SETITEM(S) (key, value) pairs or APPEND(S) values
    called: bool                     # True when REDUCE called the class, not NEWOBJ
    blocked: str                     # the refused call that made this object, as text

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["kwargs"] = kwargs
        obj.__dict__["state"] = None
        obj.__dict__["items"] = []
        obj.__dict__["called"] = False
        obj.__dict__["blocked"] = ""   # the refused call that made this object, as text
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
        return self._global.kind == "dangerous" or bool(self.__dict__.get("blocked"))

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
        if self.__dict__.get("blocked"):
            return f"<blocked call {self.blocked}>"
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


class StorageType:
    """What `torch.FloatStorage` & co. stand for inside a persistent id: a dtype."""

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype


class UnsupportedPickle(pickle.UnpicklingError):
    """A well-formed pickle using something ckptkit cannot read (not damage)."""


