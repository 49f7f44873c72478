"""The restricted unpickler's handlers for the opcodes that call, build or allocate.

Each replaces the pure-Python unpickler's handler of the same opcode: calls go through the
unpickler's judged `call` (never to anything from the file), and containers, lengths and keys
are checked against `pickle_limits` before the work is done.
"""
from __future__ import annotations

import pickle
from collections import OrderedDict
from struct import unpack
from typing import TYPE_CHECKING, Any

from ckptkit.core.checkpoint import TensorRef
from ckptkit.storage.pickle_limits import PickleLimitError, check_keys
from ckptkit.storage.pickle_values import NumpyArray, NumpyDtype, PickledObject
from ckptkit.storage.pickle_verdict import call_verdict, is_plain, render_call, short_repr

if TYPE_CHECKING:   # safe_pickle installs these ops; the import is for the type only
    from ckptkit.storage.safe_pickle import SafeUnpickler


def load_reduce(self: SafeUnpickler) -> None:
    stack = self.stack
    args = stack.pop()
    stack[-1] = self.call(stack[-1], args)


def load_newobj(self: SafeUnpickler) -> None:
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self.call(cls, args, new_only=True))


def load_newobj_ex(self: SafeUnpickler) -> None:
    kwargs = self.stack.pop()
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self.call(cls, args, kwargs, new_only=True))


def _instantiate(self: SafeUnpickler, klass: Any, args: list[Any]) -> None:
    # INST/OBJ: klass(*args), or klass.__new__(klass) for a class given no arguments.
    new_only = not args and isinstance(klass, type)
    self.append(self.call(klass, tuple(args), new_only=new_only))


def _read_name(self: SafeUnpickler, encoding: str) -> tuple[str, str]:
    module, name = self.readline(), self.readline()
    if not (module.endswith(b"\n") and name.endswith(b"\n")):
        raise pickle.UnpicklingError("pickle ends inside a global's name")
    return module[:-1].decode(encoding), name[:-1].decode(encoding)


def load_global(self: SafeUnpickler) -> None:
    self.append(self.find_class(*_read_name(self, "utf-8")))


def load_inst(self: SafeUnpickler) -> None:
    module, name = _read_name(self, "ascii")
    _instantiate(self, self.find_class(module, name), self.pop_mark())


def load_obj(self: SafeUnpickler) -> None:
    args = self.pop_mark()
    if not args:
        raise pickle.UnpicklingError("OBJ with nothing to call")
    cls = args.pop(0)
    _instantiate(self, cls, args)


def load_build(self: SafeUnpickler) -> None:
    state = self.stack.pop()
    inst = self.stack[-1]
    if isinstance(inst, PickledObject):
        _build_stub(self, inst, state)
    elif isinstance(inst, (NumpyArray, NumpyDtype)):
        inst.__setstate__(state)        # ckptkit's own decoding of numpy's state
    elif isinstance(inst, (TensorRef, OrderedDict)):
        pass                            # torch's Tensor.__setstate__ / a __dict__ update: nothing runs
    elif isinstance(inst, type) or callable(inst):
        _build_global(self, inst, state)
    else:
        raise pickle.UnpicklingError(f"BUILD on a {type(inst).__name__} (pickle.load fails there too)")


def _build_global(self: SafeUnpickler, inst: Any, state: Any) -> None:
    """BUILD on a module, class or function the pickle named: pickle.load sets its attributes
    (setattr, or an update of its `__dict__`) for the whole process. That is how a pickle
    replaces `torch._utils._rebuild_tensor` so that a later global resolves to `builtins.eval`:
    dangerous, whatever the target."""
    stub = inst._global if isinstance(inst, type) and issubclass(inst, PickledObject) else None
    target = stub.qualified_name if stub else getattr(inst, "__qualname__", type(inst).__name__)
    key = (stub.module, stub.name) if stub else ("", target)
    fields = state[1] if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict) else state
    if isinstance(fields, dict) and fields:
        name, value = next(iter(fields.items()))
        more = f" and {len(fields) - 1} more attributes" if len(fields) > 1 else ""
        text = f"setattr({target}, {short_repr(name)}, {short_repr(value)}){more}"
    else:
        text = render_call(f"{target}.__setstate__", (state,))
    self._record(key, "dangerous", text)


