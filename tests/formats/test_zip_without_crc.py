"""torch.save archives written without CRC-32s (`torch.serialization.set_crc32_options(False)`,
a public switch for faster saves): torch writes 0 in every member's CRC field and its reader
never checks it. ckptkit called such a healthy file damaged ("Bad CRC-32 for file data.pkl",
exit 2) in every command, and `--deep` reported a CRC mismatch for every record.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.formats import open_checkpoint
from tests.formats.rewrites import assert_rewrites_write_real_crcs


@pytest.fixture
def no_crc() -> Iterator[None]:
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(True)


def _trained() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 3,
            "scheduler": {"last_epoch": 3}}


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _codes(path: Path, *flags: str) -> list[tuple[str, str]]:
    import json

    code, out = _cli("validate", "--json", *flags, path)
    assert code in (0, 1), out
    return [(f["code"], f["severity"]) for f in json.loads(out)["findings"]]


def test_the_archive_torch_writes_has_crc_0_everywhere(tmp_path: Path, no_crc: None) -> None:
    torch.save(_trained(), tmp_path / "x.pt")
    with zipfile.ZipFile(tmp_path / "x.pt") as zf:
        assert {i.CRC for i in zf.infolist()} == {0}
    assert torch.load(tmp_path / "x.pt", weights_only=True)["epoch"] == 3


def test_a_healthy_file_without_crcs_reads_and_validates_clean(tmp_path: Path, no_crc: None) -> None:
    saved = _trained()
    torch.save(saved, tmp_path / "x.pt")
    ckpt = open_checkpoint(tmp_path / "x.pt")
    assert ckpt.tree["epoch"] == 3
    assert bytes(ckpt.model["weight"].read_bytes()) == saved["model_state_dict"]["weight"].numpy().tobytes()
    assert _codes(tmp_path / "x.pt") == []
    assert _codes(tmp_path / "x.pt", "--deep", "--no-run") == [("deep.crc-not-recorded", "info")]
    code, out = _cli("validate", "--deep", "--no-run", tmp_path / "x.pt")
    assert code == 0 and "cannot tell damaged bytes from good ones" in out


def test_deep_still_checks_the_values_of_a_file_without_crcs(tmp_path: Path, no_crc: None) -> None:
    saved = _trained()
    saved["model_state_dict"]["weight"][0, 0] = float("nan")
    torch.save(saved, tmp_path / "x.pt")
    assert ("deep.non-finite", "error") in _codes(tmp_path / "x.pt", "--deep", "--no-run")


def test_one_zeroed_crc_among_real_ones_is_still_damage(tmp_path: Path) -> None:
    """Only an archive with no CRC anywhere was written without them; data.pkl alone saying 0
    is a changed byte of the directory."""
    torch.save(_trained(), tmp_path / "x.pt")
    raw = bytearray((tmp_path / "x.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "x.pt") as zf:
        info = zf.getinfo("x/data.pkl")
    central = raw.find(b"PK\x01\x02")       # the first central entry is data.pkl's
    assert raw[central + 46: central + 46 + len(info.filename)] == info.filename.encode()
    raw[central + 16: central + 20] = b"\0\0\0\0"
    (tmp_path / "x.pt").write_bytes(bytes(raw))
    code, out = _cli("validate", tmp_path / "x.pt")
    assert code == 2 and "x/data.pkl is damaged: Bad CRC-32" in out


def test_repairs_and_conversions_of_a_file_without_crcs_write_real_ones(tmp_path: Path, no_crc: None) -> None:
    saved = _trained()
    torch.save(saved, tmp_path / "x.pt")
    torch.serialization.set_crc32_options(True)
    assert_rewrites_write_real_crcs(tmp_path / "x.pt", saved)


def test_a_file_without_crcs_that_runs_code_is_still_named(tmp_path: Path, no_crc: None) -> None:
    class RunsCode:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo this must never run",))

    torch.save({"epoch": 1, "x": RunsCode()}, tmp_path / "evil.pt")
    assert ("security.dangerous-global", "error") in _codes(tmp_path / "evil.pt")
