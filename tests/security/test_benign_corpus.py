"""Healthy training checkpoints stay clean: no `security.dangerous-global` for anything a training
script legitimately pickles (configs, namespaces, enums, paths, numpy values, RNG states), in any
protocol, and none for the repository's real fixtures."""
from __future__ import annotations

import argparse
import collections
import datetime
import enum
import pathlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptkit.core.errors import CkptkitError
from ckptkit.formats import open_checkpoint
from ckptkit.storage.safe_pickle import safe_loads

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class Strategy(enum.Enum):
    STEPS = "steps"


@dataclass
class ExperimentConfig:
    lr: float = 3e-4
    layers: int = 4
    betas: tuple[float, float] = (0.9, 0.95)
    tags: list[str] = field(default_factory=lambda: ["a"])
    strategy: Strategy = Strategy.STEPS
    out: pathlib.PurePosixPath = pathlib.PurePosixPath("/runs/x")


def benign_values() -> dict[str, object]:
    rng = np.random.RandomState(0)
    return {
        "dataclass config": {"config": ExperimentConfig()},
        "argparse namespace": {"args": argparse.Namespace(epochs=3, lr=0.5, name="run")},
        "enum and path": {"strategy": Strategy.STEPS, "out": pathlib.PurePosixPath("/x")},
        "defaultdict and counter": {"d": collections.defaultdict(list, {"a": [1]}), "c": collections.Counter("aab")},
        "datetime and timedelta": {"t": datetime.datetime(2026, 1, 2, 3, 4), "d": datetime.timedelta(seconds=5)},
        "numpy scalars and arrays": {"x": np.float64(0.5), "a": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "numpy legacy RNG state": {"np": rng.get_state()},
        "sets, bytes, complex": {"s": {1, 2}, "f": frozenset({3}), "b": b"\x00\x01", "ba": bytearray(b"x"),
                                 "c": complex(1, 2), "sl": slice(1, 5)},
        "ordered dict of floats": collections.OrderedDict((f"k{i}", float(i)) for i in range(2000)),
    }


CASES = [(name, proto) for name in benign_values() for proto in range(0, 6)]


@pytest.mark.parametrize(("name", "protocol"), CASES)
def test_benign_training_values_get_no_dangerous_verdict_in_any_protocol(name: str, protocol: int) -> None:
    result = safe_loads(pickle.dumps(benign_values()[name], protocol=protocol))
    assert result.dangerous == []


@pytest.mark.parametrize("use_zip", [True, False])
def test_a_torch_save_of_a_typical_training_dict_is_clean(tmp_path: Path, use_zip: bool) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 2,
                "config": ExperimentConfig(), "rng": torch.get_rng_state(), "np_rng": np.random.get_state()},
               path, _use_new_zipfile_serialization=use_zip)
    ckpt = open_checkpoint(path)
    assert [f.code for f in ckpt.findings if f.code == "security.dangerous-global"] == []
    assert {f.code for f in ckpt.findings if f.code.startswith("security.")} == {"security.pickled-class"}


def _fixture_paths() -> list[Path]:
    out = []
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file() and path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".distcp", ".metadata"):
            out.append(path)
    return out


def test_no_real_fixture_checkpoint_gets_a_dangerous_verdict() -> None:
    opened = 0
    for path in _fixture_paths():
        try:
            ckpt = open_checkpoint(path)
        except CkptkitError:
            continue   # DCP items and .metadata are read through their folder, below
        opened += 1
        assert [f.message for f in ckpt.findings if f.code == "security.dangerous-global"] == [], path
    for folder in sorted({p.parent for p in _fixture_paths()}):
        try:
            ckpt = open_checkpoint(folder)
        except CkptkitError:
            continue
        opened += 1
        assert [f.message for f in ckpt.findings if f.code == "security.dangerous-global"] == [], folder
    assert opened >= 20
