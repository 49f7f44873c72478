"""Progress counters: EnStack's epoch/step/total_batches, the fashion recommender's epoch+1, file names, max_steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Severity
from ckptkit.formats import open_checkpoint
from tests.validation.helpers import codes, only, run


def training_state(save: Any, state: dict[str, Any], **counters: Any) -> Path:
    """EnStack's training_state.pth beside save_pretrained weights, with the given counters."""
    path = save({**counters, "best_val_f1": 0.0667, "best_val_acc": 0.5,
                 "optimizer_state_dict": state["optimizer_state_dict"],
                 "scheduler_state_dict": state["scheduler_state_dict"]}, "training_state.pth")
    (path.parent / "model.safetensors").write_bytes(b"")    # only its presence is checked
    return path


def test_seed_003_mid_epoch_checkpoint_says_how_far_the_epoch_got(samples: dict[str, Path]) -> None:
    report = run(samples["training_state.pth"])
    finding = only(report, "counters.incomplete-epoch")
    assert finding.severity is Severity.INFO
    assert finding.where == "training_state.pth: step"
    assert finding.message.startswith("epoch 1 incomplete, 78.7% done (1000/1270 batches); "
                                      "resume continues epoch 1 at batch 1000")
    assert finding.fix.endswith("training_state.pth --epoch 1 --complete")
    assert finding.fix.startswith("ckptkit fix-epoch ")


def test_an_epoch_boundary_with_total_batches_is_not_reported(save: Any, state: dict[str, Any]) -> None:
    report = run(training_state(save, state, epoch=1, step=0, total_batches=1270))
    assert not codes(report) & {"counters.incomplete-epoch", "counters.ambiguous-step-zero",
                                "counters.step-past-epoch-end"}


def test_step_zero_without_total_batches_is_called_ambiguous(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(training_state(save, state, epoch=2, step=0)), "counters.ambiguous-step-zero")
    assert finding.severity is Severity.WARNING
    assert "step = 0 without total_batches is ambiguous" in finding.message
    assert "end of epoch 2" in finding.message and "'epoch 2 not started'" in finding.message


def test_a_step_beyond_total_batches_is_an_error(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(training_state(save, state, epoch=1, step=1300, total_batches=1270)),
                   "counters.step-past-epoch-end")
    assert finding.severity is Severity.ERROR
    assert "expected step <= total_batches = 1270, found step = 1300" in finding.message


def test_seed_000_without_epoch_says_resume_restarts_at_epoch_0(save: Any, state: dict[str, Any]) -> None:
    path = save({"model_state_dict": state["model_state_dict"],
                 "optimizer_state_dict": state["optimizer_state_dict"]}, "checkpoint-recent.pth")
    finding = only(run(path), "counters.missing-epoch")
    assert "resume would restart at epoch 0" in finding.message
    assert finding.fix.endswith("checkpoint-recent.pth --fix counters.missing-epoch")


def test_seed_000_with_epoch_has_no_missing_epoch(samples: dict[str, Path]) -> None:
    assert "counters.missing-epoch" not in codes(run(samples["checkpoint-recent.pth"]))


def test_the_fashion_recommenders_epoch_convention_is_said_by_the_resume_prediction_not_a_finding(
        samples: dict[str, Path]) -> None:
    assert "counters.epoch-plus-one" not in codes(run(samples["retrieval"]))
    resume = open_checkpoint(samples["retrieval"]).progress.resume
    assert resume is not None
    assert resume.describe().startswith("fashion recommender's resume_training.py --checkpoint starts the 11th "
                                        "epoch at batch 0")


def retrieval(save: Any, state: dict[str, Any], name: str, epoch: int = 10, recall: float = 0.3456) -> Path:
    return save({"epoch": epoch, **state, "loss": 0.48, "recall_at_10": recall,
                 "train_losses": [0.9, 0.5], "val_recalls": [0.2, recall]}, name)


def test_seed_001_file_name_epoch_disagreeing_with_contents(save: Any, state: dict[str, Any]) -> None:
    path = retrieval(save, state, "optimized_model_epoch_12_recall_0.3456.pt", epoch=10)
    finding = only(run(path), "counters.filename-mismatch")
    assert finding.where == "optimized_model_epoch_12_recall_0.3456.pt: epoch"
    assert "the file name says epoch 12 but the file stores 'epoch' = 10" in finding.message


def test_seed_001_file_name_recall_disagreeing_with_contents(save: Any, state: dict[str, Any]) -> None:
    path = retrieval(save, state, "optimized_model_epoch_10_recall_0.4000.pt", recall=0.3456)
    finding = only(run(path), "counters.filename-mismatch")
    assert "the file name says recall 0.4000 but the file stores 'recall_at_10' = 0.3456" in finding.message


def test_seed_001_file_name_matching_contents_is_quiet(samples: dict[str, Path]) -> None:
    assert "counters.filename-mismatch" not in codes(run(samples["retrieval"]))


def experiment(save: Any, state: dict[str, Any], name: str, step: int, max_steps: int = 2000) -> Path:
    return save({**state, "global_step": step, "epoch": 0, "best_val_loss": 0.39,
                 "config": {"max_steps": max_steps}, "train_history": [1.0], "val_history": []}, name)


def test_seed_004_step_file_name_disagreeing_with_global_step(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(experiment(save, state, "checkpoint_step_700.pt", 500)), "counters.filename-mismatch")
    assert "the file name says step 700 but the file stores global step 500" in finding.message


def test_seed_004_checkpoint_at_max_steps_would_finish_immediately(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(experiment(save, state, "checkpoint_step_2000.pt", 2000)), "counters.past-max-steps")
    assert finding.severity is Severity.INFO
    assert "global step 2000 is at or past max_steps = 2000" in finding.message
    assert "resume would finish immediately; extend the step budget" in finding.message


def test_seed_004_final_model_at_max_steps_is_reported(samples: dict[str, Path]) -> None:
    assert "global step 2000 is at or past max_steps = 2000" in only(run(samples["final_model.pt"]),
                                                                    "counters.past-max-steps").message


def test_seed_004_checkpoint_before_max_steps_has_budget_left(samples: dict[str, Path]) -> None:
    assert "counters.past-max-steps" not in codes(run(samples["checkpoint_step_1000.pt"]))


def test_optimizer_that_stepped_more_than_global_step_is_an_error(save: Any, state: dict[str, Any]) -> None:
    finding = only(run(experiment(save, state, "run.pt", 1)), "counters.optimizer-ahead")
    assert "the optimizer has taken 2 steps but global step is 1" in finding.message


def test_scheduler_far_from_every_counter_is_reported(save: Any, state: dict[str, Any]) -> None:
    state["scheduler_state_dict"]["last_epoch"] = 50
    finding = only(run(experiment(save, state, "run.pt", 2)), "counters.scheduler-position")
    assert finding.where == "run.pt: scheduler_state_dict.last_epoch"
    assert ("scheduler last_epoch = 50 matches none of the run's counters (optimizer steps 2, "
            "global step 2, epochs completed 0)") in finding.message


def test_consistent_counters_give_no_counter_findings(save: Any, state: dict[str, Any]) -> None:
    report = run(experiment(save, state, "checkpoint_step_2.pt", 2))
    assert not [c for c in codes(report) if c.startswith("counters.")]
