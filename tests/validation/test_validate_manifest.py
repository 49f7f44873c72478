"""validate checks a ckptkit completion manifest as a resume does: sizes always, CRC-32s with
--deep; an unreadable manifest and a ckptkit trainer checkpoint without one are named."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.core.checkpoint import Severity
from ckptkit.runs import scan_run
from ckptkit.storage.manifest import manifest_path
from ckptkit.training import CheckpointManager
from ckptkit.validation import validate_path
from tests.training.conftest import _make_state


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    with CheckpointManager(tmp_path) as manager:
        manager.save(_make_state(step=4), ["periodic"])
    return tmp_path / "checkpoint_step_4.pt"


def _codes(path: Path, deep: bool = False) -> list[tuple[str, Severity, str]]:
    return [(f.code, f.severity, f.message) for f in validate_path(path, deep=deep).findings
            if "manifest" in f.code or f.code == "completeness.unconfirmed"]


def test_a_checkpoint_matching_its_manifest_has_no_manifest_finding(ckpt: Path) -> None:
    assert _codes(ckpt) == [] and _codes(ckpt, deep=True) == []


def test_a_checkpoint_whose_size_differs_from_its_manifest_is_an_error_without_deep(ckpt: Path) -> None:
    size = ckpt.stat().st_size
    with open(ckpt, "ab") as f:
        f.write(b"\0" * 100)            # a zip still reads: only the manifest sees it
    assert _codes(ckpt) == [("integrity.manifest-mismatch", Severity.ERROR,
                             "does not match checkpoint_step_4.pt.manifest.json: "
                             f"checkpoint_step_4.pt: {size + 100} bytes on disk, the manifest says {size} "
                             "(truncated or overwritten); a resume refuses it")]
    entry = {e.relative: e for e in scan_run(ckpt.parent).entries}["checkpoint_step_4.pt"]
    assert entry.health.status == "broken" and scan_run(ckpt.parent).resume is None


def test_a_flipped_tensor_byte_is_a_manifest_error_only_with_deep(ckpt: Path) -> None:
    with zipfile.ZipFile(ckpt) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    raw = bytearray(ckpt.read_bytes())
    raw[info.header_offset + 100] ^= 0x01
    ckpt.write_bytes(bytes(raw))
    assert _codes(ckpt) == []           # without --deep no tensor byte is read
    (code, severity, message), = _codes(ckpt, deep=True)
    assert (code, severity) == ("integrity.manifest-mismatch", Severity.ERROR)
    assert "checkpoint_step_4.pt: CRC-32" in message and "(bytes damaged); a resume refuses it" in message


def test_an_unreadable_manifest_is_an_error(ckpt: Path) -> None:
    manifest_path(ckpt).write_text("{not json")
    (code, severity, message), = _codes(ckpt)
    assert (code, severity) == ("integrity.manifest-unreadable", Severity.ERROR)
    assert message.startswith("checkpoint_step_4.pt.manifest.json: manifest is not valid JSON")


def test_a_ckptkit_checkpoint_without_its_manifest_is_unconfirmed_and_a_foreign_one_is_not(
        ckpt: Path, tmp_path: Path) -> None:
    manifest_path(ckpt).unlink()
    (code, severity, message), = _codes(ckpt)
    assert (code, severity) == ("completeness.unconfirmed", Severity.WARNING)
    assert "no checkpoint_step_4.pt.manifest.json beside it" in message
    foreign = tmp_path / "other" / "model.pt"
    foreign.parent.mkdir()
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 1}, foreign)
    assert _codes(foreign) == []


def test_validate_json_shows_the_manifest_mismatch_and_exits_1(ckpt: Path) -> None:
    with open(ckpt, "ab") as f:
        f.write(b"\0" * 8)
    result = CliRunner().invoke(main, ["validate", str(ckpt), "--json"])
    assert result.exit_code == 1
    codes = [f["code"] for f in json.loads(result.output)["findings"]]
    assert "integrity.manifest-mismatch" in codes
