"""What transformers' Trainer does with a checkpoint-N/ folder on resume, as `inspect` predicts it:
epochs_trained = global_step // updates per epoch, then (global_step % updates per epoch) x
gradient_accumulation_steps batches of the next epoch skipped (trainer.py, _inner_training_loop)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ckptkit.formats import open_checkpoint
from tests.run_builders import REAL


def test_a_mid_epoch_trainer_folder_skips_the_batches_of_its_optimizer_steps_times_accumulation() -> None:
    ckpt = open_checkpoint(REAL / "hf_full" / "checkpoint-4")   # 5 updates per epoch, accumulation 2
    resume = ckpt.progress.resume
    assert resume is not None
    assert (resume.system, resume.start_epoch, resume.start_batch, resume.global_step) == ("HF Trainer", 1, 8, 4)
    assert resume.restores == ["optimizer", "scheduler", "scaler", "RNG"]
    assert any("restore_callback_states_from_checkpoint=True" in lost for lost in resume.loses)
    assert resume.describe().startswith(
        "HF Trainer's train(resume_from_checkpoint=...) starts the 1st epoch at batch 8")


def test_a_finished_trainer_folder_is_predicted_to_stop_at_once() -> None:
    resume = open_checkpoint(REAL / "hf_full" / "checkpoint-10").progress.resume
    assert resume is not None and resume.start_epoch is None and resume.global_step == 10
    assert resume.loses == ["training already reached max_steps: train() ends at once unless max_steps or "
                            "num_train_epochs is raised"]


def test_a_folder_saved_with_exact_resume_loses_neither_patience_nor_data_order(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(REAL / "hf_full" / "checkpoint-4", folder)
    (folder / "ckptkit_resume.json").write_text(json.dumps({"ckptkit": {"trainer": "ranker"}}))
    resume = open_checkpoint(folder).progress.resume
    assert resume is not None and (resume.start_epoch, resume.start_batch) == (1, 8) and resume.loses == []
