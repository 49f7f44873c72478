"""The LlamaRec ranker's HF Trainer folders (real fixtures) and run-level findings through validate."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ckptkit.core.checkpoint import Severity
from ckptkit.validating import validate_path
from tests.validation.helpers import codes, only, run

REAL = Path(__file__).parent.parent / "fixtures" / "real"


def copy_checkpoint(src: str, tmp_path: Path, name: str | None = None) -> Path:
    """A writable copy of a real checkpoint folder, optionally renamed."""
    source = REAL / src
    target = tmp_path / (name or source.name)
    shutil.copytree(source, target)
    return target


def edit_trainer_state(folder: Path, **changes: Any) -> None:
    path = folder / "trainer_state.json"
    state = json.loads(path.read_text())
    state.update(changes)
    path.write_text(json.dumps(state))


def test_real_hf_checkpoints_have_no_warnings_or_errors() -> None:
    for kind in ("hf_full", "hf_lora"):
        report = run(REAL / kind / "checkpoint-8", deep=True)
        assert not report.fails(Severity.WARNING), [(f.code, f.message) for f in report.findings]


def test_folder_name_disagreeing_with_global_step(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_full/checkpoint-8", tmp_path, "checkpoint-12")
    finding = only(run(folder), "counters.hf-step-mismatch")
    assert finding.severity is Severity.ERROR
    assert finding.where == "checkpoint-12/trainer_state.json: global_step"
    assert finding.message.startswith("the folder name says step 12 but trainer_state.json has global_step = 8")
    assert finding.fix.endswith("checkpoint-12 --fix counters.hf-step-mismatch")


def test_log_history_running_past_global_step(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_full/checkpoint-8", tmp_path)
    state = json.loads((folder / "trainer_state.json").read_text())
    edit_trainer_state(folder, log_history=state["log_history"] + [{"step": 9, "loss": 1.0}])
    finding = only(run(folder), "counters.log-history-order")
    assert "log_history reaches step 9 but global_step = 8" in finding.message


def test_log_history_going_backwards(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_full/checkpoint-8", tmp_path)
    edit_trainer_state(folder, log_history=[{"step": 4, "loss": 1.0}, {"step": 2, "loss": 1.1}])
    assert "found step 2 after step 4" in only(run(folder), "counters.log-history-order").message


def test_missing_trainer_state_resumes_at_step_0(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_lora/checkpoint-8", tmp_path)
    (folder / "trainer_state.json").unlink()
    finding = only(run(folder), "folder.missing-trainer-state")
    assert finding.severity is Severity.ERROR
    assert "resume would restart at step 0" in finding.message


def test_lora_optimizer_for_another_set_of_trainable_parameters(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_lora/checkpoint-8", tmp_path)
    shutil.copy(REAL / "hf_full" / "checkpoint-8" / "optimizer.pt", folder / "optimizer.pt")
    finding = only(run(folder), "optimizer.adapter-mismatch")
    assert finding.where == "checkpoint-8/optimizer.pt: state"
    assert finding.message.startswith("optimizer state built for a different set of trainable parameters: expected "
                                      "4 entries shaped like the parameters of the adapter")
    assert "found 28" in finding.message and "(all of whose tensors are trainable)" in finding.message


def test_lora_optimizer_matching_its_adapter(tmp_path: Path) -> None:
    assert "optimizer.adapter-mismatch" not in codes(run(REAL / "hf_lora" / "checkpoint-8"))


def test_missing_rng_state_is_reported(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_lora/checkpoint-8", tmp_path)
    (folder / "rng_state.pth").unlink()
    assert "will not reproduce the data order" in only(run(folder), "folder.missing-rng").message


def test_a_missing_rank_among_per_rank_rng_states(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_full/checkpoint-8", tmp_path)
    rng = folder / "rng_state.pth"
    shutil.copy(rng, folder / "rng_state_0.pth")
    rng.rename(folder / "rng_state_2.pth")
    finding = only(run(folder), "rng.missing-rank")
    assert finding.where == "checkpoint-8/rng_state_1.pth"
    assert "expected one RNG state per rank 0..2, missing rank(s) 1" in finding.message


def test_seed_004_best_model_while_a_later_checkpoint_exists(samples: dict[str, Path]) -> None:
    report = validate_path(samples["best_model.pt"])          # siblings looked at by default
    finding = only(report, "run.best-not-latest")
    assert "Resuming from the best model repeats the training after it" in finding.message
    assert "run.best-not-latest" not in codes(validate_path(samples["best_model.pt"], siblings=False))


def test_seed_003_last_checkpoint_older_than_a_sibling(tmp_path: Path) -> None:
    run_dir = tmp_path / "codebert"
    last = copy_checkpoint("save_pretrained_training_state/last_checkpoint", run_dir)
    later = copy_checkpoint("save_pretrained_training_state/last_checkpoint", run_dir, "checkpoint-epoch-2")
    numpy_globals = [np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType]
    with torch.serialization.safe_globals(numpy_globals):          # best_val_f1 is a numpy float
        state = torch.load(later / "training_state.pth", weights_only=True)
    torch.save({**state, "epoch": 2, "step": 0, "best_val_f1": 0.2}, later / "training_state.pth")
    finding = only(validate_path(last), "run.stale-latest")
    assert "older than checkpoint-epoch-2" in finding.message


def test_a_damaged_config_json_beside_trainer_state(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_full/checkpoint-8", tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    finding = only(run(folder), "integrity.damaged-json")
    assert finding.where == "checkpoint-8/config.json"
    assert finding.message.startswith("expected a JSON document, found damaged bytes")
    assert "integrity.damaged-json" not in codes(run(REAL / "hf_full" / "checkpoint-8"))


# Trainer._load_optimizer_and_scheduler loads optimizer.pt and scheduler.pt only when both are
# there (checked with transformers 5.24: resuming hf_full/checkpoint-8 without scheduler.pt loads
# no optimizer state, and the learning rate ends at 1e-3 instead of 0).
LOST = "a resume starts the optimizer (Adam moments lost) and the learning-rate schedule (warmup again) from scratch"


def test_an_optimizer_without_its_scheduler_is_not_loaded_by_a_resume(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_full/checkpoint-8", tmp_path)
    (folder / "scheduler.pt").unlink()
    finding = only(run(folder), "folder.missing-scheduler")
    assert (finding.severity, finding.where) == (Severity.WARNING, "checkpoint-8/scheduler.pt")
    assert finding.message == (f"no scheduler.pt: the Trainer loads optimizer.pt only together with it, so {LOST}, "
                               "although optimizer.pt is here")


def test_a_scheduler_without_its_optimizer_is_not_loaded_either(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_lora/checkpoint-8", tmp_path)
    (folder / "optimizer.pt").unlink()
    finding = only(run(folder), "folder.missing-optimizer")
    assert finding.message == f"no optimizer.pt: the Trainer loads scheduler.pt only together with it, so {LOST}"
    assert "folder.missing-scheduler" not in codes(run(folder))


def test_a_save_only_model_checkpoint_says_why_it_resumes_from_scratch() -> None:
    report = run(REAL / "hf_save_only_model" / "checkpoint-4")
    finding = only(report, "folder.missing-optimizer")
    assert finding.severity is Severity.WARNING
    assert finding.message == f"TrainingArguments(save_only_model=True) saved only the model: {LOST}"
    assert "folder.missing-scheduler" not in codes(report)


def test_a_deepspeed_checkpoint_keeps_its_optimizer_in_global_step_folder(tmp_path: Path) -> None:
    """Trainer + DeepSpeed writes no optimizer.pt: the engine saves global_stepN/ and restores both."""
    folder = copy_checkpoint("hf_full/checkpoint-8", tmp_path)
    (folder / "optimizer.pt").unlink()
    (folder / "global_step8").mkdir()
    assert not {"folder.missing-optimizer", "folder.missing-scheduler"} & set(codes(run(folder)))


def test_an_fsdp_sharded_optimizer_folder_counts_as_the_optimizer(tmp_path: Path) -> None:
    folder = copy_checkpoint("hf_full/checkpoint-8", tmp_path)
    (folder / "optimizer.pt").unlink()
    (folder / "optimizer_0").mkdir()
    assert not {"folder.missing-optimizer", "folder.missing-scheduler"} & set(codes(run(folder)))
    (folder / "scheduler.pt").unlink()
    finding = only(run(folder), "folder.missing-scheduler")
    assert "the Trainer loads optimizer_0 only together with it" in finding.message
