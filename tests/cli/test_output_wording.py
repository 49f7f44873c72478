"""What a newcomer reads: paths whole, plurals right, counts explained, fixes that run as printed."""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.cli.render import render_findings, table
from ckptkit.core.checkpoint import Finding, Progress, Severity
from ckptkit.formats.base import weights_only_command
from ckptkit.runs import scan_run


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def trained(global_step: int = 3) -> dict[str, Any]:
    """A small experiment-style checkpoint: model, AdamW state, counters, an RNG state."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
            "global_step": global_step, "epoch": 0,
            "rng_state": {"world_size": 1, "ranks": [{"torch_cpu": torch.get_rng_state()}]}}


class RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo this must never run",))


def test_a_table_cell_never_splits_a_file_name_at_a_hyphen_or_mid_word() -> None:
    name = "optimized_model_epoch_10_recall_0.3456.pt.ckptkit-tmp-new-83972565f458"
    text = table([(name, "a short note that does wrap at its spaces when it is long")], ["path", "note"],
                 widths=[20, 24])
    assert name in text.splitlines()[2]
    assert "a short note that does" in text and "wrap at its spaces when" in text


def test_a_findings_fix_command_stays_on_one_line_to_copy_and_paste() -> None:
    path = "/runs/x/checkpoint_step_20.pt.ckptkit-tmp-new-83972565f458"
    finding = Finding("run.temporary-leftover", Severity.WARNING, Path(path).name, "left by a save " * 12,
                      f"rm -r {path}")
    lines = render_findings([finding]).splitlines()
    assert any(line.rstrip().endswith(f"-> fix: rm -r {path}") for line in lines)
    assert f" {Path(path).name} " in lines[2]   # the `where` cell, whole


def test_ls_prints_a_long_leftover_name_whole_in_the_table_and_in_its_fix(tmp_path: Path) -> None:
    long_name = "optimized_model_epoch_10_recall_0.3456.pt.ckptkit-tmp-new-83972565f458"
    torch.save(trained(), tmp_path / long_name)
    code, out = cli("ls", tmp_path)
    assert code == 1
    rows = [line for line in out.splitlines() if long_name in line]
    assert len(rows) == 3   # the table row, the finding's `where`, its fix
    assert any(line.rstrip().endswith(f"-> fix: rm -r {tmp_path / long_name}") for line in rows)


def test_one_epoch_is_counted_in_the_singular() -> None:
    assert Progress(epochs_completed=1).describe() == "1 epoch completed (boundary unknown)"
    assert Progress(epochs_completed=4).describe() == "4 epochs completed (boundary unknown)"


def test_one_batch_into_an_epoch_is_counted_in_the_singular() -> None:
    progress = Progress(epochs_completed=1, step_in_epoch=1, epoch_complete=False, global_step=4)
    assert progress.describe() == "epoch 2 INCOMPLETE: 1 batch done, global step 4"


def test_a_run_that_ends_at_max_steps_inside_an_epoch_is_finished_not_incomplete() -> None:
    progress = Progress(epochs_completed=3, step_in_epoch=7, steps_per_epoch=11, global_step=40, max_steps=40,
                        epoch_complete=False, training_finished=True)
    assert progress.describe() == "training finished at global step 40/40, 7/11 batches into epoch 4"
    unfinished = Progress(epochs_completed=3, step_in_epoch=7, steps_per_epoch=11, global_step=40, max_steps=50,
                          epoch_complete=False, training_finished=False)
    assert unfinished.describe() == "epoch 4 INCOMPLETE: 7/11 batches (63.6%), global step 40/50"


def test_convert_to_hf_says_which_files_the_verified_tensors_are_in(tmp_path: Path) -> None:
    source = tmp_path / "ckpt.pt"
    torch.save(trained(), source)
    code, out = cli("convert", source, tmp_path / "hf", "--to", "hf")
    assert code == 0, out
    lines = [line.strip() for line in out.splitlines()]
    # 4 model tensors; AdamW: step, exp_avg, exp_avg_sq for each of 4 parameters.
    [written] = [line for line in lines if line.startswith("written")]
    assert written.startswith("written   16 tensors, ") and written.endswith(" in 3 files")
    assert "4 in model.safetensors, 12 in optimizer.pt" in lines
    assert "verified  16 tensors read back and equal to the source" in lines


def test_convert_counts_one_tensor_and_one_file_in_the_singular(tmp_path: Path) -> None:
    source = tmp_path / "one.pt"
    torch.save({"w": torch.ones(2)}, source)
    code, out = cli("convert", source, tmp_path / "one.safetensors")
    assert code == 0, out
    assert "written   1 tensor, " in out and "in 1 file\n" in out
    assert "verified  1 tensor read back" in out


def test_diff_says_how_many_bytes_of_an_rng_state_differ_not_a_largest_byte_difference(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    state = trained()
    torch.save(state, a)
    torch.manual_seed(5)
    state["rng_state"]["ranks"][0]["torch_cpu"] = torch.get_rng_state()
    torch.save(state, b)
    code, out = cli("diff", a, b)
    assert code == 1
    [row] = [line for line in out.splitlines() if "ranks.0.torch_cpu" in line]
    assert row.split()[:3] == ["rng", "ranks.0.torch_cpu", "changed"]
    assert row.rstrip().endswith("of 5,056 bytes differ") and "255" not in row


def test_the_fix_for_a_pickle_that_runs_code_names_the_file_and_works_as_printed(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    state = trained()
    torch.save({**state, "evil": RunsCode()}, evil)
    code, out = cli("validate", evil, "--json")
    import json

    [finding] = [f for f in json.loads(out)["findings"] if f["code"] == "security.dangerous-global"]
    assert finding["fix"] == f"ckptkit convert {evil} {tmp_path / 'evil.safetensors'} --weights-only"
    argv = shlex.split(finding["fix"])
    code, out = cli(*argv[1:])
    assert code == 0, out
    code, out = cli("validate", tmp_path / "evil.safetensors")
    assert code == 0 and "security" not in out


def test_a_dcp_member_s_weights_only_fix_converts_its_folder(tmp_path: Path) -> None:
    member = tmp_path / "step_10" / "__0_0.distcp"
    assert weights_only_command(member) == (f"ckptkit convert {tmp_path / 'step_10'} "
                                            f"{tmp_path / 'step_10.safetensors'} --weights-only")


def test_two_checkpoints_of_one_save_get_one_latest_marker_the_one_a_resume_takes(tmp_path: Path) -> None:
    state = trained(global_step=20)
    torch.save(state, tmp_path / "best_model.pt")
    torch.save(state, tmp_path / "checkpoint_step_20.pt")
    run = scan_run(tmp_path)
    markers = {e.path.name: e.markers for e in run.entries}
    assert markers == {"best_model.pt": ["best"], "checkpoint_step_20.pt": ["latest", "resume"]}


def test_a_sharded_manager_in_another_layout_is_refused_in_users_words(tmp_path: Path) -> None:
    import pytest

    from ckptkit.training import CheckpointManager
    from ckptkit.training.retrieval_layout import RETRIEVAL

    with pytest.raises(ValueError) as refused:
        CheckpointManager(tmp_path, sharded=True, layout=RETRIEVAL)
    assert str(refused.value) == ("sharded checkpoints are written in the experiment layout only (checkpoint_step_N, "
                                  "best_model, final_model, as run_experiment.py LM names them), not 'retrieval'")
    assert "seed" not in str(refused.value)


def test_inspect_names_a_bare_state_dict_s_model_the_whole_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2, 2)}, str(path))
    code, out = cli("inspect", path)
    assert code == 0
    assert "\nModel (the whole file)\n" in out and "((top level))" not in out


def test_repair_of_a_call_it_cannot_fix_does_not_say_already_consistent(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({**trained(), "evil": RunsCode()}, evil)
    code, out = cli("repair", evil, "--fix", "security.pickled-class")
    assert "already consistent" not in out
    assert out.rstrip().endswith("nothing written: nothing here can be fixed automatically")
    assert (f"evil calls posix.system: that is not a config; keep the weights alone with ckptkit convert {evil} "
            f"{tmp_path / 'evil.safetensors'} --weights-only") in out
