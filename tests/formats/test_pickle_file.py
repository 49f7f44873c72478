"""Plain pickle files (no torch container), read with the restricted unpickler."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptkit.core.errors import CorruptCheckpointError, UnsupportedFeatureError
from ckptkit.formats import detect_format, open_checkpoint


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickles_of_protocol_2_to_5_are_read_with_numpy_metrics_as_numbers(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "train_state.pkl"
    path.write_bytes(pickle.dumps({"global_step": 300, "epoch": 1, "best_val_loss": np.float64(0.2),
                                   "train_history": [0.9, 0.5]}, protocol=protocol))
    assert detect_format(path).name == "pickle"
    ckpt = open_checkpoint(path)
    assert (ckpt.format, ckpt.family) == ("pickle", "experiment")
    assert ckpt.metrics == {"best_val_loss": 0.2}
    assert ckpt.progress.global_step == 300


def test_a_pickle_cut_short_is_reported_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps({"epoch": 3, "history": list(range(100))}, protocol=4)[:-40])
    with pytest.raises(CorruptCheckpointError) as err:
        open_checkpoint(path)
    assert str(err.value).startswith(f"{path}: pickle is damaged: ")


def test_tensors_written_with_pickle_dump_are_named_as_unsupported_not_damaged(tmp_path: Path) -> None:
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"w": torch.ones(2)}, protocol=4))
    with pytest.raises(UnsupportedFeatureError, match="tensors written with pickle.dump instead of torch.save"):
        open_checkpoint(path)
