"""A plain pickle file (no torch container, protocols 0-5) and a NumPy `.npy` array: read with
the restricted unpickler, no tensors."""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Checkpoint
from ckptkit.formats.base import checkpoint_from_tree, unpickle_or_raise
from ckptkit.formats.pickle_members import NPY_MAGIC, looks_like_pickle, read_npy
from ckptkit.formats.torch_legacy import MAGIC_PREFIX
from ckptkit.storage.safe_pickle import safe_loads


class PickleFormat:
    name = "pickle"
    description = "plain Python pickle (protocol 0-5), e.g. a .pkl of training state"

    def sniff(self, path: Path, head: bytes) -> bool:
        return not head.startswith(MAGIC_PREFIX) and looks_like_pickle(head)

    def read(self, path: Path) -> Checkpoint:
        result = unpickle_or_raise(path, "pickle", lambda: safe_loads(path.read_bytes()))
        return checkpoint_from_tree(path, self.name, result.value, result.globals)


class NumpyFormat:
    name = "npy"
    description = "NumPy .npy array (object arrays hold a pickle that numpy.load(allow_pickle=True) runs)"

    def sniff(self, path: Path, head: bytes) -> bool:
        return head.startswith(NPY_MAGIC)

    def read(self, path: Path) -> Checkpoint:
        with open(path, "rb") as f:
            value, globals_ = read_npy(path, f, "array")
        return checkpoint_from_tree(path, self.name, {"array": value}, globals_)
