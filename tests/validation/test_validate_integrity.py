"""Integrity without reading tensor bytes: storage records against the tensors that use them."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from ckptkit.core.checkpoint import ByteRange, Checkpoint, Severity, StorageRef, TensorRef
from ckptkit.core.dtypes import dtype_named
from ckptkit.validation import validate_checkpoint
from tests.validation.helpers import codes, only, run


def rewrite_zip(src: Path, dst: Path, edit: dict[str, bytes | None]) -> Path:
    """Copy a torch zip, replacing (bytes) or dropping (None) the members whose name ends with a key."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            change = next((v for k, v in edit.items() if info.filename.endswith(k)), b"keep")
            if change is None:
                continue
            zout.writestr(info.filename, zin.read(info) if change == b"keep" else change)
    return dst


def test_a_storage_record_shorter_than_its_tensor(save: Any, tmp_path: Path) -> None:
    src = save({"w": torch.ones(4, 4)})
    path = rewrite_zip(src, tmp_path / "short.pt", {"/data/0": b"\0" * 40})
    finding = only(run(path), "integrity.storage-size")
    assert finding.severity is Severity.ERROR
    assert finding.where == "short.pt: w"
    assert "should hold 16 x 4 bytes (float32) = 64 bytes, found 40" in finding.message


def test_a_storage_record_missing_from_the_archive(save: Any, tmp_path: Path) -> None:
    path = rewrite_zip(save({"w": torch.ones(3)}), tmp_path / "gone.pt", {"/data/0": None})
    finding = only(run(path), "integrity.missing-record")
    assert finding.message == ("expected a storage record '0' of 12 bytes, found none: storage record data/0 is "
                               "missing from the archive")


def test_whole_records_give_no_integrity_findings(save: Any) -> None:
    report = run(save({"w": torch.ones(4, 4), "view": torch.arange(10.0)[2:5]}))
    assert not [c for c in codes(report) if c.startswith("integrity.")]


def test_a_tensor_reaching_past_its_storage(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(b"\0" * 64)
    f32 = dtype_named("float32")
    storage = StorageRef("0", f32, 5, "cpu", lambda: ByteRange(path, 0, 20), stored_nbytes=20)
    tensor = TensorRef(f32, (4,), (1,), storage, storage_offset=3)
    ckpt = Checkpoint(path, "torch-zip", "state-dict", 64, {"w": tensor}, model={"w": tensor})
    finding = only(validate_checkpoint(ckpt, siblings=False), "integrity.tensor-outside-storage")
    assert "float32[4] with offset 3 and stride [1] needs storage elements 3..7, but its storage holds 5" \
        in finding.message


def test_contiguous_tensors_from_offset_zero_are_still_checked_against_their_storage(tmp_path: Path) -> None:
    """The common layout takes a short cut (one element count per shape): it must still flag a
    tensor longer than its storage, once per tensor, beside tensors of the same shape that fit."""
    path = tmp_path / "x.pt"
    path.write_bytes(b"\0" * 64)
    f32 = dtype_named("float32")
    fits = [StorageRef(str(i), f32, 8, "cpu", lambda: ByteRange(path, 0, 32), stored_nbytes=32) for i in range(3)]
    short = StorageRef("s", f32, 6, "cpu", lambda: ByteRange(path, 0, 24), stored_nbytes=24)
    model = {f"ok.{i}": TensorRef(f32, (2, 4), (4, 1), s) for i, s in enumerate(fits)}
    model["long"] = TensorRef(f32, (2, 4), (4, 1), short)
    model["ok.again"] = TensorRef(f32, (2, 4), (4, 1), fits[0])
    ckpt = Checkpoint(path, "torch-zip", "state-dict", 64, dict(model), model=model)
    finding = only(validate_checkpoint(ckpt, siblings=False), "integrity.tensor-outside-storage")
    assert finding.where == "x.pt: long"
    assert "float32[2, 4] with offset 0 and stride [4, 1] needs storage elements 0..8, but its storage holds 6" \
        in finding.message
