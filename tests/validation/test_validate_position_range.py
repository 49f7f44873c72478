"""counters.position-out-of-range / counters.step-past-epoch-end: a stored position outside its range."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.cli import main
from ckptkit.core.checkpoint import Severity
from ckptkit.core.errors import ResumeRefusedError
from ckptkit.repair import fix_epoch
from ckptkit.training import DataPosition, TrainingState
from ckptkit.training.layout import build_checkpoint
from ckptkit.training.resume import verify_for_resume
from ckptkit.validation.epoch_step import CODE as EPOCH_STEP
from ckptkit.validation.position_range import OUT_OF_RANGE, PAST_END
from tests.validation.helpers import codes, only, run

RANGE_CODES = {OUT_OF_RANGE, PAST_END}
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def trainer_checkpoint(save: Any, state: dict[str, Any], global_step: int | None = 7, **position: int) -> Path:
    """ckptkit's trainer layout: 9 batches per epoch, 2 per optimizer step, at batch 14 (step 7)."""
    where = {"epoch": 1, "batch_in_epoch": 5, "steps_per_epoch": 9, "micro_step": 0, "grad_accum": 2,
             "sampler_seed": 0, "batch_size": 2, "world_size": 1, **position}
    tree = {**state, "epoch": where["epoch"], "best_val_loss": 0.5, "config": {"max_steps": 100},
            "train_history": [], "val_history": [], "data_position": where}
    if global_step is not None:
        tree["global_step"] = global_step
    return save(tree, "checkpoint_step_7.pt")


def test_a_batch_index_equal_to_steps_per_epoch_is_past_the_epochs_end(save: Any, state: dict[str, Any]) -> None:
    path = trainer_checkpoint(save, state, 9, batch_in_epoch=9, micro_step=0)    # 1 x 9 + 9 = 18 = 9 x 2
    finding = only(run(path), PAST_END)
    assert finding.severity is Severity.ERROR
    assert finding.where == "checkpoint_step_7.pt: data_position.batch_in_epoch"
    assert finding.message.startswith(
        "expected batch_in_epoch < steps_per_epoch = 9, found batch_in_epoch = 9 in epoch = 1: the trainer records "
        "an epoch's end as (epoch + 1, batch_in_epoch 0), never as steps_per_epoch; this reads as an unfinished "
        "epoch with all its batches done")
    assert finding.message.endswith("The fix command records 2 epochs complete, from global_step = 9 x "
                                    "grad_accum = 2 = 18 batches")
    assert finding.fix.endswith("checkpoint_step_7.pt --epoch 2 --complete")
    assert EPOCH_STEP not in codes(run(path))


def test_the_fix_command_leaves_a_position_validate_accepts(save: Any, state: dict[str, Any]) -> None:
    path = trainer_checkpoint(save, state, 10, batch_in_epoch=12)
    fix = only(run(path), PAST_END).fix
    assert fix.endswith("--epoch 3 --step 2")                # global_step 10 x 2 = 20 batches = 2 x 9 + 2
    fix_epoch(path, 3, step=2, keep_backup=False)
    assert torch.load(path, weights_only=True)["data_position"]["batch_in_epoch"] == 2
    report = run(path)
    assert not codes(report) & (RANGE_CODES | {EPOCH_STEP}), [f.message for f in report.findings]


def test_a_batch_index_beyond_the_epoch_says_which_batches_would_repeat(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(trainer_checkpoint(save, state, None, batch_in_epoch=12)), PAST_END)
    assert ("the sampler would start the next epoch at its first batch, repeating the 3 batches of it this "
            "position counts as consumed") in finding.message
    # Without global_step the stored batches are carried over the epoch's end: 1 x 9 + 12 = 21.
    assert finding.message.endswith("The fix command records epoch 3, step 3 of it, from epoch = 1 x "
                                    "steps_per_epoch = 9 + batch_in_epoch = 12 = 21 batches")
    assert finding.fix.endswith("--epoch 3 --step 3")


def test_a_negative_batch_index_is_out_of_range(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(trainer_checkpoint(save, state, batch_in_epoch=-1)), OUT_OF_RANGE)
    assert finding.severity is Severity.ERROR
    assert finding.where == "checkpoint_step_7.pt: data_position.batch_in_epoch"
    assert finding.message.startswith("expected 0 <= batch_in_epoch < steps_per_epoch = 9, found "
                                      "batch_in_epoch = -1: a batch count cannot be negative")
    assert finding.fix.endswith("--epoch 2 --step 5")       # global_step 7 x 2 = 14 batches


def test_a_micro_step_outside_the_accumulation_window_is_out_of_range(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(trainer_checkpoint(save, state, micro_step=2)), OUT_OF_RANGE)
    assert finding.where == "checkpoint_step_7.pt: data_position.micro_step"
    assert finding.message.startswith(
        "expected 0 <= micro_step < grad_accum = 2, found micro_step = 2: the trainer steps the optimizer when "
        "micro_step + 1 reaches grad_accum, so a resume from here would step it after the wrong number of batches")
    assert finding.fix.endswith("--epoch 2 --step 5")


