"""What `pickle.load` would run for each call a pickle makes, decided without importing anything.

A pickle runs code only by calling things: REDUCE (`f(*args)`), NEWOBJ/NEWOBJ_EX
(`cls.__new__(cls, *args)`), INST/OBJ (`cls(*args)`) and BUILD on an object whose
`__setstate__` is not the plain update of its `__dict__`. Every such call gets one of three
verdicts:

- "known": a name ckptkit decodes itself (`pickle_known.KNOWN`); nothing of the file runs;
- "class": a class rebuilt from plain data, the way a training script's own config object
  (a dataclass, `argparse.Namespace`, HF `TrainingArguments`) is pickled. Loading it for real
  imports its module and runs that class's own constructor, so it is worth a warning, no more;
- "dangerous": anything else: a function (`pip.main`, `venv.create`, `importlib.import_module`,
  `torch.serialization.load`), a method (`bdb.Bdb.run`, `pathlib.Path.write_text`), a standard-library
  class outside the few a checkpoint holds (`functools.partial`, `operator.attrgetter`), a name that
  reaches a dangerous module through a library (`transformers.training_args.os.system`), a class
  given code instead of data (a global or a refused call among its arguments), and any call of
  something a previous call returned. This is an allow-list: a name is not dangerous because it
  looks bad, it is safe only because ckptkit knows what it does.
"""
from __future__ import annotations

import pickle
import pickletools
import sys
from typing import Any

from ckptkit.core.dtypes import BY_NAME, BY_STORAGE_CLASS
from ckptkit.storage.pickle_values import PickledObject

# Module roots whose globals can run arbitrary code or touch the system (also when only referenced).
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "runpy", "importlib", "shutil", "socket", "pty",
    "ctypes", "pickle", "_pickle", "marshal", "code", "codeop", "webbrowser", "commands",
    "platform", "multiprocessing", "signal", "asyncio", "http", "urllib", "requests", "io",
    "_io", "operator", "functools", "types", "inspect", "pdb", "timeit", "tempfile", "glob",
    "pathlib", "zipimport", "threading", "_thread", "ftplib", "smtplib", "telnetlib", "pip",
    "setuptools", "pkg_resources", "venv", "ensurepip", "bdb", "pydoc", "pkgutil", "cProfile",
    "profile", "trace", "doctest", "idlelib", "builtins", "__builtin__", "_posixsubprocess",
    # libraries whose classes open connections or processes, and pickles of code
    "aiohttp", "httpx", "urllib3", "paramiko", "pexpect", "fabric", "dill", "cloudpickle",
})
_DANGEROUS_NAMES = frozenset({"system", "popen", "eval", "exec", "execfile", "compile", "__import__",
                              "getattr", "apply", "open", "load", "loads", "run", "call"})
