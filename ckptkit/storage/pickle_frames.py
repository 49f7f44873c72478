"""The names the C unpickler resolves in a framed pickle, for the cases where it reads the bytes
differently from ckptkit.

Protocol 4 and 5 pickles cut their opcodes into FRAMEs. ckptkit reads a FRAME as the C unpickler
(the one torch.load runs) documents it: a read-ahead hint, no boundary. But the C unpickler
refills its read buffer at fixed sizes, and a pickle built around that refill (fickling's
"frame boundary divergence") makes it run opcodes no linear reading sees: a payload hidden in
the bytes of a BINBYTES. So a framed pickle that ckptkit has read whole, within every limit, is
read once more by the C unpickler itself, with every global answered by an inert class and
every persistent id by None: nothing from the file is imported or run, only the names it asks
for are recorded. torch.save writes protocol 2 (no frames), so checkpoints never pay for this.
"""
from __future__ import annotations

import io
import pickle
from typing import Any


class _Inert:
    """Stands for every global the C unpickler asks for: accepts any call, state or item."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _Recorder(pickle.Unpickler):   # the C unpickler: pickle.Unpickler is _pickle.Unpickler
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.names: list[tuple[str, str]] = []

    def find_class(self, module: str, name: str) -> Any:
        self.names.append((module, name))
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        return None


def names_the_c_unpickler_resolves(data: bytes) -> list[tuple[str, str]]:
    """Every (module, name) the C unpickler asks for while reading `data`, up to where it stops."""
    recorder = _Recorder(data)
    try:
        recorder.load()
    except Exception:   # it stops where pickle.load would: the names asked for so far are the answer
        pass
    return recorder.names
