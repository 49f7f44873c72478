"""The restricted unpickler's loop over a pickle held in memory, with torch's common opcodes inline.

torch writes `data.pkl` with protocol 2: an 80,000-record checkpoint runs about 2.5 million
opcodes, nearly all of them memo puts and gets, small ints, MARK/TUPLE, REDUCE and BINPERSID.
The pure-Python unpickler spends most of its time on two Python calls per opcode (reading one
byte through its unframer, then the handler) and on a memo dict keyed by half a million ints.
This loop reads the bytes by index, runs those opcodes inline and keeps the memo in `Memo`'s
list; everything else, and any opcode whose argument runs past the end of the data, goes to the
unpickler's own handler (`SafeUnpickler.dispatch`), so calls are judged and limits and error
messages are exactly those of the handlers. A FRAME (protocol 4 and up) hands the rest of the
pickle to the unpickler's framed loop.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable
from struct import Struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # safe_pickle calls this loop; the import is for the type only
    from ckptkit.storage.safe_pickle import SafeUnpickler

_U32 = Struct("<I").unpack_from
_U16 = Struct("<H").unpack_from
_I32 = Struct("<i").unpack_from
_F64 = Struct(">d").unpack_from


class Memo:
    """The pickle memo: a list for the indices a pickler writes (0, 1, 2, ... in order), a dict
    for any other. A hostile LONG_BINPUT of 4e9 then costs one dict entry, not a list of 4e9
    (the C unpickler's weakness); half a million dense entries cost 8 bytes each, not ~70."""

    __slots__ = ("dense", "sparse")

    def __init__(self) -> None:
        self.dense: list[Any] = []
        self.sparse: dict[int, Any] = {}

    def __getitem__(self, i: int) -> Any:
        if 0 <= i < len(self.dense):
            return self.dense[i]
        return self.sparse[i]

    def __setitem__(self, i: int, value: Any) -> None:
        dense = self.dense
        if i == len(dense):
            dense.append(value)
            if self.sparse:
                self.sparse.pop(i, None)
        elif 0 <= i < len(dense):
            dense[i] = value
        else:
            self.sparse[i] = value

    def __len__(self) -> int:
        return len(self.dense) + len(self.sparse)


def _missing(memo: Memo, i: int) -> Any:
    try:
        return memo[i]
    except KeyError:
        raise pickle.UnpicklingError(f"Memo value not found at index {i}") from None


def run_in_memory(self: SafeUnpickler, data: bytes | memoryview,  # noqa: C901, PLR0915 (see docstring)
                  dispatch: dict[int, Callable[[SafeUnpickler], None]]) -> Any:
    """Unpickle `data` (the bytes `self` reads, from position 0) and return its value.

    One long loop on purpose: a function per opcode is exactly the per-opcode call it saves.
    The branches are ordered by how often torch's data.pkl runs them."""
    memo = self.memo
    assert isinstance(memo, Memo)
    dense, metastack = memo.dense, self.metastack
    stack = self.stack
    append = stack.append
    put = dense.append
    call, direct = self.call, self.direct_calls
    # the reader's own callback when there is one (SafeUnpickler.persistent_load only forwards to it)
    persistent_load = self.persistent_callback or self.persistent_load
    source = self._source
    pos, end, count = 0, len(data), 0
    while True:
        if not count & 0xFFFF and count:    # as the framed loop: after every 65,536 opcodes run
            self._check_budget(count)
        if pos >= end:
            raise EOFError
        op = data[pos]
        pos += 1
        count += 1
        if op == 0x72 and pos + 4 <= end:                   # LONG_BINPUT
            i = _U32(data, pos)[0]
            pos += 4
            top = stack[-1]
            if i == len(dense):
                put(top)
            else:
                memo[i] = top
        elif op == 0x4B and pos < end:                      # BININT1
            append(data[pos])
            pos += 1
        elif op == 0x68 and pos < end:                      # BINGET
            i = data[pos]
            pos += 1
            append(dense[i] if i < len(dense) else _missing(memo, i))
        elif op == 0x28:                                    # MARK
            metastack.append(stack)
            stack = []
            append = stack.append
        elif op == 0x74:                                    # TUPLE
            items = stack
            stack = metastack.pop()
            append = stack.append
            append(tuple(items))
        elif op == 0x52:                                    # REDUCE
            args = stack.pop()
            target = stack[-1]
            # as `call` does for these (a tensor rebuild, OrderedDict), one Python call fewer
            stack[-1] = target(*args) if type(args) is tuple and target in direct else call(target, args)
        elif op == 0x86:                                    # TUPLE2
            stack[-2:] = [(stack[-2], stack[-1])]
        elif op == 0x29:                                    # EMPTY_TUPLE
            append(())
        elif op == 0x58 and pos + 4 <= end:                 # BINUNICODE
            n = _U32(data, pos)[0]
            if pos + 4 + n > end:
                pos = _handler(self, dispatch, op, pos, stack)
                stack, append = self.stack, self.append
                continue
            append(str(data[pos + 4: pos + 4 + n], "utf-8", "surrogatepass"))
            pos += 4 + n
        elif op == 0x89:                                    # NEWFALSE
            append(False)
        elif op == 0x51:                                    # BINPERSID
            pid = stack.pop()
            append(persistent_load(pid))
        elif op == 0x6A and pos + 4 <= end:                 # LONG_BINGET
            i = _U32(data, pos)[0]
            pos += 4
            append(dense[i] if i < len(dense) else _missing(memo, i))
        elif op == 0x4D and pos + 2 <= end:                 # BININT2
            append(_U16(data, pos)[0])
            pos += 2
        elif op == 0x7D:                                    # EMPTY_DICT
            append({})
        elif op == 0x71 and pos < end:                      # BINPUT
            i = data[pos]
            pos += 1
            top = stack[-1]
            if i == len(dense):
                put(top)
            else:
                memo[i] = top
        elif op == 0x4A and pos + 4 <= end:                 # BININT
            append(_I32(data, pos)[0])
            pos += 4
        elif op == 0x85:                                    # TUPLE1
            stack[-1] = (stack[-1],)
        elif op == 0x87:                                    # TUPLE3
            stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
        elif op == 0x88:                                    # NEWTRUE
            append(True)
        elif op == 0x4E:                                    # NONE
            append(None)
        elif op == 0x5D:                                    # EMPTY_LIST
            append([])
        elif op == 0x47 and pos + 8 <= end:                 # BINFLOAT
            append(_F64(data, pos)[0])
            pos += 8
        elif op == 0x2E:                                    # STOP
            return stack.pop()
        elif op == 0x95:                                    # FRAME: the framed loop takes over
            self.stack, self.append = stack, append
            source.seek(pos - 1)
            return self.run_framed(count - 1)
        else:
            pos = _handler(self, dispatch, op, pos, stack)
            stack, append = self.stack, self.append


def _handler(self: SafeUnpickler, dispatch: dict[int, Callable[[SafeUnpickler], None]], op: int, pos: int,
             stack: list[Any]) -> int:
    """Run the unpickler's own handler for `op`, reading its argument from `pos`; where it ends."""
    handler = dispatch.get(op)
    if handler is None:
        raise pickle.UnpicklingError(f"unknown opcode {bytes((op,))!r}")
    self.stack, self.append = stack, stack.append
    self._source.seek(pos)
    handler(self)
    return int(self._source.tell())
