from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scripts.make_seed_samples import write_samples

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seed-samples")
    write_samples(out)
    return out


@pytest.fixture
def samples(sample_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of every seed sample, for a test to change."""
    shutil.copytree(sample_dir, tmp_path / "s")
    return tmp_path / "s"


@pytest.fixture
def training_state(samples: Path) -> Path:
    return samples / "enstack" / "checkpoints" / "codebert" / "last_checkpoint" / "training_state.pth"
