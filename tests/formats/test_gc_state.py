"""Reading a checkpoint pauses the cyclic collector and puts it back as it was: enabled or not,
and objects the program froze itself (gc.freeze() before forking workers) stay frozen."""
from __future__ import annotations

import gc
from pathlib import Path

import torch

from ckptkit.formats import open_checkpoint


def test_reading_leaves_the_programs_frozen_objects_frozen(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    kept = [[i] for i in range(1000)]   # something of the program's own, tracked by the collector
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        open_checkpoint(path)
        assert gc.get_freeze_count() == frozen
        assert gc.isenabled()
    finally:
        gc.unfreeze()
    assert kept[999] == [999]


def test_reading_leaves_a_disabled_collector_disabled(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2)}, path)
    gc.disable()
    try:
        open_checkpoint(path)
        assert not gc.isenabled()
    finally:
        gc.enable()
