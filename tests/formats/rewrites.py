"""A check shared by the tests of archives whose storage records carry no CRC-32 of their own
(`set_crc32_options(False)`, `skip_data()`): what ckptkit writes from them carries real ones."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner

from ckptkit.cli import main


def tensors_of(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a loaded checkpoint by its dotted key."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in tensors_of(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree} if isinstance(tree, torch.Tensor) else {}


def assert_rewrites_write_real_crcs(path: Path, saved: dict[str, Any]) -> None:
    """`convert PATH copy.pt` and `fix-epoch PATH --epoch 2` write every member with its CRC-32,
    the tensors `saved` holds, and a deep validation without findings; the original is kept."""
    runner = CliRunner()
    copy = path.with_name("copy.pt")
    for args in (["convert", path, copy], ["fix-epoch", path, "--epoch", 2]):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    for written in (copy, path):
        with zipfile.ZipFile(written) as zf:
            assert all(i.CRC for i in zf.infolist() if i.file_size), written
            assert zf.testzip() is None
        result = runner.invoke(main, ["validate", "--json", "--deep", "--no-run", str(written)])
        assert result.exit_code == 0 and json.loads(result.output)["findings"] == [], result.output
        back = tensors_of(torch.load(written, weights_only=True))
        assert all(torch.equal(back[k], v) for k, v in tensors_of(saved).items())
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert path.with_name(path.name + ".bak").exists()
