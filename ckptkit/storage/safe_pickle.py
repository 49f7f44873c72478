"""A restricted unpickler that resolves no global from the file and judges every call it would make.

Every GLOBAL/STACK_GLOBAL a pickle names goes through `SafeUnpickler.find_class`, which never
imports anything. It answers with ckptkit's own inert equivalent for the names torch and numpy
write (`pickle_known.KNOWN`: tensor rebuild functions build lazy `TensorRef`s), and with an inert
`PickledObject` stub class for every other name. Every opcode that calls something (REDUCE,
NEWOBJ, NEWOBJ_EX, INST, OBJ, and BUILD through a `__setstate__` that is not the plain update)
goes through `SafeUnpickler.call`, which records the call with the verdict `pickle_verdict` gives
it ("known", "class" or "dangerous", with the call's text) and builds a stub instead of calling
anything from the file. So a pickled dataclass config still shows its fields, and a payload shows
as `<blocked call pip.main(['install', 'x'])>`.

Fail closed: when the reader stops early (damage, an unknown opcode, a limit), the exception
carries the globals and calls seen before the stop (`PARTIAL_ATTR`), so the error can name them
and never calls the file safe. Work is bounded by `pickle_limits` (opcodes, memo, marks, lengths,
hash collisions, and depth/size of the decoded tree).
"""
from __future__ import annotations

import _compat_pickle
import gc
import io
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from ckptkit.core.dtypes import BY_STORAGE_CLASS, dtype_named, is_torch_dtype_name
from ckptkit.storage import pickle_limits as limits
from ckptkit.storage.pickle_fastloop import Memo, run_in_memory
from ckptkit.storage.pickle_frames import names_the_c_unpickler_resolves
from ckptkit.storage.pickle_known import KNOWN, NEEDS_CALL, SAFE_BUILTINS
from ckptkit.storage.pickle_ops import install_ops
from ckptkit.storage.pickle_values import (
    GlobalRef,
    NumpyArray,
    NumpyDtype,
    PickledObject,
    StorageType,
    TorchDeviceValue,
    TorchDtypeValue,
    UnsupportedPickle,
)
from ckptkit.storage.pickle_verdict import (
    DANGEROUS_MODULES,
    OPCODE_NAMES,
    PLAIN_STDLIB_CLASSES,
    WEIGHTS_ONLY_OPCODES,
    call_verdict,
    is_plain,
    reference_verdict,
    render_call,
    short_repr,
)

__all__ = ["DANGEROUS_MODULES", "SAFE_BUILTINS", "GlobalRef", "NumpyArray", "NumpyDtype", "PickledObject",
           "StorageType", "TorchDeviceValue", "TorchDtypeValue", "UnsupportedPickle", "UnpickleResult",
           "SafeUnpickler", "safe_loads", "safe_load_stream", "PARTIAL_ATTR"]

PARTIAL_ATTR = "ckptkit_globals"   # on an exception from safe_load*: the GlobalRefs seen before the stop
_KNOWN_CALLABLES = frozenset(v for v in KNOWN.values() if callable(v))
_PLAIN_TYPES = frozenset(KNOWN[("builtins", n)] for n in SAFE_BUILTINS)
_RANK = {"known": 0, "class": 1, "dangerous": 2}


@dataclass
class UnpickleResult:
    value: Any
    globals: list[GlobalRef] = field(default_factory=list)
    # The opcodes torch's weights-only unpickler stops at, by name, in the order the pickle first
    # runs them (torch stops at the first): what `torch.load(weights_only=True)` cannot read.
    torch_refuses: tuple[str, ...] = ()

    @property
    def dangerous(self) -> list[GlobalRef]:
        return [g for g in self.globals if g.kind == "dangerous"]

    @property
    def classes(self) -> list[GlobalRef]:
        return [g for g in self.globals if g.kind == "class"]


