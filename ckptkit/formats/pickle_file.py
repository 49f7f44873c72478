"""A plain pickle file (no torch container): read with the restricted unpickler, no tensors."""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Checkpoint
from ckptkit.formats.base import checkpoint_from_tree, unpickle_or_raise
from ckptkit.formats.torch_legacy import MAGIC_PREFIX
from ckptkit.storage.safe_pickle import safe_loads


class PickleFormat:
    name = "pickle"
    description = "plain Python pickle (protocol 2-5), e.g. a .pkl of training state"

    def sniff(self, path: Path, head: bytes) -> bool:
        return len(head) > 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not head.startswith(MAGIC_PREFIX)

    def read(self, path: Path) -> Checkpoint:
        result = unpickle_or_raise(path, "pickle", lambda: safe_loads(path.read_bytes()))
        return checkpoint_from_tree(path, self.name, result.value, result.globals)
