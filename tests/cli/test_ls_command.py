"""`ckptkit ls` and `ckptkit latest` through the command line: output, JSON, exit codes, no torch."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from ckptkit.cli import main
from tests.run_builders import REAL, experiment_file, hf_checkpoint


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_ls_prints_one_row_per_checkpoint_in_progress_order_and_exits_0_when_clean(tmp_path: Path) -> None:
    for step in (1000, 500):
        hf_checkpoint(tmp_path / f"checkpoint-{step}", step, step / 1000, max_steps=4000, num_train_epochs=4)
    result = invoke("ls", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["checkpoint", "format", "progress", "size", "health", "markers"]
    starts = [line.split()[0] for line in lines[2:] if line.startswith("checkpoint")]
    assert starts == ["checkpoint-500/", "checkpoint-1000/"]
    row = next(line for line in lines if line.startswith("checkpoint-1000/"))
    assert row.split()[1] == "hf-trainer" and row.rstrip().endswith("ok        latest, resume")
    assert "Run findings" not in result.output


def test_ls_prints_run_findings_under_the_table_and_a_best_model_behind_is_information_not_exit_1(
        tmp_path: Path) -> None:
    experiment_file(tmp_path / "best_model.pt", 500)
    experiment_file(tmp_path / "checkpoint_step_1000.pt", 1000)
    result = invoke("ls", str(tmp_path))
    assert result.exit_code == 0     # every healthy run whose metric stopped improving looks like this
    table, findings = result.output.split("Run findings (1)")
    assert table.index("best_model.pt") < table.index("checkpoint_step_1000.pt")
    assert "run.best-not-latest" in findings and "-> fix: ckptkit latest" in findings


def test_ls_json_has_rows_in_order_with_health_markers_and_run_findings(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path / "checkpoint-1000", 1000, 1.0)
    (hf_checkpoint(tmp_path / "checkpoint-500", 500, 0.5) / "trainer_state.json").unlink()
    result = invoke("ls", str(tmp_path), "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert [c["path"] for c in data["checkpoints"]] == ["checkpoint-500", "checkpoint-1000"]
    assert data["checkpoints"][0]["health"]["status"] == "broken"
    assert data["checkpoints"][0]["health"]["codes"] == ["folder.missing-trainer-state"]
    assert data["checkpoints"][1]["progress"]["global_step"] == 1000
    assert data["checkpoints"][1]["markers"] == ["latest", "resume"]
    assert data["resume"] == "checkpoint-1000"
    assert [f["code"] for f in data["findings"]] == ["run.hf-missing-trainer-state"]


def test_ls_shows_broken_rows_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    result = invoke("ls", str(tmp_path))
    assert result.exit_code == 1
    assert "broken: zip archive is truncated" in result.output


def test_ls_of_a_missing_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = invoke("ls", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert result.stderr == f"ckptkit: error: {tmp_path / 'nope'}: no such file or folder\n"


def test_latest_prints_only_the_path_of_the_furthest_whole_checkpoint(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path / "checkpoint-500", 500, 0.5)
    hf_checkpoint(tmp_path / "checkpoint-1000", 1000, 1.0)
    hf_checkpoint(tmp_path / "tmp-checkpoint-1500", 1500, 1.5)
    result = invoke("latest", str(tmp_path))
    assert result.exit_code == 0
    assert result.stdout == f"{tmp_path / 'checkpoint-1000'}\n"


def test_latest_json_gives_the_path_format_and_progress(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path / "checkpoint-500", 500, 0.5)
    hf_checkpoint(tmp_path / "checkpoint-1000", 1000, 1.0)
    result = invoke("latest", str(tmp_path), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["path"] == str(tmp_path / "checkpoint-1000")
    assert data["format"] == "hf-trainer"
    assert data["progress"]["global_step"] == 1000


def test_latest_exits_1_with_one_line_when_nothing_qualifies(tmp_path: Path) -> None:
    (hf_checkpoint(tmp_path / "checkpoint-500", 500, 0.5) / "trainer_state.json").unlink()
    result = invoke("latest", str(tmp_path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (f"ckptkit: no whole and consistent checkpoint below {tmp_path} (1 found, 1 broken; "
                             f"see `ckptkit ls {tmp_path}`)\n")


def test_inspect_on_a_foreign_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / "notes.txt").write_text("x")
    result = invoke("inspect", str(tmp_path / "checkpoint-7"))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "checkpoint-7: a folder, but no checkpoint format" in result.stderr


def test_inspect_on_a_dcp_folder_with_damaged_metadata_exits_2_with_one_line(tmp_path: Path) -> None:
    shutil.copytree(REAL / "dcp", tmp_path / "dcp")
    (tmp_path / "dcp" / ".metadata").write_bytes(b"\x80\x04garbage")
    result = invoke("inspect", str(tmp_path / "dcp"))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"ckptkit: error: {tmp_path / 'dcp' / '.metadata'}: DCP .metadata is damaged")
    assert result.stderr.count("\n") == 1


def test_inspect_of_a_folder_lists_its_files(tmp_path: Path) -> None:
    result = invoke("inspect", str(REAL / "hf_lora" / "checkpoint-4"))
    assert result.exit_code == 0
    assert "Files (8)" in result.output and "adapter_model.safetensors" in result.output
    assert "trainer_state.json         1.4 KB   trainer state" in result.output


def test_ls_and_latest_do_not_import_torch(tmp_path: Path) -> None:
    shutil.copytree(REAL / "hf_full", tmp_path / "hf")
    shutil.copytree(REAL / "dcp", tmp_path / "dcp")
    for command, target in (("ls", tmp_path), ("latest", tmp_path / "hf")):   # two runs: latest names one
        code = ("import sys; from ckptkit.cli import main\n"
                f"sys.argv = ['ckptkit', {command!r}, {str(target)!r}]\n"
                "try: main()\nexcept SystemExit: pass\n"
                "print('torch imported:', 'torch' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.splitlines()[-1] == "torch imported: False"
        assert "checkpoint-10" in out
