"""A folder of safetensors shards + index alone (what `convert --max-shard-size` writes, and HF
shards without their config.json): read, validated, diffed and converted back like one file."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.conversion import ConvertOptions, convert_checkpoint
from ckptkit.formats import open_checkpoint
from ckptkit.validating import validate_path

REAL_SHARDED = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "hf_sharded"


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = {"embed.weight": torch.randn(64, 32), "head.weight": torch.randn(16, 32), "head.bias": torch.randn(16)}
    path = tmp_path / "run.pth"
    torch.save({"model_state_dict": model, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "epoch": 3, "global_step": 30, "best_val_loss": 0.5, "config": {"lr": 0.1}}, path)
    return path, model


def _shards(source: Path, out: Path) -> Path:
    convert_checkpoint(source, out, ConvertOptions(weights_only=True, max_shard_size=4096))
    return out


def test_ckptkit_reads_the_shard_folder_it_wrote(source, tmp_path: Path) -> None:
    path, model = source
    folder = _shards(path, tmp_path / "release")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 2
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "safetensors-shards"
    assert {n: (t.dtype.name, tuple(t.shape)) for n, t in ckpt.model.items()} == {
        n: ("float32", tuple(t.shape)) for n, t in model.items()}
    assert ckpt.metadata["ckptkit.source_format"] == "torch-zip"      # the first shard's __metadata__
    assert [f.code for f in validate_path(folder).findings if f.severity.rank >= 1] == []


def test_the_shard_folder_converts_back_to_the_source_layout_with_equal_tensors(source, tmp_path: Path) -> None:
    path, model = source
    folder = _shards(path, tmp_path / "release")
    result = convert_checkpoint(folder, tmp_path / "back.pth", ConvertOptions())
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert (back["epoch"], back["global_step"], back["best_val_loss"], back["config"]) == (3, 30, 0.5, {"lr": 0.1})
    assert all(torch.equal(back["model_state_dict"][n], t) for n, t in model.items())
    assert any("restored from the safetensors __metadata__" in n for n in result.notes)


def test_diff_finds_the_shards_identical_to_the_single_file(source, tmp_path: Path) -> None:
    path, _ = source
    folder = _shards(path, tmp_path / "release")
    convert_checkpoint(path, tmp_path / "one.safetensors", ConvertOptions(weights_only=True))
    result = CliRunner().invoke(main, ["diff", str(folder), str(tmp_path / "one.safetensors")])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("Result: identical (every tensor bit for bit, every other value equal)")


def test_a_missing_shard_is_an_error_finding(source, tmp_path: Path) -> None:
    path, _ = source
    folder = _shards(path, tmp_path / "release")
    missing = sorted(folder.glob("model-*.safetensors"))[-1]
    missing.unlink()
    errors = [(f.code, f.where) for f in validate_path(folder).findings if f.severity.rank >= 2]
    assert ("folder.missing-shard", "release/model.safetensors.index.json") in errors


def test_real_transformers_shards_without_their_config_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    for item in REAL_SHARDED.iterdir():
        if item.name != "config.json" and item.is_file():
            shutil.copy(item, folder / item.name)
    with_config = open_checkpoint(REAL_SHARDED)
    alone = open_checkpoint(folder)
    assert (with_config.format, alone.format) == ("save-pretrained", "safetensors-shards")
    assert {n: t.describe() for n, t in alone.model.items()} == {n: t.describe() for n, t in with_config.model.items()}


def test_each_shard_header_is_read_once_and_the_first_gives_the_folder_its_metadata(
        source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckptkit.formats.safetensors_file as sf

    folder = _shards(source[0], tmp_path / "shards")
    reads: list[str] = []
    original = sf._header_bytes      # every reading of a header's bytes goes through it

    def counting(path: Path, base: int = 0):  # type: ignore[no-untyped-def]
        reads.append(path.name)
        return original(path, base)
    monkeypatch.setattr(sf, "_header_bytes", counting)
    ckpt = open_checkpoint(folder)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(reads) == shards
    assert ckpt.metadata["ckptkit.source_format"] == "torch-zip"
    # Where each tensor's bytes lie comes from the header bytes read then, not from a second read.
    ranges = {t.storage.byte_range().path.name for t in ckpt.model.values()}
    assert ranges == set(shards) and sorted(reads) == shards
