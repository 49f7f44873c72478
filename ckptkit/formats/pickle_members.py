"""Pickles wherever a checkpoint can hide them: protocol 0-5 heads, NumPy `.npy` object arrays,
and the pickle members of a zip that is not laid out like `torch.save` (picklescan's
`malicious1.zip`, a NumPy `.npz`).

`torch.load`, `numpy.load(allow_pickle=True)` and `pickle.load` would each unpickle these, so each
is read with the restricted unpickler and its calls judged like any other pickle's.
"""
from __future__ import annotations

import ast
import functools
import io
import pickletools
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ckptkit.core.errors import CorruptCheckpointError, NotACheckpointError
from ckptkit.formats.base import unpickle_or_raise, unverified_suffix
from ckptkit.formats.zip_directory import member_fits, read_member_as_torch_does
from ckptkit.storage.pickle_values import GlobalRef, NumpyArray
from ckptkit.storage.safe_pickle import PARTIAL_ATTR, safe_load_stream, safe_loads

NPY_MAGIC = b"\x93NUMPY"
MAX_ZIP_MEMBERS = 10_000
MAX_MEMBER_BYTES = 256 << 20
# Opcodes a protocol 0/1 pickle starts with (no PROTO header): a class, a mark, an empty
# container, or a scalar. Text that starts with one of these must also parse as opcodes.
_FIRST_OPCODES = frozenset("c ( } ] ) I L F S V N K J M G X U T B i".split())


_GLOBAL_LINE = re.compile(rb"c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")


def looks_like_pickle(head: bytes) -> bool:
    """True when `head` starts a pickle of any protocol: PROTO 2-5, protocol 0/1 opcodes that
    parse (at least two whole opcodes in the head, none unknown), or a protocol 0 GLOBAL: a
    `c<module>\n<name>\n` line pair that pickle.load resolves (importing the module) before it
    reads anything else, whatever follows."""
    if len(head) > 2 and head[0] == 0x80:
        return 2 <= head[1] <= 5
    if not head or chr(head[0]) not in _FIRST_OPCODES:
        return False
    count, first = 0, ""
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(head)):
            count += 1
            first = first or opcode.name
            if opcode.name == "STOP":
                return count >= 2
    except ValueError as exc:   # the head ends inside an opcode: fine if enough came before
        return (count >= 2 or (first == "GLOBAL" and _GLOBAL_LINE.match(head) is not None)) \
            and "unknown opcode" not in str(exc)
    except Exception:
        return False
    return count >= 2


def read_npy(path: Path, f: Any, what: str) -> tuple[Any, list[GlobalRef]]:
    """A `.npy` array: its header, and for an object array (dtype 'O') the pickle after it."""
    magic = f.read(8)
    if not magic.startswith(NPY_MAGIC) or len(magic) < 8:
        raise CorruptCheckpointError(path, f"{what}: not a NumPy .npy array (bad magic)")
    size_bytes = f.read(2 if magic[6] == 1 else 4)
    if len(size_bytes) not in (2, 4):
        raise CorruptCheckpointError(path, f"{what}: .npy header ends early")
    size = struct.unpack("<H" if len(size_bytes) == 2 else "<I", size_bytes)[0]
    if size > 1 << 16:
        raise CorruptCheckpointError(path, f"{what}: .npy header claims {size:,} bytes (header-length limit 65,536)")
    try:
        header = ast.literal_eval(f.read(size).decode("latin1"))
        descr, shape = header["descr"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        raise CorruptCheckpointError(path, f"{what}: .npy header is damaged ({type(exc).__name__})") from None
    if "O" not in str(descr):
        return NumpyArray(str(descr), shape), []
    # numpy.load(allow_pickle=True) unpickles what follows: the array's objects.
    result = unpickle_or_raise(path, f"{what} (object array pickle)", lambda: safe_load_stream(f))
    return result.value, result.globals


def read_zip_pickles(path: Path, zf: zipfile.ZipFile) -> tuple[dict[str, Any], list[GlobalRef]]:
    """Every member of a non-torch.save zip that holds a pickle (or a .npy array), decoded."""
    tree: dict[str, Any] = {}
    globals_: list[GlobalRef] = []
    infos = zf.infolist()
    archive_size = path.stat().st_size
    if len(infos) > MAX_ZIP_MEMBERS:
        raise CorruptCheckpointError(path, f"zip holds {len(infos):,} members (member-count limit {MAX_ZIP_MEMBERS:,})")
    for info in infos:
        if info.is_dir() or info.file_size == 0:
            continue
        if info.file_size > MAX_MEMBER_BYTES:
            continue   # tensor-sized payloads are not pickles anyone loads whole
        if not member_fits(info, archive_size):
            raise CorruptCheckpointError(path, f"zip member {info.filename}: its directory entry says "
                                         f"{info.compress_size:,} bytes, more than the archive's {archive_size:,}")
        try:
            data = zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
                zlib.error) as exc:
            raw = read_member_as_torch_does(zf.fp, info, MAX_MEMBER_BYTES)
            raise refused_member_error(path, f"zip member {info.filename}", exc, raw) from None
        what = f"zip member {info.filename}"
        if data.startswith(NPY_MAGIC):
            value, found = read_npy(path, io.BytesIO(data), what)
        elif looks_like_pickle(data[:64]):
            result = unpickle_or_raise(path, what, functools.partial(safe_loads, data, _stub_persistent))
            value, found = result.value, result.globals
        else:
            continue
        tree[info.filename] = value
        globals_.extend(found)
    if not tree:
        if any(i.filename.count("/") == 1 and i.filename.endswith("/archive_format") for i in infos):
            raise NotACheckpointError(path, "a torch.export program archive (torch.export.save, .pt2): a traced "
                                      "program with its weights, loaded with torch.export.load, not a torch.save "
                                      "checkpoint; ckptkit does not read it (its state dict: "
                                      "torch.export.load(path).state_dict)")
        raise NotACheckpointError(path, "a zip archive, but not a torch.save checkpoint (no <name>/data.pkl) "
                                  "and no pickle or .npy member")
    return tree, globals_


def refused_member_error(path: Path, what: str, exc: BaseException, raw: bytes | None) -> CorruptCheckpointError:
    """A zip member `zipfile` refuses (CRC-32 mismatch, encryption flag, a local name differing
    from the directory's) is damage to ckptkit, but PyTorch's reader loads it anyway: the pickle
    in `raw` (the member as PyTorch reads it) is examined, and the calls it would make are named."""
    seen: list[GlobalRef] = []
    if raw is not None and looks_like_pickle(raw[:64]):
        try:
            seen = safe_loads(raw, _stub_persistent).globals
        except Exception as inner:   # damaged too: what it called before the damage
            seen = getattr(inner, PARTIAL_ATTR, None) or []
    return CorruptCheckpointError(path, f"{what} is damaged: {str(exc)[:200]}{unverified_suffix(seen)}")


def _stub_persistent(pid: Any) -> Any:
    # A pickle outside a torch.save layout has no storage records to point at: keep the id inert.
    return ("persistent id", str(pid)[:80])
