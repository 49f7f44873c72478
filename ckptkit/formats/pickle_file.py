"""A plain pickle file (no torch container, protocols 0-5) and a NumPy `.npy` array: read with
the restricted unpickler, no tensors."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from ckptkit.core.checkpoint import Checkpoint
from ckptkit.formats.base import checkpoint_from_tree, unpickle_or_raise
from ckptkit.formats.pickle_members import NPY_MAGIC, looks_like_pickle, read_npy
from ckptkit.formats.torch_legacy import is_legacy_head
from ckptkit.storage.pickle_values import GlobalRef
from ckptkit.storage.safe_pickle import PARTIAL_ATTR, safe_loads_from

# Pickles examined after the first: a stream of pickles is how some loaders save several objects.
MAX_TRAILING_PICKLES = 16


class PickleFormat:
    name = "pickle"
    description = "plain Python pickle (protocol 0-5), e.g. a .pkl of training state"

    def sniff(self, path: Path, head: bytes) -> bool:
        return not is_legacy_head(head) and looks_like_pickle(head)

    def read(self, path: Path) -> Checkpoint:
        stream = io.BytesIO(path.read_bytes())
        result = unpickle_or_raise(path, "pickle", lambda: safe_loads_from(stream))
        return checkpoint_from_tree(path, self.name, result.value, result.globals + trailing_calls(stream))


def trailing_calls(stream: io.BytesIO) -> list[GlobalRef]:
    """The dangerous calls of pickles that follow the first one: one pickle.load stops at the
    first STOP, but a loader that reads on (pickle.load in a loop) runs the next, so a payload
    hidden behind a harmless first pickle is named too. Damage there ends the search quietly:
    the file's content is the first pickle, read whole."""
    found: list[GlobalRef] = []
    for number in range(2, MAX_TRAILING_PICKLES + 2):
        start = stream.tell()
        if not looks_like_pickle(stream.read(64)):
            break
        stream.seek(start)
        try:
            globals_ = safe_loads_from(stream).globals
        except Exception as exc:   # a damaged trailing pickle: what it called before the damage
            globals_ = getattr(exc, PARTIAL_ATTR, None) or []
            stream.seek(0, io.SEEK_END)
        where = f"pickle #{number} of the file, which a loader that reads on runs"
        found += [dataclasses.replace(g, call=f"{g.call or g.qualified_name} (in {where})")
                  for g in globals_ if g.kind == "dangerous"]
    return found


class NumpyFormat:
    name = "npy"
    description = "NumPy .npy array (object arrays hold a pickle that numpy.load(allow_pickle=True) runs)"

    def sniff(self, path: Path, head: bytes) -> bool:
        return head.startswith(NPY_MAGIC)

    def read(self, path: Path) -> Checkpoint:
        with open(path, "rb") as f:
            value, globals_ = read_npy(path, f, "array")
        return checkpoint_from_tree(path, self.name, {"array": value}, globals_)
