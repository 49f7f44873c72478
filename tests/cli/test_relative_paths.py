"""Paths as users type them: `.` inside a checkpoint folder, a file name in the current folder.

`ckptkit validate .` inside `checkpoint-4` once said the healthy folder was damaged (its manifest
check asked for the name of `.`), and `fix-epoch checkpoint_step_4.pt` run beside the file failed
with an internal error. The verdict must not depend on how the path is spelled.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.storage.crc import file_crc32
from ckptkit.storage.manifest import read_manifest
from ckptkit.training import CheckpointManager, load_for_resume
from tests.training.conftest import _make_state

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"


def _ckptkit(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*map(str, args)])
    return result.exit_code, result.output


def _findings(output: str) -> list[tuple[str, str, str]]:
    return [(f["code"], f["severity"], f["message"]) for f in json.loads(output)["findings"]]


def test_validate_dot_inside_an_hf_checkpoint_folder_gives_the_verdict_of_its_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "hf_full"
    shutil.copytree(REAL / "hf_full", run)
    by_name = _ckptkit("validate", "--json", run / "checkpoint-4")
    monkeypatch.chdir(run / "checkpoint-4")
    by_dot = _ckptkit("validate", "--json", ".")
    assert by_dot[0] == by_name[0] == 0
    assert _findings(by_dot[1]) == _findings(by_name[1])
    assert [code for code, *_ in _findings(by_dot[1])] == ["folder.pickled-objects"]
    assert json.loads(by_dot[1])["path"] == str(run / "checkpoint-4")    # the folder by its name, not "."
    code, out = _ckptkit("inspect", "--json", ".")
    assert code == 0 and json.loads(out)["progress"]["global_step"] == 4


def test_ls_dot_and_dotdot_list_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "hf_full"
    shutil.copytree(REAL / "hf_full", run)
    expected = _ckptkit("ls", "--json", run)
    monkeypatch.chdir(run / "checkpoint-4")
    for spelled in ("..", "../checkpoint-4/.."):
        code, out = _ckptkit("ls", "--json", spelled)
        assert (code, out) == expected


@pytest.mark.usefixtures("one_rank_group")
def test_fix_epoch_of_a_file_named_from_its_own_folder_renews_its_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    with CheckpointManager(run) as manager:
        manager.save(_make_state(step=4), ["periodic"])
    monkeypatch.chdir(run)
    code, out = _ckptkit("fix-epoch", "checkpoint_step_4.pt", "--epoch", "1")
    assert code == 0, out
    path = run / "checkpoint_step_4.pt"
    assert [(f.path, f.size, f.crc32) for f in read_manifest(path).files] == [
        ("checkpoint_step_4.pt", path.stat().st_size, file_crc32(path))]
    assert load_for_resume(path).checkpoint["global_step"] == 5
    assert _ckptkit("validate", "checkpoint_step_4.pt")[0] == 0


def test_fix_epoch_of_a_plain_file_named_from_its_own_folder_writes_it_with_a_backup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No manifest beside it: the folder it lies in (".") is asked for one, by its name."""
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 3, "global_step": 30}, tmp_path / "last.pt")
    original = (tmp_path / "last.pt").read_bytes()
    monkeypatch.chdir(tmp_path)
    code, out = _ckptkit("fix-epoch", "last.pt", "--epoch", "4")
    assert code == 0, out
    assert (tmp_path / "last.pt.bak").read_bytes() == original
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 4


@pytest.mark.usefixtures("one_rank_group")
def test_fix_epoch_of_dot_inside_a_sharded_checkpoint_renews_the_folder_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    with CheckpointManager(run, sharded=True) as manager:
        manager.save(_make_state(step=4), ["periodic"])
    folder = run / "checkpoint_step_4"
    monkeypatch.chdir(folder)
    assert _ckptkit("validate", "--json", ".")[0] == 0
    code, out = _ckptkit("fix-epoch", ".", "--epoch", "1")
    assert code == 0, out
    assert read_manifest(folder).global_step == 5
    load_for_resume(folder)
    assert _ckptkit("validate", ".")[0] == 0