def test_an_epoch_without_batches_has_no_fix_to_offer(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(trainer_checkpoint(save, state, steps_per_epoch=0)), OUT_OF_RANGE)
    assert finding.where == "checkpoint_step_7.pt: data_position.steps_per_epoch"
    assert "expected steps_per_epoch >= 1, found 0" in finding.message
    assert finding.message.endswith("No position can be derived from the other counters: resume from "
                                    "another checkpoint")
    assert finding.fix is None


def test_a_position_inside_its_ranges_is_quiet(save: Any, state: dict[str, Any]) -> None:
    report = run(trainer_checkpoint(save, state, 7, micro_step=0))
    assert not codes(report) & RANGE_CODES


def test_resume_refuses_an_out_of_range_position(save: Any, state: dict[str, Any]) -> None:
    with pytest.raises(ResumeRefusedError, match="counters.step-past-epoch-end"):
        verify_for_resume(trainer_checkpoint(save, state, 9, batch_in_epoch=9))


def test_validate_json_shows_the_finding_and_exits_1(save: Any, state: dict[str, Any]) -> None:
    path = trainer_checkpoint(save, state, micro_step=3)
    result = CliRunner().invoke(main, ["validate", str(path), "--json"])
    assert result.exit_code == 1, result.output
    findings = [f for f in json.loads(result.output)["findings"] if f["code"] == OUT_OF_RANGE]
    assert [(f["severity"], f["where"], f["fix"]) for f in findings] == [
        ("error", "checkpoint_step_7.pt: data_position.micro_step", f"ckptkit fix-epoch {path} --epoch 2 --step 5")]


# --- EnStack: training_state.pth -------------------------------------------------------------

def training_state(save: Any, state: dict[str, Any], **counters: Any) -> Path:
    return save({**counters, "best_val_f1": 0.0667, "best_val_acc": 0.5,
                 "optimizer_state_dict": state["optimizer_state_dict"],
                 "scheduler_state_dict": state["scheduler_state_dict"]}, "training_state.pth")


def test_seed_003_negative_step_is_out_of_range_not_an_incomplete_epoch(save: Any, state: dict[str, Any]) -> None:
    report = run(training_state(save, state, epoch=1, step=-5, total_batches=1270))
    finding = only(report, OUT_OF_RANGE)
    assert (finding.severity, finding.where) == (Severity.ERROR, "training_state.pth: step")
    assert finding.message.startswith("expected 0 <= step <= total_batches = 1270, found step = -5")
    assert "counters.incomplete-epoch" not in codes(report)


def test_seed_003_total_batches_of_zero_is_out_of_range(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(training_state(save, state, epoch=1, step=3, total_batches=0)), OUT_OF_RANGE)
    assert finding.where == "training_state.pth: total_batches"
    assert finding.message.startswith("expected total_batches >= 1, found 0")


def test_seed_003_positions_inside_the_epoch_are_quiet(save: Any, state: dict[str, Any]) -> None:
    for step in (0, 1000, 1270):
        assert not codes(run(training_state(save, state, epoch=1, step=step, total_batches=1270))) & RANGE_CODES


# --- properties ---------------------------------------------------------------------------------

def _trainer_file(tmp: Path, position: DataPosition, global_step: int) -> Path:
    model = torch.nn.Linear(2, 2)
    state = TrainingState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config={},
                          position=position, global_step=global_step)
    path = tmp / "checkpoint_step_1.pt"
    torch.save(build_checkpoint(state, {}, "periodic"), path)
    return path


@SETTINGS
@given(per_epoch=st.integers(1, 12), accum=st.integers(1, 4), batches=st.integers(0, 80))
def test_any_position_the_sampler_reaches_never_trips_it(per_epoch: int, accum: int, batches: int) -> None:
    position = DataPosition(0, 0, per_epoch, 0, accum, sampler_seed=1, batch_size=2)
    for _ in range(batches):
        position = position.advanced()
    with tempfile.TemporaryDirectory() as tmp:
        assert not codes(run(_trainer_file(Path(tmp), position, batches // accum))) & RANGE_CODES


@SETTINGS
@given(per_epoch=st.integers(1, 12), accum=st.integers(1, 4), epoch=st.integers(0, 5),
       batch=st.integers(-30, 30), micro=st.integers(-5, 8))
def test_a_position_is_reported_exactly_when_a_counter_leaves_its_range(
        per_epoch: int, accum: int, epoch: int, batch: int, micro: int) -> None:
    position = DataPosition(epoch, batch, per_epoch, micro, accum, sampler_seed=1, batch_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        found = codes(run(_trainer_file(Path(tmp), position, 3)))
    assert (PAST_END in found) == (batch >= per_epoch)
    assert (OUT_OF_RANGE in found) == (batch < 0 or not 0 <= micro < accum)
