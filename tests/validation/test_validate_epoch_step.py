"""counters.epoch-step-mismatch: the recorded epoch against the step counters, per family convention."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.cli import main
from ckptkit.core.checkpoint import Severity
from ckptkit.validation.epoch_step import CODE, hf_updates_per_epoch
from tests.validation.helpers import codes, only, run

REAL = Path(__file__).parent.parent / "fixtures" / "real"
REAL_CHECKPOINTS = sorted([*REAL.glob("hf_*/checkpoint-*"), *REAL.glob("lightning*/**/*.ckpt"),
                           REAL / "save_pretrained_training_state" / "last_checkpoint"])


def copy_folder(src: str, tmp_path: Path, **state_changes: Any) -> Path:
    folder = Path(shutil.copytree(REAL / src, tmp_path / Path(src).name))
    path = folder / "trainer_state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **state_changes}))
    return folder


@pytest.mark.parametrize("path", REAL_CHECKPOINTS, ids=lambda p: str(p.relative_to(REAL)))
def test_checkpoints_the_real_libraries_wrote_never_trip_it(path: Path) -> None:
    # hf_* were trained with gradient accumulation 2: epoch 1.667 beside global_step 8 of 5 per epoch.
    assert CODE not in codes(run(path))


# --- Hugging Face Trainer (HF Trainer LoRA ranker) ----------------------------------------------------------

def test_hf_epoch_more_than_one_update_share_away_from_global_step_is_reported(tmp_path: Path) -> None:
    folder = copy_folder("hf_full/checkpoint-8", tmp_path, epoch=0.6666666666666666)
    finding = only(run(folder), CODE)
    assert finding.severity is Severity.WARNING
    assert finding.where == "checkpoint-8/trainer_state.json: epoch"
    assert finding.message.startswith(
        "epoch = 0.666667 counts data-loader batches (0.6667 epochs' worth) but global_step = 8 optimizer "
        "updates at 5 per epoch (max_steps 10 / num_train_epochs 2) is epoch 1.6 (epoch 2, step 3 of it): "
        "under gradient accumulation they differ by less than 1/5 of an epoch, here by 0.9333, so they "
        "cannot both be true. The Trainer resumes from global_step")
    assert finding.fix == f"ckptkit fix-epoch {folder} --epoch 2 --step 3"


def test_hf_epoch_within_one_update_share_of_global_step_is_quiet(tmp_path: Path) -> None:
    # 1.79 vs 8/5 = 1.6: a naive epoch x steps-per-epoch == global_step check would call this wrong.
    assert CODE not in codes(run(copy_folder("hf_full/checkpoint-8", tmp_path, epoch=1.79)))


def test_hf_says_nothing_when_updates_per_epoch_cannot_be_known(tmp_path: Path) -> None:
    folder = copy_folder("hf_full/checkpoint-8", tmp_path, epoch=0.6666666666666666)
    (folder / "training_args.bin").unlink()     # max_steps may then have been the user's own
    assert CODE not in codes(run(folder))


def test_hf_updates_per_epoch_come_only_from_certain_sources() -> None:
    state = {"max_steps": 10, "num_train_epochs": 2, "log_history": []}
    derived = {"max_steps": -1, "num_train_epochs": 2}
    assert hf_updates_per_epoch(state, derived) == (5, "max_steps 10 / num_train_epochs 2")
    assert hf_updates_per_epoch(state, {"max_steps": 10, "num_train_epochs": 2}) == (None, "")   # user's max_steps
    assert hf_updates_per_epoch(state, {"max_steps": -1, "num_train_epochs": 2.5}) == (None, "")  # fractional
    assert hf_updates_per_epoch(state, None) == (None, "")
    logged = {"log_history": [{"step": 2, "epoch": 0.4444444444444444}, {"step": 10, "epoch": 2.0}]}
    assert hf_updates_per_epoch(logged, None) == (5, "log_history: step 10 logged at epoch 2")
    rounded = {"log_history": [{"step": 2, "epoch": 0.44}, {"step": 10, "epoch": 2.0}]}   # 2-decimal logs
    assert hf_updates_per_epoch(rounded, None) == (None, "")


def test_hf_log_history_entry_from_another_counting_is_reported(tmp_path: Path) -> None:
    state = json.loads((REAL / "hf_full" / "checkpoint-10" / "trainer_state.json").read_text())
    history = state["log_history"]
    history[3] = {**history[3], "epoch": 0.3}       # step 6 is epoch 1.2 at 5 updates per epoch
    finding = only(run(copy_folder("hf_full/checkpoint-10", tmp_path, log_history=history)), CODE)
    assert finding.where == "checkpoint-10/trainer_state.json: log_history[3]"
    assert finding.message.startswith("log_history entry 3 has epoch = 0.3 but step = 6, which at 5 optimizer "
                                      "updates per epoch (max_steps 10 / num_train_epochs 2) is epoch 1.2")


# --- ckptkit's own trainer (data_position) ------------------------------------------------------

def trainer_checkpoint(save: Any, state: dict[str, Any], global_step: int, epoch: int = 1,
                       **position: int) -> Path:
    where = {"epoch": 1, "batch_in_epoch": 5, "steps_per_epoch": 9, "micro_step": 0, "grad_accum": 2,
             "sampler_seed": 0, "batch_size": 2, "world_size": 1, **position}
    return save({**state, "global_step": global_step, "epoch": epoch, "best_val_loss": 0.5,
                 "config": {"max_steps": 100}, "train_history": [], "val_history": [],
                 "data_position": where}, "checkpoint_step_7.pt")


def test_data_position_and_global_step_naming_different_batches_is_reported(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(trainer_checkpoint(save, state, 7, micro_step=1)), CODE)
    assert finding.severity is Severity.WARNING
    assert finding.where == "checkpoint_step_7.pt: data_position"
    assert finding.message.startswith(
        "data_position says 14 batches consumed (epoch = 1 x steps_per_epoch = 9 + batch_in_epoch = 5) but "
        "global_step = 7 optimizer steps x grad_accum = 2 + micro_step = 1 is 15 batches (epoch 2, step 6 of it): "
        "they cannot both be true")
    assert finding.fix.endswith("checkpoint_step_7.pt --epoch 2 --step 6")


def test_data_position_agreeing_with_global_step_is_quiet(save: Any, state: dict[str, Any]) -> None:
    assert CODE not in codes(run(trainer_checkpoint(save, state, 7)))     # 1 x 9 + 5 = 7 x 2


def test_top_level_epoch_disagreeing_with_data_position_is_reported(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(trainer_checkpoint(save, state, 7, epoch=3)), CODE)
    assert finding.where == "checkpoint_step_7.pt: epoch"
    assert finding.message.startswith("'epoch' = 3 but data_position says epoch 2, step 5 of it, which this "
                                      "layout stores as 'epoch' = 1: the trainer writes both from one counter")
    assert finding.fix.endswith("--epoch 2 --step 5")


def test_data_position_without_grad_accum_says_nothing(save: Any, state: dict[str, Any]) -> None:
    path = save({**state, "global_step": 3, "epoch": 1, "best_val_loss": 0.5, "train_history": [],
                 "data_position": {"epoch": 1, "batch_in_epoch": 5, "steps_per_epoch": 9}}, "run.pt")
    assert CODE not in codes(run(path))


# --- Lightning ----------------------------------------------------------------------------------

AUTOMATIC_STEPS = ("epoch_loop.automatic_optimization.optim_progress", "optimizer", "step", "total")


def lightning(tmp_path: Path, optimizer_steps: int | None = None, **changes: Any) -> Path:
    """The real mid-epoch checkpoint (epoch 1, global_step 4, 4 batches) with some counters changed."""
    tree = torch.load(REAL / "lightning" / "mid_epoch" / "epoch=1-step=4.ckpt", weights_only=True)
    tree.update(changes)
    if optimizer_steps is not None:
        counter = tree["loops"]["fit_loop"]
        for key in AUTOMATIC_STEPS:
            counter = counter[key]
        counter["completed"] = optimizer_steps
    path = tmp_path / "last.ckpt"
    torch.save(tree, path)
    return path


def test_lightning_epoch_disagreeing_with_its_loops_is_reported(tmp_path: Path) -> None:
    finding = only(run(lightning(tmp_path, epoch=3)), CODE)
    assert finding.severity is Severity.WARNING
    assert finding.where == "last.ckpt: epoch"
    assert finding.message.startswith("'epoch' = 3 but loops.fit_loop.epoch_progress.current.completed = 1: "
                                      "Lightning writes both from its current_epoch")
    assert finding.fix.endswith("last.ckpt --epoch 2 --step 1")


def test_lightning_global_step_disagreeing_with_the_loops_optimizer_steps_is_reported(tmp_path: Path) -> None:
    finding = only(run(lightning(tmp_path, global_step=5)), CODE)
    assert finding.severity is Severity.WARNING
    assert finding.where == "last.ckpt: global_step"
    assert finding.message.startswith(
        "global_step = 5 but loops.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total"
        ".completed = 4: Lightning writes global_step from that optimizer-step counter (gradient accumulation "
        "included), so they cannot both be true; a resume takes the loops' 4 steps")
    assert finding.fix is None          # which of the two is right cannot be told


def test_lightning_optimizer_steps_in_the_loops_disagreeing_with_global_step_are_reported(tmp_path: Path) -> None:
    finding = only(run(lightning(tmp_path, optimizer_steps=3)), CODE)
    assert "global_step = 4 but loops.fit_loop.epoch_loop.automatic_optimization" in finding.message
    assert "a resume takes the loops' 3 steps" in finding.message


def test_lightning_manual_optimization_is_checked_against_its_own_step_counter(tmp_path: Path) -> None:
    # Written by Lightning: manual optimization stepping every second batch, 3 steps after 7 batches.
    tree = torch.load(REAL / "lightning_manual" / "every_step" / "epoch=1-step=3.ckpt", weights_only=True)
    assert CODE not in codes(run(REAL / "lightning_manual" / "every_step" / "epoch=1-step=3.ckpt"))
    tree["global_step"] = 7                      # the batch count: what a confused writer might store
    torch.save(tree, tmp_path / "last.ckpt")
    finding = only(run(tmp_path / "last.ckpt"), CODE)
    assert finding.message.startswith("global_step = 7 but loops.fit_loop.epoch_loop.manual_optimization."
                                      "optim_step_progress.total.completed = 3: ")


@settings(max_examples=15, deadline=None)
@given(global_step=st.integers(0, 4), optimizer_steps=st.integers(0, 4))
def test_lightning_global_step_is_reported_exactly_when_it_differs_from_the_loops_count(
        global_step: int, optimizer_steps: int) -> None:
    # At most the 4 batches this checkpoint processed, so only the two step counters can disagree.
    with tempfile.TemporaryDirectory() as tmp:      # a fresh path per example: files are mapped once
        path = lightning(Path(tmp), optimizer_steps=optimizer_steps, global_step=global_step)
        assert (CODE in codes(run(path))) == (global_step != optimizer_steps)


def test_validate_json_shows_the_lightning_step_finding(tmp_path: Path) -> None:
    path = lightning(tmp_path, global_step=5)
    result = CliRunner().invoke(main, ["validate", str(path), "--json", "--fail-on", "warning"])
    assert result.exit_code == 1, result.output
    [finding] = [f for f in json.loads(result.output)["findings"] if f["code"] == CODE]
    assert (finding["severity"], finding["where"], finding["fix"]) == ("warning", "last.ckpt: global_step", None)
    assert finding["message"].startswith("global_step = 5 but loops.fit_loop.epoch_loop.automatic_optimization")


def test_lightning_global_step_above_the_batches_processed_is_reported(tmp_path: Path) -> None:
    # The loops' optimizer-step counter edited along with global_step: only the batches disagree.
    finding = only(run(lightning(tmp_path, optimizer_steps=9, global_step=9)), CODE)
    assert finding.where == "last.ckpt: global_step"
    assert finding.message.startswith("global_step = 9 optimizer steps but loops.fit_loop batch progress has "
                                      "processed 4 batches in all")


def test_lightning_counters_as_written_are_quiet(tmp_path: Path) -> None:
    assert CODE not in codes(run(lightning(tmp_path)))


# --- EnStack: training_state.pth ---------------------------------------------------------------

def training_state(save: Any, state: dict[str, Any], optimizer_steps: int, **counters: Any) -> Path:
    optimizer = state["optimizer_state_dict"]
    for entry in optimizer["state"].values():
        entry["step"] = torch.tensor(float(optimizer_steps))
    return save({**counters, "best_val_f1": 0.0667, "best_val_acc": 0.5, "optimizer_state_dict": optimizer,
                 "scheduler_state_dict": state["scheduler_state_dict"]}, "training_state.pth")


def test_seed_003_position_behind_the_optimizers_steps_is_reported(save: Any, state: dict[str, Any]) -> None:
    # The seed's story: epoch 1 finished and 8 batches of epoch 2 ran, but the file says epoch 1, step 1000.
    path = training_state(save, state, 1278, epoch=1, step=1000, total_batches=1270)
    finding = only(run(path), CODE)
    assert finding.severity is Severity.WARNING
    assert finding.where == "training_state.pth: step"
    assert finding.message.startswith(
        "'epoch' = 1, 'step' = 1000, 'total_batches' = 1270 (epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)) is "
        "1000 batches into training, but the optimizer has taken 1278 steps: each step takes at least one "
        "batch, so they cannot both be true")
    assert "the optimizer's steps put the run at epoch 2, step 8 of it" in finding.message
    assert finding.fix.endswith("training_state.pth --epoch 2 --step 8")


def test_seed_003_step_zero_is_the_end_of_the_epoch_not_its_start(save: Any, state: dict[str, Any]) -> None:
    # Read naively, step = 0 is 0 batches of epoch 1 and 1270 optimizer steps would be impossible.
    assert CODE not in codes(run(training_state(save, state, 1270, epoch=1, step=0, total_batches=1270)))


def test_seed_003_optimizer_behind_the_position_is_quiet(save: Any, state: dict[str, Any]) -> None:
    # Gradient accumulation (unknown here) makes fewer steps than batches: nothing can be said.
    assert CODE not in codes(run(training_state(save, state, 500, epoch=1, step=1000, total_batches=1270)))