# Standard-library classes a training script's config legitimately holds, rebuilt from data.
PLAIN_STDLIB_CLASSES = frozenset({
    ("argparse", "Namespace"), ("collections", "defaultdict"), ("collections", "Counter"),
    ("collections", "deque"), ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("decimal", "Decimal"), ("fractions", "Fraction"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"), ("pathlib", "Path"), ("types", "SimpleNamespace"), ("uuid", "UUID"),
    ("enum", "Enum"), ("re", "_compile"),
})
_NOT_STDLIB = frozenset({"__main__"})


def call_verdict(module: str, name: str) -> str:
    """"class" or "dangerous": what calling the global `module.name` at load would mean."""
    parts = module.split(".")
    if any(p in DANGEROUS_MODULES for p in parts[1:]):
        return "dangerous"   # a dangerous module reached through a library: transformers.x.os.system
    if (module, name) in PLAIN_STDLIB_CLASSES or _is_library_rebuilder(module, name):
        return "class"
    root = parts[0]
    if root in DANGEROUS_MODULES or (root in sys.stdlib_module_names and root not in _NOT_STDLIB):
        return "dangerous"
    if "." in name or not name.lstrip("_")[:1].isupper():
        return "dangerous"   # a method of a class, or a function: it runs with the pickle's arguments
    return "class"


def reference_verdict(module: str, name: str) -> str:
    """"class" or "dangerous" for a global the pickle names but never calls (a value, e.g. an
    activation function in a config): dangerous only when the name itself is a system or code hook,
    since some object's own __setstate__ could call it."""
    root = module.split(".", 1)[0]
    if root in DANGEROUS_MODULES or any(p in DANGEROUS_MODULES for p in module.split(".")[1:]):
        return "dangerous" if (module, name) not in PLAIN_STDLIB_CLASSES else "class"
    return "dangerous" if name.rsplit(".", 1)[-1] in _DANGEROUS_NAMES else "class"


def _is_library_rebuilder(module: str, name: str) -> bool:
    """torch's and numpy's own reconstruction helpers (torch.load(weights_only=True) runs them too)."""
    if module in ("torch._utils", "torch._tensor") and name.startswith("_rebuild_"):
        return True
    return (module, name) in {("torch.serialization", "_get_layout"),
                              ("numpy.random._pickle", "__randomstate_ctor"),
                              ("numpy.random._pickle", "__bit_generator_ctor"),
                              ("numpy.random._pickle", "__generator_ctor")}


# torch's quantization schemes, which a quantized tensor's pickle names.
_TORCH_QSCHEMES = frozenset({"per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
                             "per_channel_symmetric", "per_channel_affine_float_qparams"})


# The other names torch.load(weights_only=True) resolves by default, of those ckptkit decodes or
# shows (torch 2.13's _get_allowed_globals): of the builtins only set, bytearray and complex.
_WEIGHTS_ONLY_NAMES = frozenset({
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"), ("collections", "Counter"), ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("torch", "Size"), ("torch", "Tensor"), ("torch", "device"), ("torch.nn.parameter", "Parameter"),
    ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage")})


# The opcodes torch's weights-only unpickler reads (torch 2.13's `_weights_only_unpickler.Unpickler.load`;
# tests hold this to it): protocol 2 as torch.save writes it. It stops at any other ('Unsupported
# operand N'): FRAME, MEMOIZE and SHORT_BINUNICODE of protocol 4-5, SHORT_BINBYTES and BINBYTES of
# a bytes value in protocol 3, the text opcodes of protocols 0-1, POP_MARK of a recursive tuple.
WEIGHTS_ONLY_OPCODES = frozenset(op[0] for op in (
    pickle.GLOBAL, pickle.NEWOBJ, pickle.REDUCE, pickle.BUILD, pickle.APPEND, pickle.APPENDS, pickle.SETITEM,
    pickle.SETITEMS, pickle.MARK, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.NONE,
    pickle.NEWFALSE, pickle.NEWTRUE, pickle.EMPTY_TUPLE, pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_SET,
    pickle.BININT, pickle.BININT1, pickle.BININT2, pickle.BINFLOAT, pickle.BINUNICODE, pickle.SHORT_BINSTRING,
    pickle.BINPERSID, pickle.BINGET, pickle.LONG_BINGET, pickle.BINPUT, pickle.LONG_BINPUT, pickle.LONG1,
    pickle.PROTO, pickle.STOP))
# Each opcode by its byte, as pickletools names it (the names findings give, FRAME, MEMOIZE...).
OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}


# What a DTensor's pickle names (FSDP2, tensor parallel). torch.distributed.tensor and
# device_mesh add them to torch's allowed globals when imported (as any script that made DTensors
# has): a fresh torch.load(path) refuses them ("torch.distributed.tensor must be imported"), which
# `compat.dtensor` says instead of a pickled-class warning per class.
DTENSOR_NAMES = frozenset({
    ("torch.distributed.tensor", "DTensor"), ("torch.distributed.device_mesh", "DeviceMesh"),
    ("torch.distributed.tensor._dtensor_spec", "DTensorSpec"), ("torch.distributed.tensor._dtensor_spec", "TensorMeta"),
    ("torch.distributed.tensor._dtensor_spec", "ShardOrderEntry"),
    ("torch.distributed.tensor.placement_types", "Shard"), ("torch.distributed.tensor.placement_types", "Replicate"),
    ("torch.distributed.tensor.placement_types", "Partial"),
    ("torch.distributed.tensor.placement_types", "_StridedShard"),
    ("torch.distributed._mesh_layout", "_MeshLayout"), ("torch.distributed._mesh_layout", "_FlatLayout")})


def weights_only_accepts(module: str, name: str) -> bool:
    """Whether torch.load(weights_only=True) resolves the global `module.name` itself: torch's own
    tensor rebuilders (meta, sparse, quantized, nested tensors; all but XLA's), the layout lookup
    sparse tensors use, the quantization schemes, dtypes and storage classes, and a few containers
    (torch 2.13's `_get_allowed_globals`; tests hold this to it for every name ckptkit knows).
    Such a name is no pickled class, though ckptkit shows its tensor as one. It refuses the
    other builtins a pickle may name (frozenset, range, slice...), which ckptkit decodes as data.
    A DTensor's names are accepted once torch.distributed.tensor is imported (`DTENSOR_NAMES`)."""
    if module == "torch._utils":
        return name.startswith("_rebuild_") and name != "_rebuild_xla_tensor"
    if module == "torch" and (name in _TORCH_QSCHEMES or name in BY_NAME or
                              (name in BY_STORAGE_CLASS and name not in ("TypedStorage", "UntypedStorage"))):
        return True
    return (module, name) in _WEIGHTS_ONLY_NAMES or (module, name) in DTENSOR_NAMES


def is_plain(value: Any, plain_callables: frozenset[Any], depth: int = 0) -> bool:
    """True when `value` is data: no class, function or refused call anywhere inside it (checked
    to a bounded depth and breadth; deeper parts were built by calls judged on their own)."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, bytearray)):
        return True
    if isinstance(value, PickledObject):
        return not value.is_dangerous
    if isinstance(value, type) and issubclass(value, PickledObject):
        # a name passed as a value (a memory-format constant, an enum class) runs nothing by being
        # passed; a system or code hook passed to a constructor might be called by it
        return value._global.kind != "dangerous" or value in plain_callables
    if isinstance(value, type) or callable(value):
        return value in plain_callables
    if depth >= 6:
        return True
    if isinstance(value, dict):
        items = list(value.items())[:256]
        return all(is_plain(k, plain_callables, depth + 1) and is_plain(v, plain_callables, depth + 1)
                   for k, v in items)
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(is_plain(v, plain_callables, depth + 1) for v in list(value)[:256])
    return True   # TensorRef, StorageRef, dtype and numpy records: data ckptkit built itself


def render_call(target: str, args: Any, kwargs: Any = None) -> str:
    """`pip.main(['install', 'x'])`: the call as pickle.load would make it, shortened to one line."""
    parts = [short_repr(a) for a in (args if isinstance(args, (tuple, list)) else (args,))]
    if isinstance(kwargs, dict):
        parts += [f"{k}={short_repr(v)}" for k, v in list(kwargs.items())[:8]]
    text = f"{target}({', '.join(parts)})"
    return text if len(text) <= 240 else text[:237] + "..."


def short_repr(value: Any, depth: int = 0) -> str:
    if isinstance(value, type) and issubclass(value, PickledObject):
        return value._global.qualified_name
    if isinstance(value, PickledObject):
        return value.__dict__.get("blocked") or f"<{value.qualified_name} object>"
    if depth > 2:
        return "..."
    if isinstance(value, (list, tuple)):
        inner = ", ".join(short_repr(v, depth + 1) for v in value[:6]) + (", ..." if len(value) > 6 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        inner = ", ".join(f"{short_repr(k, depth + 1)}: {short_repr(v, depth + 1)}" for k, v in list(value.items())[:6])
        return "{" + inner + (", ..." if len(value) > 6 else "") + "}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
