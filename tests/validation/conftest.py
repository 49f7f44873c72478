"""Fixtures for the validation tests: tiny checkpoints written with torch.save in a second."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from scripts.make_seed_samples import write_samples
from tests.validation.helpers import trained_state

_serial = itertools.count()


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One checkpoint per seed layout (scripts/make_seed_samples.py)."""
    return write_samples(tmp_path_factory.mktemp("seed-samples"))


@pytest.fixture
def state() -> dict[str, Any]:
    return trained_state()


@pytest.fixture
def save(tmp_path: Path) -> Callable[..., Path]:
    """save(obj, name) -> path: torch.save into a fresh folder (a fresh path per call: maps are cached)."""
    def _save(obj: Any, name: str = "ckpt.pt", **kwargs: Any) -> Path:
        folder = tmp_path / f"c{next(_serial)}"
        folder.mkdir()
        path = folder / name
        torch.save(obj, path, **kwargs)
        return path
    return _save
