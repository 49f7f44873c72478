"""`--deep`: CRCs, NaN/Inf, negative second moments, impossible values; streamed."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from ckptkit.core.checkpoint import Severity
from tests.validation.helpers import codes, flip_bit, only, run, zip_member_range


def test_a_flipped_bit_in_tensor_data_fails_the_crc(save: Any, tmp_path: Path) -> None:
    src = save({"w": torch.ones(64)})
    offset, _ = zip_member_range(src, "/data/0")
    bad = flip_bit(src, tmp_path / "flipped.pt", offset + 17, bit=3)
    assert not codes(run(bad))                       # the index alone cannot see it
    finding = only(run(bad, deep=True), "deep.crc-mismatch")
    assert finding.severity is Severity.ERROR
    assert finding.where == "flipped.pt: w"
    assert "zip member archive/data/0" in finding.message or "/data/0: CRC-32 expected" in finding.message
    assert "these bytes changed after the save" in finding.message


def test_an_untouched_archive_passes_every_crc(save: Any, state: dict[str, Any]) -> None:
    report = run(save({**state, "epoch": 1, "recall_at_10": 0.2}), deep=True)
    assert not [c for c in codes(report) if c.startswith("deep.")]


def test_a_damaged_local_header_disagrees_with_the_central_directory(save: Any, tmp_path: Path) -> None:
    src = save({"w": torch.ones(8)})
    offset, _ = zip_member_range(src, "/data/0")
    with open(src, "rb") as f:
        data = f.read()
    header = data.rfind(b"PK\x03\x04", 0, offset)
    bad = flip_bit(src, tmp_path / "header.pt", header + 14)       # first byte of the local CRC
    assert "local header and central directory disagree" in only(run(bad, deep=True),
                                                                   "deep.zip-header-mismatch").message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_nan_and_inf_in_weights_are_counted(save: Any, dtype: torch.dtype) -> None:
    w = torch.zeros(10, 10, dtype=dtype)
    w[0, 0], w[1, 1], w[2, 2] = float("nan"), float("inf"), float("-inf")
    finding = only(run(save({"fc.weight": w, "fc.bias": torch.zeros(10, dtype=dtype)}), deep=True),
                   "deep.non-finite")
    assert finding.where == "ckpt.pt: fc.weight"
    assert "expected finite values in this weight tensor, found 1 NaN and 2 Inf among 100 values" in finding.message


def test_nan_in_an_optimizer_moment(save: Any, state: dict[str, Any]) -> None:
    state["optimizer_state_dict"]["state"][1]["exp_avg"][3] = float("nan")
    finding = only(run(save({**state, "epoch": 1, "recall_at_10": 0.2}), deep=True), "deep.non-finite")
    assert finding.where == "ckpt.pt: optimizer_state_dict.state.1.exp_avg"
    assert "in this optimizer moment, found 1 NaN and 0 Inf among 16 values" in finding.message


def test_negative_exp_avg_sq(save: Any, state: dict[str, Any]) -> None:
    state["optimizer_state_dict"]["state"][0]["exp_avg_sq"][0, 0] = -0.25
    finding = only(run(save({**state, "epoch": 1, "recall_at_10": 0.2}), deep=True),
                   "deep.negative-second-moment")
    assert finding.where == "ckpt.pt: optimizer_state_dict.state.0.exp_avg_sq"
    assert "expected exp_avg_sq >= 0 (a running mean of squared gradients), found 1 negative values " \
           "(min -0.25)" in finding.message


def test_negative_exp_avg_is_normal(save: Any, state: dict[str, Any]) -> None:
    state["optimizer_state_dict"]["state"][0]["exp_avg"][0, 0] = -0.25
    assert "deep.negative-second-moment" not in codes(run(save({**state, "epoch": 1}), deep=True))


def safetensors_file(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str) -> tuple[Path, int]:
    """A safetensors file and the byte offset where its data starts."""
    path = tmp_path / name
    save_file(tensors, str(path))
    header = struct.unpack("<Q", path.read_bytes()[:8])[0]
    return path, 8 + header


def test_safetensors_nan_is_found_without_a_checksum(tmp_path: Path) -> None:
    path, start = safetensors_file(tmp_path, {"w": torch.ones(4, dtype=torch.float32)}, "m.safetensors")
    bad = tmp_path / "nan.safetensors"
    data = bytearray(path.read_bytes())
    data[start + 4: start + 8] = struct.pack("<f", float("nan"))
    bad.write_bytes(bytes(data))
    assert "found 1 NaN and 0 Inf among 4 values" in only(run(bad, deep=True), "deep.non-finite").message
    assert not codes(run(path, deep=True))


def test_a_bool_byte_that_is_neither_0_nor_1(tmp_path: Path) -> None:
    path, start = safetensors_file(tmp_path, {"mask": torch.ones(8, dtype=torch.bool)}, "mask.safetensors")
    bad = flip_bit(path, tmp_path / "bad-mask.safetensors", start + 2, bit=4)
    finding = only(run(bad, deep=True), "deep.impossible-value")
    assert "expected bool values 0 or 1, found 1 other bytes" in finding.message


def test_deep_reports_progress_up_to_the_total(save: Any, state: dict[str, Any]) -> None:
    seen: list[tuple[int, int]] = []
    run(save({**state, "epoch": 1}), deep=True, progress_callback=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_legacy_format_nan_is_found(save: Any) -> None:
    w = torch.ones(5)
    w[4] = float("inf")
    path = save({"w": w}, _use_new_zipfile_serialization=False)
    assert "found 0 NaN and 1 Inf among 5 values" in only(run(path, deep=True), "deep.non-finite").message


def test_infinite_values_outside_weights_and_optimizer_are_not_errors(save: Any, state: dict[str, Any]) -> None:
    """A Lightning ModelCheckpoint callback stores best_model_score = +inf before the first eval."""
    path = save({**state, "epoch": 1, "callbacks": {"ModelCheckpoint": {"kth_value": torch.tensor(float("inf"))}}})
    assert "deep.non-finite" not in codes(run(path, deep=True))
