"""Fixtures shared across the test packages."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    """A one-process gloo group, as torchrun would give a single rank (sharded saves need one)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
