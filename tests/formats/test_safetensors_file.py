"""`.safetensors` files written by safetensors itself, read back by ckptkit's own header parser."""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ckptkit.core.errors import CkptkitError, CorruptCheckpointError
from ckptkit.formats import detect_format, open_checkpoint
from tests.tensor_trees import DTYPES, _base_tensor

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
SAFETENSORS_DTYPES = [d for d in DTYPES if d is not torch.complex128]   # safetensors has no C128 writer
tensors = st.builds(_base_tensor, st.sampled_from(SAFETENSORS_DTYPES),
                    st.lists(st.sampled_from([0, 1, 2, 3, 5]), max_size=3).map(tuple), st.integers(0, 2 ** 32))
metadata = st.none() | st.dictionaries(names.filter(lambda n: n != "__metadata__"), st.text(max_size=20), max_size=3)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(names.filter(lambda n: n != "__metadata__"), tensors, min_size=1, max_size=5), metadata)
def test_files_written_by_safetensors_read_back_with_same_names_dtypes_shapes_values_and_metadata(
        state: dict[str, torch.Tensor], meta: dict[str, str] | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(state, str(path), metadata=meta)
        ckpt = open_checkpoint(path)
        assert (ckpt.format, ckpt.family) == ("safetensors", "state-dict")
        assert sorted(ckpt.model) == sorted(state)
        assert ckpt.metadata == (meta or {})
        for name, original in state.items():
            read = ckpt.model[name]
            assert read.dtype.name == str(original.dtype).removeprefix("torch.")
            assert read.shape == tuple(original.shape) and read.fits_storage()
            value = read.to_torch()
            assert torch.equal(value.reshape(-1).view(torch.uint8), original.reshape(-1).view(torch.uint8))


def test_safetensors_content_is_detected_under_any_file_name(tmp_path: Path) -> None:
    path = tmp_path / "adapter_model.bin"
    save_file({"lora_A.weight": torch.zeros(4, 8)}, str(path), metadata={"format": "pt"})
    assert detect_format(path).name == "safetensors"
    ckpt = open_checkpoint(path)
    assert ckpt.model["lora_A.weight"].shape == (4, 8)
    assert ckpt.metadata == {"format": "pt"}


def _write(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_header_longer_than_the_file_is_reported_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(16)}, str(path))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptCheckpointError, match=r"safetensors header says \d+ bytes but the file has 32 after "
                                                     "the length: truncated"):
        open_checkpoint(path)


def test_tensor_data_cut_short_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(2), "b": torch.ones(16)}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'b' ends at byte \d+ but the file has \d+: truncated"):
        open_checkpoint(path)


def test_offsets_that_disagree_with_shape_and_dtype_are_reported(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.safetensors", {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}},
                  bytes(16))
    with pytest.raises(CorruptCheckpointError,
                       match=r"tensor 'w': float32\[2, 2\] needs 16 bytes but its offsets span 12"):
        open_checkpoint(path)


@pytest.mark.parametrize("header, problem", [
    ({"w": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}, "header entry is damaged"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}}, "header entry is damaged"),
    ({"w": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}, "F99. is not a safetensors dtype"),
    ({"w": "F32"}, "header entry is damaged"),
    ({"__metadata__": ["not", "a", "dict"]}, "__metadata__ is not a JSON object"),
])
def test_damaged_header_entries_are_named(tmp_path: Path, header: object, problem: str) -> None:
    path = _write(tmp_path / "m.safetensors", header, bytes(16))
    with pytest.raises(CorruptCheckpointError, match=problem):
        open_checkpoint(path)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 40) | st.text(max_size=5),
                           lambda kids: (st.lists(kids, max_size=3)
                                         | st.dictionaries(st.text(max_size=5), kids, max_size=3)),
                           max_leaves=8)
entries = st.fixed_dictionaries({}, optional={"dtype": st.sampled_from(["F32", "BF16", "I8", "X"]) | json_values,
                                              "shape": st.lists(st.integers(-2, 4), max_size=3) | json_values,
                                              "data_offsets": st.lists(st.integers(-4, 40), max_size=3) | json_values})


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), entries | json_values, max_size=3))
def test_any_json_header_gives_a_reading_or_one_ckptkit_error(header: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "m.safetensors", header, bytes(32))
        try:
            ckpt = open_checkpoint(path)
        except CkptkitError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        else:
            for _, tensor in ckpt.tensors():
                assert tensor.fits_storage() and all(d >= 0 for d in tensor.shape)


# Headers safetensors' own reader (Metadata::validate) refuses, and some it accepts. ckptkit
# called the refused ones clean, while `safetensors.torch.load_file` (and so from_pretrained)
# stops on them. Each verdict is held to load_file itself.
F32 = "F32"
LAYOUTS: dict[str, tuple[dict[str, object], int]] = {
    "contiguous": ({"w": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]},
                    "v": {"dtype": F32, "shape": [1], "data_offsets": [8, 12]}}, 12),
    "contiguous, header not in offset order": ({"v": {"dtype": F32, "shape": [2], "data_offsets": [8, 16]},
                                               "w": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]}}, 16),
    "zero-size tensor at the end": ({"w": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]},
                                     "e": {"dtype": F32, "shape": [0], "data_offsets": [8, 8]}}, 8),
    "no tensors, no data": ({}, 0),
    "gap": ({"w": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]},
             "v": {"dtype": F32, "shape": [1], "data_offsets": [12, 16]}}, 16),
    "overlap": ({"w": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]},
                 "v": {"dtype": F32, "shape": [2], "data_offsets": [4, 12]}}, 12),
    "trailing bytes": ({"w": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]}}, 12),
    "zero-size tensor inside another": ({"w": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]},
                                         "e": {"dtype": F32, "shape": [0], "data_offsets": [4, 4]}}, 8),
    "data not from byte 0": ({"w": {"dtype": F32, "shape": [2], "data_offsets": [4, 12]}}, 12),
    "integer metadata": ({"__metadata__": {"format": "pt", "epoch": 3},
                          "w": {"dtype": F32, "shape": [2], "data_offsets": [0, 8]}}, 8),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_a_header_is_refused_exactly_when_safetensors_refuses_it(tmp_path: Path, case: str) -> None:
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from ckptkit.cli import main

    header, data_len = LAYOUTS[case]
    path = _write(tmp_path / "m.safetensors", header, bytes(data_len))
    try:
        load_file(path)
        refused = False
    except Exception:
        refused = True
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert (result.exit_code == 2) == refused, result.output
    assert refused == (case in ("gap", "overlap", "trailing bytes", "zero-size tensor inside another",
                                "data not from byte 0", "integer metadata"))
    if refused:
        assert "safetensors refuses" in result.output and len(result.output.strip().splitlines()) == 1
        assert f"ckptkit salvage {path} {tmp_path / 'm.fixed.safetensors'}" in result.output
