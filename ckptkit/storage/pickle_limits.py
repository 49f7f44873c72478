"""Limits that keep the work of reading a hostile pickle bounded, and the checks that apply them.

A pickle of N bytes can ask for far more than N units of work or memory: a length field that
claims 2**60 bytes, a memo that shares one list in two places 64 times over (a tree of 2**64
paths for anything that walks it), a tuple nested a million deep (one byte per level), dict keys
that all hash alike (quadratic insertion). Each limit below is far above what any checkpoint
needs and is reported as one line naming the limit (`PickleLimitError`).

The decoded tree is checked once, here (`check_tree`), right after unpickling: every later walker
(rendering, families, validation, diffs, run scans) then meets a tree no deeper than MAX_DEPTH
and no larger, counting shared parts once per path, than MAX_TREE_NODES, so none of them needs
limits of its own.
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAX_DEPTH = 100                 # nesting of containers and objects; checkpoints nest < 20 deep
MAX_TREE_NODES = 5_000_000      # containers met by a walk of the whole tree (shared parts per path)
MAX_OPCODES = 50_000_000        # pickle opcodes executed (an 80,000-tensor data.pkl runs ~2.5M)
MAX_MARK_DEPTH = 1_000          # open MARKs at once (each is a list; checkpoints need < 50)
MAX_MEMO = 10_000_000           # memo entries
MAX_KEY_COLLISIONS = 0.5        # share of a dict's/set's keys allowed to repeat another key's hash


class PickleLimitError(pickle.UnpicklingError):
    """A pickle asked for more work or memory than any checkpoint needs (hostile or damaged)."""


def check_keys(keys: Iterable[Any], what: str) -> None:
    """Refuse a batch of dict/set keys that hash alike (insertion would take quadratic time)."""
    keys = keys if isinstance(keys, (list, tuple)) else list(keys)
    if len(keys) < 64:
        return
    try:
        hashes = {hash(k) for k in keys}
    except TypeError:
        return   # unhashable keys: the insertion itself fails with a clear error
    if len(hashes) < len(keys) * (1 - MAX_KEY_COLLISIONS):
        raise PickleLimitError(f"{what} of {len(keys)} keys with only {len(hashes)} distinct hashes "
                               "(hash-collision limit: keys built to make loading quadratic)")


_CONTAINERS = (list, tuple, dict, set, frozenset)


def check_tree(root: Any, pickled_object: type) -> None:
    """Raise PickleLimitError when the tree nests deeper than MAX_DEPTH, refers to itself, or has
    more than MAX_TREE_NODES containers counted per path. Shared parts are measured once (a
    post-order walk memoised by id), so the check itself costs one visit per distinct container."""
    if not isinstance(root, (*_CONTAINERS, pickled_object)):
        return
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, list[Any] | None]] = [(root, None)]
    while stack:
        node, children = stack[-1]
        if children is None:
            key = id(node)
            if key in sizes:
                stack.pop()
                continue
            if key in on_path:
                raise PickleLimitError("pickle builds a container that contains itself "
                                       "(cycle: no checkpoint is built that way)")
            on_path.add(key)
            if len(on_path) > MAX_DEPTH:
                raise PickleLimitError(f"pickle nests deeper than the depth limit ({MAX_DEPTH} levels)")
            children = [c for c in _children(node, pickled_object) if isinstance(c, _CONTAINERS)
                        or isinstance(c, pickled_object)]
            stack[-1] = (node, children)
            stack.extend((c, None) for c in children)
            continue
        stack.pop()
        total = 1 + sum(sizes[id(c)] for c in children)
        if total > MAX_TREE_NODES:
            raise PickleLimitError(f"pickle's object tree has more than {MAX_TREE_NODES:,} containers when "
                                   "its shared parts are counted where they are used (tree-size limit)")
        sizes[id(node)] = total
        on_path.discard(id(node))


def _children(node: Any, pickled_object: type) -> Iterable[Any]:
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    if isinstance(node, pickled_object):
        d = node.__dict__
        return [d.get("args"), d.get("kwargs"), d.get("state"), d.get("items")]
    rest: Iterable[Any] = node   # a list, tuple, set or frozenset: check_tree walks only containers
    return rest


class SeekableBinary(Protocol):
    """What BoundedReader needs of the file it wraps (an open file, BytesIO, a zip member)."""

    def read(self, size: int = -1, /) -> bytes: ...
    def readinto(self, buffer: WriteableBuffer, /) -> int | None: ...
    def readline(self, size: int | None = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...


class BoundedReader(io.RawIOBase):
    """A file wrapper that refuses reads longer than what is left of the file, so that a damaged
    or hostile length field (BINBYTES8 of 2**60) fails at once instead of allocating first."""

    def __init__(self, file: SeekableBinary) -> None:
        self._file = file
        here = file.tell()
        file.seek(0, io.SEEK_END)
        self._end = file.tell()
        file.seek(here)

    def remaining(self) -> int:
        return self._end - self._file.tell()

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """(A framed pickle is read again whole for its cross-check: SafeUnpickler.cross_check_frames.)"""
        return self._file.seek(offset, whence)

    def _check(self, n: int) -> None:
        if n is not None and n > self._end - self._file.tell():
            raise PickleLimitError(f"pickle asks for {n:,} bytes but only {self._end - self._file.tell():,} "
                                   "are left in the file (length limit: a damaged or hostile length field)")

    def read(self, n: int = -1) -> bytes:
        if n is not None and n >= 0:
            self._check(n)
        return self._file.read(n)

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        return self._file.readinto(buffer)

    def readline(self, limit: int | None = -1) -> bytes:
        return self._file.readline(limit)

    def readable(self) -> bool:
        return True
