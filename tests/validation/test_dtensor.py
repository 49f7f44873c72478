"""DTensors saved with torch.save (FSDP2: `torch.save(model.state_dict())` on a rank), from
`tests/fixtures/real/dtensor/` (scripts/make_real_fixtures.py). ckptkit found "no model" (error
completeness.missing-model) and warned of 8 pickled classes that torch itself allows once
torch.distributed.tensor is imported; it never said that a rank's file holds only its shards.
Each verdict is held to torch.load.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.tensor  # noqa: F401  (registers DTensor's classes with torch.load, as a training script has)

from ckptkit.formats import open_checkpoint
from ckptkit.storage.pickle_known import DTENSOR
from ckptkit.storage.pickle_verdict import DTENSOR_NAMES
from tests.validation.helpers import codes, only, run

FIXTURE = Path(__file__).parents[1] / "fixtures" / "real" / "dtensor"
FILES = ["rank0.pt", "rank1.pt", "one_rank.pt"]


def tensors(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in tensors(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree} if isinstance(tree, torch.Tensor) else {}


@pytest.mark.parametrize("name", FILES)
def test_dtensors_read_as_torch_loads_them(name: str) -> None:
    loaded = tensors(torch.load(FIXTURE / name, weights_only=True))
    ckpt = open_checkpoint(FIXTURE / name)
    ours = dict(ckpt.tensors())
    assert set(ours) == set(loaded)
    for key, tensor in loaded.items():
        if isinstance(tensor, torch.distributed.tensor.DTensor):
            assert (ours[key].subclass, ours[key].shape, ours[key].global_shape) == (
                DTENSOR, tuple(tensor.to_local().shape), tuple(tensor.shape)), key
            assert torch.equal(ours[key].to_torch(), tensor.to_local())
        else:
            assert ours[key].subclass is None and ours[key].shape == tuple(tensor.shape)
    assert set(ckpt.model) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.parametrize("name", ["rank0.pt", "rank1.pt"])
def test_a_ranks_file_is_said_to_hold_its_shards_only(name: str) -> None:
    report = run(FIXTURE / name)
    finding = only(report, "compat.dtensor-shards")
    assert finding.severity.value == "warning" and finding.message.startswith("12 of 12 DTensors hold only")
    # the 3-row weight: rank 0 holds 2 rows, rank 1 one
    shape = torch.load(FIXTURE / name, weights_only=True)["model"]["2.weight"].to_local().shape
    expected = (2, 8) if name == "rank0.pt" else (1, 8)
    assert open_checkpoint(FIXTURE / name).model["2.weight"].shape == tuple(shape) == expected
    assert not {c for c in codes(report) if c.startswith("security.")}
    assert "completeness.missing-model" not in codes(report)


def test_one_ranks_dtensors_are_whole_and_only_need_the_import() -> None:
    report = run(FIXTURE / "one_rank.pt")
    assert "compat.dtensor-shards" not in codes(report)
    assert only(report, "compat.dtensor").severity.value == "info"
    assert not {c for c in codes(report) if c.startswith(("security.", "completeness.missing-model"))}


def test_what_the_info_says_is_what_torch_load_does() -> None:
    path = FIXTURE / "one_rank.pt"
    fresh = "import torch, sys; torch.load(sys.argv[1], weights_only=True)"
    done = subprocess.run([sys.executable, "-c", fresh, str(path)], capture_output=True, text=True)
    assert done.returncode != 0 and "torch.distributed.tensor`` must be imported to load DTensors" in done.stderr
    imported = "import torch, sys, torch.distributed.tensor; torch.load(sys.argv[1], weights_only=True)"
    assert subprocess.run([sys.executable, "-c", imported, str(path)], capture_output=True).returncode == 0


def test_the_dtensor_names_are_those_torch_registers() -> None:
    registered = {(c.__module__, c.__name__) for c in torch.serialization.get_safe_globals()
                  if isinstance(c, type) and c.__module__.startswith("torch.distributed")}
    registered.discard(("torch.distributed._serialization", "_Entry"))   # torch's own DCP-like format
    assert registered == DTENSOR_NAMES


def test_convert_refuses_a_ranks_shards_and_writes_whole_dtensors_as_plain_tensors(tmp_path: Path) -> None:
    shards = subprocess.run([sys.executable, "-m", "ckptkit", "convert", str(FIXTURE / "rank1.pt"),
                             str(tmp_path / "r1.safetensors")], capture_output=True, text=True)
    assert shards.returncode == 2 and shards.stderr.count("\n") == 1
    assert "holds one rank's shards of DTensors (e.g. 'model.0.weight': [4, 4] of [8, 4])" in shards.stderr
    assert not (tmp_path / "r1.safetensors").exists()
    whole = subprocess.run([sys.executable, "-m", "ckptkit", "convert", str(FIXTURE / "one_rank.pt"),
                            str(tmp_path / "one.pt")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    plain = "import torch, sys; sd = torch.load(sys.argv[1])['model']; print(type(sd['2.weight']).__name__)"
    done = subprocess.run([sys.executable, "-c", plain, str(tmp_path / "one.pt")], capture_output=True, text=True)
    assert done.stdout.strip() == "Tensor"      # a fresh, plain torch.load reads it
    original = torch.load(FIXTURE / "one_rank.pt", weights_only=True)["model"]
    converted = torch.load(tmp_path / "one.pt", weights_only=True)["model"]
    assert all(torch.equal(converted[k], v.to_local()) for k, v in original.items())


def test_inspect_says_a_ranks_parameters_are_part_of_the_whole() -> None:
    whole = sum(t.numel() for t in torch.load(FIXTURE / "rank0.pt", weights_only=True)["model"].values())
    done = subprocess.run([sys.executable, "-m", "ckptkit", "inspect", str(FIXTURE / "rank0.pt")],
                          capture_output=True, text=True)
    assert whole == 67
    assert f"one rank's shards of DTensors (FSDP2 or tensor parallel): 38 of the whole tensors' {whole} parameters" \
        in done.stdout
    one = subprocess.run([sys.executable, "-m", "ckptkit", "inspect", "--json", str(FIXTURE / "one_rank.pt")],
                         capture_output=True, text=True)
    assert '"global_parameters": null' in one.stdout