class SafeUnpickler(pickle._Unpickler):
    """`pickle.Unpickler` whose find_class never imports and whose calls are judged, not made.

    Built on the pure-Python unpickler on purpose. The C unpickler could give the same verdicts
    (find_class returning recording stubs), but it cannot give the same limits: it keeps its memo
    in an array that one damaged LONG_BINPUT index resizes to billions of zero-filled entries, it
    allocates a BYTEARRAY8's claimed length before reading it, and it inserts dict keys with no
    way to refuse a hash-collision flood, so a hostile file costs memory or time before anything
    can refuse it. Here every such opcode is checked first. An in-memory pickle (data.pkl) runs
    through `pickle_fastloop`, which does torch's common opcodes inline and hands every other one
    to the same handlers. Measured on an 80,000-record torch data.pkl (7 MB), CPU seconds: a bare
    C `pickle.Unpickler` with Python callbacks 0.63 s, this one with ckptkit's records 0.90 s
    (1.44x; 1.74 s, 2.78x, through the unframer opcode by opcode). The remaining gap is the price of
    checking before doing; a faster C path would need those limits enforced before the C code runs.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    # What `call` hands straight to ckptkit's own function: the in-memory loop calls these itself.
    direct_calls = _KNOWN_CALLABLES - NEEDS_CALL
    # Set by pickle._Unpickler.__init__ and load(), which typeshed does not describe.
    _file_read: Callable[[int], bytes]
    _file_readline: Callable[[], bytes]
    pop_mark: Callable[[], list[Any]]
    memo: Memo   # set in __init__ (pickle's own handlers index it as they would a dict)
    metastack: list[list[Any]]
    stack: list[Any]
    proto: int

    def __init__(self, file: Any, persistent_load: Callable[[Any], Any] | None = None,
                 max_length: int | None = None, data: bytes | None = None) -> None:
        """`data`: the bytes `file` holds (an in-memory pickle), read by index instead of through `file`."""
        super().__init__(file, encoding="latin1")
        self.memo = Memo()
        self._source, self._data = file, data
        self.persistent_callback = persistent_load
        self._max_length = max_length if max_length is not None else sys.maxsize
        self._start = file.tell()
        self.saw_frame = False   # set by pickle_ops.load_frame
        # Each opcode torch's weights-only unpickler refuses is noted the first time it runs, then
        # runs bare: this unpickler's own copy of the table, so torch's common opcodes pay nothing.
        self._dispatch = dict(_TABLE)
        self.torch_refuses: list[str] = []
        self._refs: dict[tuple[str, str], str] = {}
        self._calls: dict[tuple[str, str], tuple[str, str]] = {}
        self._stub_classes: dict[tuple[str, str], type[PickledObject]] = {}

    # -- names ---------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles spell names the Python 2 way (__builtin__.eval, copy_reg._reconstructor);
        # the stock find_class maps them before importing, and so do we before judging them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in KNOWN:
            self._refs.setdefault(key, "known")
            return KNOWN[key]
        if module == "torch" and name in BY_STORAGE_CLASS:
            self._refs.setdefault(key, "known")
            return StorageType(BY_STORAGE_CLASS[name])
        if module in ("torch", "torch.storage") and name in ("UntypedStorage", "TypedStorage"):
            self._refs.setdefault(key, "known")
            return StorageType(BY_STORAGE_CLASS["UntypedStorage"])
        if module == "torch" and is_torch_dtype_name(name):
            self._refs.setdefault(key, "known")
            return TorchDtypeValue(dtype_named(name).name)
        self._refs.setdefault(key, reference_verdict(module, name))
        return self._stub(module, name)

    def _stub(self, module: str, name: str) -> type[PickledObject]:
        key = (module, name)
        if key not in self._stub_classes:
            qualname = name.rsplit(".", 1)[-1] or "object"
            kind = reference_verdict(module, name) if module else "dangerous"
            # type() with PickledObject as the only base builds a subclass of it.
            self._stub_classes[key] = cast("type[PickledObject]", type(qualname, (PickledObject,), {
                "_global": GlobalRef(module, name, kind), "__module__": "ckptkit.stubs"}))
        return self._stub_classes[key]

    def persistent_load(self, pid: Any) -> Any:
        if self.persistent_callback is None:
            raise pickle.UnpicklingError("persistent id in a pickle that should have none")
        return self.persistent_callback(pid)

    # -- calls ---------------------------------------------------------------------------
    def call(self, target: Any, args: Any, kwargs: Any = None, new_only: bool = False) -> Any:
        """What `target(*args, **kwargs)` (or `target.__new__(target, *args)`) gives, judged."""
        if not isinstance(args, (tuple, list)) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise pickle.UnpicklingError(f"a call of {short_repr(target)} with arguments that are not a tuple")
        if target in _KNOWN_CALLABLES:
            if target in NEEDS_CALL:
                return target(*args, call=self.call)
            return target(*args, **kwargs) if kwargs else target(*args)
        if isinstance(target, type) and issubclass(target, PickledObject):
            return self._call_stub(target, tuple(args), kwargs, new_only)
        if isinstance(target, PickledObject):
            # Calling an object: the result of an earlier call (getattr(os, 'system')), or an instance
            # whose class defines __call__. Either way code chosen by the file runs.
            text = render_call(short_repr(target), args, kwargs)
            self._record(("", text), "dangerous", text)
            result = self._stub("", text).__new__(self._stub("", text), *args)
            result.__dict__["blocked"] = text
            return result
        raise pickle.UnpicklingError(f"the pickle calls {short_repr(target)}, which is not callable")

    def _call_stub(self, cls: type[PickledObject], args: tuple[Any, ...], kwargs: Any, new_only: bool) -> Any:
        g = cls._global
        verdict = call_verdict(g.module, g.name) if g.module else "dangerous"
        allowed = _PLAIN_TYPES | (frozenset(self._stub_classes.values())
                                  if (g.module, g.name) in PLAIN_STDLIB_CLASSES else frozenset())
        if verdict == "class" and not (is_plain(args, allowed) and is_plain(kwargs, allowed)):
            verdict = "dangerous"   # a class handed code (a global, a refused call) instead of data
        text = render_call(f"{g.qualified_name}.__new__" if new_only else g.qualified_name, args, kwargs)
        self._record((g.module, g.name), verdict, text)
        obj = cls.__new__(cls, *args, **(kwargs or {}))
        obj.__dict__["called"] = not new_only
        if verdict == "dangerous":
            obj.__dict__["blocked"] = text
        return obj

    def _record(self, key: tuple[str, str], verdict: str, text: str) -> None:
        previous = self._calls.get(key)
        if previous is None or _RANK[verdict] > _RANK[previous[0]]:
            self._calls[key] = (verdict, text)

    def verdicts(self) -> list[GlobalRef]:
        """Every global named and every call made so far, each with its strongest verdict."""
        out = []
        for key in {**self._refs, **self._calls}:
            ref = self._refs.get(key)
            kind, text = self._calls.get(key, (ref, ""))
            if ref == "dangerous" and kind != "dangerous":
                kind = "dangerous"
            out.append(GlobalRef(key[0], key[1], kind or "class", text if kind == "dangerous" else ""))
        return out

    # -- the load loop, with a work budget -----------------------------------------------
    def load(self) -> Any:
        # Read straight from the file, with no frame boundaries: as the C unpickler (the one
        # torch.load runs) does, see pickle_ops.load_frame.
        self.read, self.readinto, self.readline = self._source.read, self._source.readinto, self._source.readline
        self.metastack, self.stack = [], []
        self.append = self.stack.append
        self.proto = 0
        try:
            if self._data is not None:
                return run_in_memory(self, self._data, self._handlers())
            return self.run_framed(0)
        except pickle._Stop as stop:  # type: ignore[attr-defined]  # private, absent from typeshed
            return stop.value

    def _handlers(self) -> dict[int, Callable[[SafeUnpickler], None]]:
        return self._dispatch

    def run_framed(self, count: int) -> Any:
        """The opcode loop reading the file itself (a stream, or what follows a FRAME: frames are
        read as the C unpickler reads them, see pickle_ops.load_frame), from the file's position,
        `count` opcodes having run."""
        dispatch, read = self._handlers(), self.read
        while True:
            key = read(1)
            if not key:
                raise EOFError
            op = dispatch.get(key[0])
            if op is None:
                raise pickle.UnpicklingError(f"unknown opcode {key!r}")
            op(self)
            count += 1
            if not count & 0xFFFF:
                self._check_budget(count)

    def cross_check_frames(self) -> None:
        """A framed pickle read whole: what the C unpickler resolves in the same bytes, and
        ckptkit's reading did not, is dangerous (pickle_frames says why)."""
        end = self._source.tell()
        self._source.seek(self._start)
        data = self._source.read(end - self._start)
        self._source.seek(end)
        for module, name in names_the_c_unpickler_resolves(data):
            if (module, name) in _compat_pickle.NAME_MAPPING:   # the Python 2 spellings, as find_class maps them
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            else:
                module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            if (module, name) not in self._refs:
                self._record((module, name), "dangerous",
                             f"{module}.{name} (torch.load's C unpickler reaches it through this pickle's "
                             "misaligned FRAMEs; a linear reading does not)")

    def _check_budget(self, count: int) -> None:
        if count > limits.MAX_OPCODES:
            raise limits.PickleLimitError(f"pickle runs more than {limits.MAX_OPCODES:,} opcodes (work limit)")
        if len(self.memo) > limits.MAX_MEMO:
            raise limits.PickleLimitError(f"pickle memo holds more than {limits.MAX_MEMO:,} entries (memo limit)")
        if len(self.metastack) > limits.MAX_MARK_DEPTH:
            raise limits.PickleLimitError(f"pickle opens more than {limits.MAX_MARK_DEPTH:,} MARKs at once "
                                          "(depth limit)")