def _build_stub(self: SafeUnpickler, inst: PickledObject, state: Any) -> None:
    """BUILD: a plain dict (or (dict, slots)) state is the default update of the object's fields;
    any other state, or a `__setstate__` a previous BUILD planted in the object's dict, means
    pickle.load calls that __setstate__ with the state: judged like any other call."""
    planted = inst.state.get("__setstate__") if isinstance(inst.state, dict) else None
    if planted is not None:
        self.call(planted, (state,))
        return
    plain_update = isinstance(state, dict) or (
        isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict)
        and (state[0] is None or isinstance(state[0], dict)))
    if not plain_update and not inst.is_dangerous:
        g = inst._global
        verdict = call_verdict(g.module, g.name) if g.module else "dangerous"
        if verdict == "class" and not is_plain(state, frozenset()):
            verdict = "dangerous"
        self._record((g.module, g.name), verdict, render_call(f"{g.qualified_name}.__setstate__", (state,)))
    inst.__setstate__(state)


def load_setitem(self: SafeUnpickler) -> None:
    stack = self.stack
    value = stack.pop()
    key = stack.pop()
    target = stack[-1]
    target[key] = value
    _check_growth(target)


def load_setitems(self: SafeUnpickler) -> None:
    items = self.pop_mark()
    target = self.stack[-1]
    keys = items[0::2]
    check_keys(keys, "dict")
    for i in range(0, len(items), 2):
        target[items[i]] = items[i + 1]
    _check_growth(target)


def load_dict(self: SafeUnpickler) -> None:
    items = self.pop_mark()
    check_keys(items[0::2], "dict")
    self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})


def load_additems(self: SafeUnpickler) -> None:
    items = self.pop_mark()
    target = self.stack[-1]
    check_keys(items, "set")
    if isinstance(target, set):
        target.update(items)
        _check_growth(target)
    elif isinstance(target, PickledObject):
        target.__dict__["items"].extend(items)
    else:
        raise pickle.UnpicklingError(f"ADDITEMS on a {type(target).__name__}")


def load_frozenset(self: SafeUnpickler) -> None:
    items = self.pop_mark()
    check_keys(items, "frozenset")
    self.append(frozenset(items))


def load_bytearray8(self: SafeUnpickler) -> None:
    size, = unpack("<Q", self.read(8))
    if size > self._max_length:
        raise PickleLimitError(f"BYTEARRAY8 claims {size:,} bytes in a pickle of {self._max_length:,} "
                               "(length limit)")
    buffer = bytearray(size)
    self.readinto(buffer)
    self.append(buffer)


def load_frame(self: SafeUnpickler) -> None:
    """FRAME as the C unpickler (the one torch.load runs) reads it: a read-ahead hint that needs
    `size` bytes to follow, and no boundary: opcodes are read on across the frame's end as if it
    were not there. The pure-Python unpickler enforces the boundary instead, so a pickle that
    straddles one would show it something else than what torch.load runs."""
    size, = unpack("<Q", self.read(8))
    self.saw_frame = True
    left = self._max_length - (self._source.tell() - self._start)
    if size > left:   # the C unpickler fails here too: "pickle data was truncated"
        raise pickle.UnpicklingError(f"pickle ends inside a FRAME of {size:,} bytes (the file has "
                                     f"{max(left, 0):,} left): truncated or a damaged length")


def _check_growth(target: Any) -> None:
    """Re-check a dict's or set's keys each time its size doubles past 1024: keys added one
    SETITEM at a time could otherwise collide without any single batch showing it."""
    if isinstance(target, (dict, set)):
        n = len(target)
        if n >= 1024 and not n & (n - 1):
            check_keys(list(target), type(target).__name__)


def install_ops(dispatch: dict[int, Any]) -> None:
    for opcode, handler in ((pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj),
                            (pickle.NEWOBJ_EX, load_newobj_ex), (pickle.INST, load_inst), (pickle.OBJ, load_obj),
                            (pickle.BUILD, load_build), (pickle.SETITEM, load_setitem),
                            (pickle.SETITEMS, load_setitems), (pickle.DICT, load_dict),
                            (pickle.ADDITEMS, load_additems), (pickle.FROZENSET, load_frozenset),
                            (pickle.BYTEARRAY8, load_bytearray8), (pickle.FRAME, load_frame),
                            (pickle.GLOBAL, load_global)):
        dispatch[opcode[0]] = handler


__all__ = ["install_ops", "short_repr"]
