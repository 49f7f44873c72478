"""`ckptkit salvage` through the command line: exit codes 0 / 1 / 2, text and JSON, input untouched."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ckptkit.cli import main
from tests.salvage.test_salvage import OPTIMIZER, experiment_checkpoint


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_a_whole_checkpoint_salvages_completely_and_exits_0(tmp_path: Path) -> None:
    original = experiment_checkpoint(tmp_path / "a.pt")
    result = invoke("salvage", str(original), str(tmp_path / "b.pt"))
    assert result.exit_code == 0, result.output
    assert "lost       0 item(s): nothing" in result.output
    assert "verdict    yes" in result.output


def test_a_cut_file_exits_1_and_names_what_was_lost_in_text_and_json(tmp_path: Path) -> None:
    damaged = tmp_path / "optimizer.pt"
    damaged.write_bytes(OPTIMIZER.read_bytes()[:60_000])
    before = damaged.read_bytes()
    result = invoke("salvage", str(damaged), str(tmp_path / "rescued.pt"), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["complete"] is False and report["format"] == "torch-zip"
    assert report["lost"] and all(x["name"].startswith("state.") for x in report["lost"])
    assert {r["name"] for r in report["recovered"]} >= {"data.pkl", "state.0.exp_avg"}
    assert report["resume"]["optimizer"].startswith("partial:")
    assert damaged.read_bytes() == before
    text = invoke("salvage", str(damaged), str(tmp_path / "rescued2.pt"))
    assert text.exit_code == 1 and "Lost" in text.output and "cut off" in text.output


def test_a_file_with_nothing_to_salvage_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"\x00" * 4096)
    result = invoke("salvage", str(junk), str(tmp_path / "out.pt"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        (f"ckptkit: error: {junk}: no zip record found: not a torch.save zip archive (salvage reads those, "
         "safetensors files and checkpoint folders), or every header in it is gone")]
    assert not (tmp_path / "out.pt").exists()


def test_salvage_refuses_to_write_into_the_folder_it_reads(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    result = invoke("salvage", str(folder), str(folder / "rescued"))
    assert result.exit_code == 2 and "never writes into what it reads" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["trainer_state.json"]
