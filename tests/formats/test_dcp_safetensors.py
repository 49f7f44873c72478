"""torch.distributed.checkpoint's Hugging Face storage (`HuggingFaceStorageWriter(save_distributed=
True)`, torchtitan's Hugging Face-format saves), from `tests/fixtures/real/dcp_hf/`
(scripts/make_real_fixtures.py: a 2-rank FSDP2 run on a CPU gloo mesh). ckptkit called the folder
of rank files "no checkpoint format ckptkit knows", and a rank's file read alone "clean" with 38
parameters: the slices one rank held, which load_state_dict refuses. Each verdict is held to the
state dict the ranks saved (`whole.pt`) and to DCP's own reader.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from ckptkit.cli import main
from ckptkit.formats import open_checkpoint
from tests.validation.helpers import codes, only, run

FIXTURE = Path(__file__).parents[1] / "fixtures" / "real" / "dcp_hf"
RANKS = FIXTURE / "ranks"
RANK0, RANK1 = (RANKS / f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2))


def _whole() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURE / "whole.pt", weights_only=True)


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_the_rank_files_hold_slices_placed_by_their_sharding_info() -> None:
    """What the fixture is: rank 1's file holds the last row of the 3-row weight, at offset 2."""
    part = load_file(RANK1)
    assert part["2.weight"].shape == (1, 8) and torch.equal(part["2.weight"], _whole()["2.weight"][2:])
    with open(RANK1, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert json.loads(header["__metadata__"]["DCP_SHARDING_INFO"])["2.weight"] == {"saved_offsets": [2, 0]}


def test_the_folder_reads_as_the_whole_model_dcp_loads() -> None:
    whole = _whole()
    ckpt = open_checkpoint(RANKS)
    assert ckpt.format == "dcp-safetensors"
    assert {k: t.shape for k, t in ckpt.model.items()} == {k: tuple(v.shape) for k, v in whole.items()}
    assert [(list(c.offsets), list(c.sizes), c.file) for c in ckpt.chunks["2.weight"]] == [
        ([0, 0], [2, 8], RANK0.name), ([2, 0], [1, 8], RANK1.name)]
    # DCP's own reader of this storage gives the same tensors
    loaded = {k: torch.empty_like(v) for k, v in whole.items()}
    dcp.load(loaded, storage_reader=dcp.HuggingFaceStorageReader(str(RANKS)))
    assert all(torch.equal(loaded[k], v) for k, v in whole.items())
    code, out = _cli("inspect", RANKS)
    assert code == 0 and "4 tensors, 67 parameters" in out and "Model (chunks of 2 rank files)" in out


def test_the_folder_validates_clean_and_deep_reads_every_chunk() -> None:
    assert codes(run(RANKS)) == set()
    assert codes(run(RANKS, deep=True)) == set()
    code, out = _cli("validate", "--deep", "--no-run", RANKS)
    assert code == 0 and "clean: no findings" in out


def test_convert_assembles_the_whole_tensors(tmp_path: Path) -> None:
    code, out = _cli("convert", RANKS, tmp_path / "model.safetensors")
    assert code == 0, out
    back, whole = load_file(tmp_path / "model.safetensors"), _whole()
    assert set(back) == set(whole) and all(torch.equal(back[k], v) for k, v in whole.items())
    # the same tensors DCP consolidates itself
    consolidated = load_file(FIXTURE / "consolidated" / "model-00001-of-00001.safetensors")
    assert all(torch.equal(back[k], v) for k, v in consolidated.items())


@pytest.mark.parametrize("path", [RANK0, RANK1], ids=["rank0", "rank1"])
def test_a_rank_file_alone_is_said_to_be_part_of_a_model(path: Path, tmp_path: Path) -> None:
    finding = only(run(path), "compat.dcp-rank-file")
    assert finding.severity.value == "warning"
    expected = ("4 of its 4 tensors start past offset 0 (e.g. '0.bias' at [4])" if path == RANK1
                else "its tensors start at offset 0, as rank 0's do")
    assert expected in finding.message and "its folder holds 1 other rank file." in finding.message
    assert finding.fix is not None and finding.fix.startswith(f"ckptkit convert {RANKS} {RANKS}.safetensors")
    code, out = _cli("convert", path, tmp_path / "x.safetensors")
    assert code == 2 and "one rank's part" in out and not (tmp_path / "x.safetensors").exists()
    code, out = _cli("inspect", "--json", path)          # inspect says it too, where its counts are shown
    assert code == 0 and [(f["code"], f["message"]) for f in json.loads(out)["findings"]] == [
        ("compat.dcp-rank-file", finding.message)]


def test_a_rank_file_named_from_inside_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix writes beside the folder, never into it (a whole-tensor file there would join the ranks)."""
    folder = shutil.copytree(RANKS, tmp_path / "ranks.v2")
    monkeypatch.chdir(folder)
    finding = only(run(Path(RANK1.name)), "compat.dcp-rank-file")
    assert finding.fix is not None and finding.fix.startswith("ckptkit convert . ../ranks.v2.safetensors")
    code, out = _cli("convert", ".", "../ranks.v2.safetensors")
    assert code == 0, out
    assert set(load_file(tmp_path / "ranks.v2.safetensors")) == set(_whole())


def test_a_one_rank_save_is_whole(tmp_path: Path) -> None:
    """Alone in its folder, rank 0's file (offsets 0) is what a one-rank save writes: no finding."""
    shutil.copy(RANK0, tmp_path / RANK0.name)
    assert codes(run(tmp_path / RANK0.name)) == set()
    assert open_checkpoint(tmp_path).format == "dcp-safetensors"


def test_a_missing_rank_file_leaves_a_gap_that_is_said(tmp_path: Path) -> None:
    """Rank 0's file gone: rank 1's rows start at 2 (4 for the 8-row weight), with nothing before them."""
    shutil.copy(RANK1, tmp_path / RANK1.name)
    report = run(tmp_path)
    missing = [f for f in report.findings if f.code == "dcp.missing-chunk"]
    assert {f.severity.value for f in missing} == {"error"} and len(missing) == 4
    assert any("'2.weight': its chunks hold 8 elements, but reach as far as [3, 8] (24 elements)" in f.message
               for f in missing)
    code, out = _cli("convert", tmp_path, tmp_path / "out.safetensors")
    assert code == 2 and "its chunks hold" in out and not (tmp_path / "out.safetensors").exists()


def test_damaged_sharding_info_is_one_error_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "ranks"
    shutil.copytree(RANKS, folder)
    raw = (folder / RANK1.name).read_bytes()
    damaged = raw.replace(b'saved_offsets\\": [2, 0]', b'saved_offsets\\": [2]   ', 1)
    assert damaged != raw and len(damaged) == len(raw)
    (folder / RANK1.name).write_bytes(damaged)
    report = run(folder)
    finding = only(report, "folder.unreadable-member")
    assert finding.severity.value == "error" and RANK1.name in finding.where
    assert "places tensor '2.weight' (2 dimensions) at [2]" in finding.message


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_split_across_rank_files_converts_back_bit_equal(tmp_path_factory: Any, data: st.DataObject) -> None:
    """Tensors cut into parts along one dimension, each rank file holding its part of every tensor
    at the offsets its DCP_SHARDING_INFO records (as HuggingFaceStorageWriter writes them): the
    folder reads as the whole tensors, validates clean, and converts back bit-equal."""
    folder = tmp_path_factory.mktemp("ranks")
    ranks = data.draw(st.integers(1, 3), label="ranks")
    whole: dict[str, torch.Tensor] = {}
    parts: list[dict[str, tuple[torch.Tensor, list[int]]]] = [{} for _ in range(ranks)]
    for i in range(data.draw(st.integers(1, 4), label="tensors")):
        shape = data.draw(st.lists(st.integers(ranks, 6), min_size=1, max_size=3), label="shape")
        dim = data.draw(st.integers(0, len(shape) - 1), label="dim")
        cuts = sorted(data.draw(st.sets(st.integers(1, shape[dim] - 1), min_size=ranks - 1,
                                        max_size=ranks - 1))) if ranks > 1 else []
        tensor = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape) + 100 * i
        whole[f"layer{i}.weight"] = tensor
        for r, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, shape[dim]], strict=True)):
            offsets = [lo if d == dim else 0 for d in range(len(shape))]
            parts[r][f"layer{i}.weight"] = (tensor.narrow(dim, lo, hi - lo).contiguous(), offsets)
    for r, held in enumerate(parts):
        info = {k: {"saved_offsets": offsets} for k, (_, offsets) in held.items()}
        save_file({k: t for k, (t, _) in held.items()}, folder / f"shard-{r + 1:05d}-model-00001-of-00001.safetensors",
                  metadata={"format": "pt", "DCP_VERSION": "1.0", "DCP_SHARDING_INFO": json.dumps(info)})
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "dcp-safetensors"
    assert {k: t.shape for k, t in ckpt.model.items()} == {k: tuple(v.shape) for k, v in whole.items()}
    assert codes(run(folder, deep=True)) == set()
    code, out = _cli("convert", folder, folder.parent / f"{folder.name}.safetensors")
    assert code == 0, out
    back = load_file(folder.parent / f"{folder.name}.safetensors")
    assert set(back) == set(whole) and all(torch.equal(back[k], v) for k, v in whole.items())
