"""numpy values in a pickle: plain torch.load refuses the file since PyTorch 2.6, so `validate` says so.

Each verdict is checked against torch itself: the finding is there exactly when
`torch.load(weights_only=True)` (torch.load's default since 2.6) refuses the file.
"""
from __future__ import annotations

import collections
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.core.checkpoint import Severity
from tests.validation.helpers import codes, loads_weights_only, only, run

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"

VALUES: dict[str, Any] = {
    "python float": 0.5,
    "numpy float64 metric": np.float64(0.91),
    "numpy int64 epoch": np.int64(3),
    "numpy array": np.arange(3),
    "numpy RNG state": np.random.RandomState(0).get_state(),
    "OrderedDict": collections.OrderedDict(a=1),
    "tensor": torch.ones(2),
}


@pytest.mark.parametrize("what", list(VALUES))
def test_the_finding_is_there_exactly_when_torch_load_refuses_the_file(save: Any, what: str) -> None:
    path = save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 1, "value": VALUES[what]})
    found = "compat.numpy-values" in codes(run(path))
    assert found == (not loads_weights_only(path)) == ("numpy" in what)


def test_the_finding_names_the_numpy_globals_and_the_way_out(save: Any) -> None:
    path = save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 1, "best_val_f1": np.float64(0.9)})
    finding = only(run(path), "compat.numpy-values")
    assert finding.severity is Severity.WARNING
    assert finding.message.startswith("the pickle holds numpy values (numpy.")
    assert "multiarray.scalar" in finding.message and "numpy.dtype" in finding.message
    assert "since PyTorch 2.6, torch.load(path) refuses it" in finding.message
    assert finding.fix.startswith(f"ckptkit convert {path} {path.parent / 'ckpt.plain.pt'} (the numpy numbers")


def test_the_convert_it_suggests_for_numpy_numbers_gives_a_file_torch_load_accepts(save: Any) -> None:
    path = save({"model_state_dict": {"w": torch.ones(2)}, "epoch": np.int64(3), "best_val_f1": np.float64(0.9)})
    command = only(run(path), "compat.numpy-values").fix.split(" (")[0].split()
    assert command[:2] == ["ckptkit", "convert"]
    assert CliRunner().invoke(main, command[1:]).exit_code == 0
    loaded = torch.load(command[3], weights_only=True)
    assert (loaded["epoch"], loaded["best_val_f1"]) == (3, 0.9) and type(loaded["epoch"]) is int
    assert torch.equal(loaded["model_state_dict"]["w"], torch.ones(2))
    assert "compat.numpy-values" not in codes(run(Path(command[3])))


def test_numpy_arrays_are_pointed_to_safe_globals_not_to_convert(save: Any) -> None:
    path = save({"model_state_dict": {"w": torch.ones(2)}, "rng": np.random.RandomState(0).get_state()})
    assert only(run(path), "compat.numpy-values").fix.startswith("load it inside torch.serialization.safe_globals")


def test_enstack_training_state_with_a_numpy_f1_is_refused_by_its_own_torch_load() -> None:
    """EnStack's load_checkpoint calls torch.load(state_path, map_location=...) with torch's default;
    its best_val_f1 comes from scikit-learn as numpy.float64 (the fixture's, written that way)."""
    folder = REAL / "save_pretrained_training_state" / "last_checkpoint"
    assert not loads_weights_only(folder / "training_state.pth")
    finding = only(run(folder), "compat.numpy-values")
    assert finding.where.endswith("training_state.pth")


@pytest.mark.parametrize("folder", ["hf_full/checkpoint-4", "hf_lora/checkpoint-8", "accelerate"])
def test_rng_files_their_library_reads_with_numpy_allowed_are_no_finding(folder: str) -> None:
    """transformers reads rng_state.pth inside its safe_globals(), accelerate its random_states_*.pkl
    through accelerate.utils.load, both allowing numpy: the numpy RNG state inside is fine."""
    path = REAL / folder
    rng = sorted(path.glob("rng_state*.pth")) + sorted(path.glob("random_states_*.pkl"))
    assert rng and all(not loads_weights_only(p) for p in rng)        # plain torch.load would refuse them
    assert "compat.numpy-values" not in codes(run(path))


def test_a_checkpoint_in_memory_holding_numpy_is_refused_by_torch_too() -> None:
    """The rule's premise, on this torch: no numpy name is allowed by the weights-only unpickler."""
    buffer = io.BytesIO()
    torch.save({"v": np.float64(1.0)}, buffer)
    buffer.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(buffer, weights_only=True)


def test_training_args_bin_which_nothing_reads_back_is_no_finding(tmp_path: Path) -> None:
    """HF Trainer never loads training_args.bin on resume: numpy inside it stops nothing."""
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(REAL / "hf_full" / "checkpoint-4", folder)
    torch.save({"seed": np.int64(42)}, folder / "training_args.bin")
    assert "compat.numpy-values" not in codes(run(folder))
    torch.save({"seed": np.int64(42)}, folder / "scheduler.pt")        # the Trainer loads this one
    assert only(run(folder), "compat.numpy-values").where.endswith("scheduler.pt")