install_ops(SafeUnpickler.dispatch)


def _noting_refused(code: int, handler: Callable[[SafeUnpickler], None]) -> Callable[[SafeUnpickler], None]:
    name = OPCODE_NAMES[code]

    def first_run(self: SafeUnpickler) -> None:
        self.torch_refuses.append(name)
        self._dispatch[code] = handler
        handler(self)
    return first_run


# typeshed types the table's functions as taking the C Unpickler; they take the _Unpickler.
_TABLE = cast("dict[int, Callable[[SafeUnpickler], None]]", SafeUnpickler.dispatch)
for _code, _handler in list(_TABLE.items()):
    if _code not in WEIGHTS_ONLY_OPCODES:
        _TABLE[_code] = _noting_refused(_code, _handler)


def safe_loads(data: bytes, persistent_load: Callable[[Any], Any] | None = None) -> UnpickleResult:
    """Unpickle `data` without resolving any global from it. Raises pickle/Value/... errors as-is,
    each carrying the verdicts seen before the stop in `PARTIAL_ATTR`."""
    return _load(SafeUnpickler(io.BytesIO(data), persistent_load, len(data), data))


def safe_loads_from(stream: io.BytesIO, persistent_load: Callable[[Any], Any] | None = None) -> UnpickleResult:
    """Unpickle one pickle from an in-memory stream (no read can allocate more than it holds),
    leaving it positioned just after the pickle's STOP."""
    return _load(SafeUnpickler(stream, persistent_load, len(stream.getbuffer()) - stream.tell()))


def safe_load_stream(file: limits.SeekableBinary,
                     persistent_load: Callable[[Any], Any] | None = None) -> UnpickleResult:
    """Unpickle one pickle from `file`, leaving the file positioned just after it."""
    bounded = limits.BoundedReader(file)
    return _load(SafeUnpickler(bounded, persistent_load, bounded.remaining()))


def _load(unpickler: SafeUnpickler) -> UnpickleResult:
    try:
        with _quiet_interpreter_reports(), _no_cyclic_collection():
            value = unpickler.load()
            if unpickler.saw_frame:
                unpickler.cross_check_frames()
            limits.check_tree(value, PickledObject)
    except BaseException as exc:
        if isinstance(exc, Exception | RecursionError | MemoryError):
            try:
                setattr(exc, PARTIAL_ATTR, unpickler.verdicts())
            except (AttributeError, TypeError):
                pass
        raise
    return UnpickleResult(value, unpickler.verdicts(), tuple(unpickler.torch_refuses))


@contextmanager
def _no_cyclic_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector while a pickle is decoded.

    Decoding allocates one container after another and frees almost nothing, so every automatic
    collection walks the growing tree again for no gain: on an 80,000-record data.pkl that was a
    third of the decode time. Whatever a hostile pickle leaves in cycles is collected as soon as
    the collector resumes (and the work limits bound what it can build meanwhile).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
