from __future__ import annotations

import dataclasses
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from ckptkit.core.errors import MissingFileError, ResumeRefusedError
from ckptkit.storage.manifest import manifest_path
from ckptkit.training import CheckpointManager, load_for_resume, resolve_checkpoint, verify_for_resume


@dataclasses.dataclass
class ExperimentConfig:  # what run_experiment.py LM pickled into its checkpoints
    d_model: int = 64


def _save(run: Path, state, kinds=("periodic",)) -> Path:
    with CheckpointManager(run, keep_last=None) as manager:
        return manager.save(state, list(kinds))[0]


def test_a_whole_checkpoint_passes_with_no_warnings(tmp_path: Path, make_state) -> None:
    path = _save(tmp_path, make_state(step=5))
    assert verify_for_resume(path) == []


def test_a_truncated_checkpoint_is_refused_naming_both_sizes(tmp_path: Path, make_state) -> None:
    path = _save(tmp_path, make_state(step=5))
    size = path.stat().st_size
    os.truncate(path, size - 100)
    with pytest.raises(ResumeRefusedError) as refused:
        verify_for_resume(path)
    assert str(refused.value) == (
        f"{path}: does not match its manifest: checkpoint_step_5.pt: {size - 100} bytes on disk, "
        f"the manifest says {size} (truncated or overwritten)"
    )


def test_a_checkpoint_with_one_flipped_bit_is_refused(tmp_path: Path, make_state) -> None:
    path = _save(tmp_path, make_state(step=5))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ResumeRefusedError,
                       match=r"CRC-32 [0-9a-f]{8} on disk, the manifest says [0-9a-f]{8} \(bytes damaged\)"):
        verify_for_resume(path)


def test_damage_that_also_breaks_the_index_is_refused_as_a_manifest_mismatch_first(tmp_path: Path, make_state) -> None:
    # The CRC-32 pass runs beside the validation and the load; whichever fails first, the
    # refusal names the root cause: these bytes are not the ones that were written.
    path = _save(tmp_path, make_state(step=5))
    data = bytearray(path.read_bytes())
    start = data.index(b"data.pkl") + 200          # inside the pickled index, past its local header
    data[start: start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(ResumeRefusedError) as refused:
        verify_for_resume(path)
    assert "does not match its manifest" in str(refused.value) and "(bytes damaged)" in str(refused.value)


def test_a_truncated_checkpoint_without_manifest_is_refused_by_ckptkits_reader(tmp_path: Path, make_state) -> None:
    path = _save(tmp_path, make_state(step=5))
    manifest_path(path).unlink()
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(ResumeRefusedError, match=r"zip archive is truncated"):
        verify_for_resume(path)


def test_a_loadable_checkpoint_without_manifest_passes_with_a_warning(tmp_path: Path, make_state) -> None:
    path = _save(tmp_path, make_state(step=5))
    manifest_path(path).unlink()
    assert verify_for_resume(path) == ["no manifest: nothing confirms this checkpoint was written completely"]


def test_a_pickled_config_class_is_refused_with_the_repair_hint(tmp_path: Path) -> None:
    path = tmp_path / "best_model.pt"
    torch.save({"model_state_dict": {}, "optimizer_state_dict": {}, "global_step": 2000,
                "config": ExperimentConfig()}, path)
    with pytest.raises(ResumeRefusedError, match="`ckptkit repair` rewrites it as a plain dict"):
        verify_for_resume(path)


def test_a_seed_004_checkpoint_without_ckptkit_extras_warns_that_resume_is_not_exact(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_step_500.pt"
    torch.save({"model_state_dict": {}, "optimizer_state_dict": {}, "global_step": 500, "config": {}}, path)
    assert verify_for_resume(path) == [
        "no manifest: nothing confirms this checkpoint was written completely",
        "no data_position: the data order restarts at the beginning of an epoch; resume will not be exact",
        "no rng_state: random streams (dropout, sampling) will differ from the original run",
    ]


def test_missing_keys_and_temporary_files_and_absent_paths_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"global_step": 1}, path)
    with pytest.raises(ResumeRefusedError, match="missing model_state_dict, optimizer_state_dict; a resume needs them"):
        verify_for_resume(path)
    temporary = tmp_path / "best_model.pt.ckptkit-tmp-new-abc123"
    shutil.copy(path, temporary)
    with pytest.raises(ResumeRefusedError, match="temporary file of an interrupted write"):
        verify_for_resume(temporary)
    with pytest.raises(MissingFileError):
        verify_for_resume(tmp_path / "nothing.pt")


def test_a_run_directory_resolves_to_its_most_advanced_checkpoint_not_best_model(tmp_path: Path, make_state) -> None:
    _save(tmp_path, make_state(step=10, val_loss=1.0), ["best", "periodic"])
    _save(tmp_path, make_state(step=30, val_loss=2.0), ["periodic"])
    path, warnings = resolve_checkpoint(tmp_path)
    assert (path.name, warnings) == ("checkpoint_step_30.pt", [])


def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one_with_a_warning(tmp_path: Path, make_state) -> None:
    _save(tmp_path, make_state(step=10))
    newest = _save(tmp_path, make_state(step=20))
    os.truncate(newest, 1000)
    (tmp_path / "checkpoint_step_30.pt").write_bytes(b"interrupted")  # no manifest: a save that never finished
    path, warnings = resolve_checkpoint(tmp_path)
    assert path.name == "checkpoint_step_10.pt"
    assert warnings[0] == "checkpoint_step_30.pt: left by an interrupted save (no manifest); not used"
    assert warnings[1].startswith("skipped checkpoint_step_20.pt, newer but unusable: does not match its manifest")


def test_a_run_directory_without_a_complete_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_step_5.pt").write_bytes(b"half")
    with pytest.raises(ResumeRefusedError, match="no complete, valid checkpoint in this run directory"):
        resolve_checkpoint(tmp_path)


def test_restore_brings_back_weights_optimizer_scheduler_gradients_and_random_streams(
        tmp_path: Path, make_state) -> None:
    state = make_state(step=7, micro_step=1, val_loss=1.25)
    random.seed(4)
    torch.manual_seed(4)
    path = _save(tmp_path, state, ["interrupt"])
    expected_draws = (random.random(), torch.rand(2).tolist())
    fresh = make_state(step=0)
    torch.manual_seed(99), random.seed(99)
    progress = load_for_resume(path).restore(fresh.model, fresh.optimizer, fresh.scheduler)
    assert (random.random(), torch.rand(2).tolist()) == expected_draws
    for a, b in zip(state.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    saved_opt, fresh_opt = state.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert all(torch.equal(saved_opt["state"][i]["exp_avg_sq"], fresh_opt["state"][i]["exp_avg_sq"])
               for i in saved_opt["state"])
    assert fresh.scheduler.state_dict() == state.scheduler.state_dict()
    assert (progress.global_step, progress.best_val_loss, progress.window_loss_sum) == (7, 1.25, 0.75)
    assert progress.position == state.position and progress.warnings == []


def test_a_checkpoint_for_another_model_is_refused_naming_the_keys(tmp_path: Path, make_state) -> None:
    path = _save(tmp_path, make_state(step=1))
    other = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(ResumeRefusedError, match=r"unexpected \['2.weight', '2.bias'\]"):
        load_for_resume(path).restore(other, torch.optim.AdamW(other.parameters()))


def test_a_scheduler_the_checkpoint_lacks_is_a_warning_not_an_error(tmp_path: Path, make_state) -> None:
    state = make_state(step=1)
    state.scheduler = None
    path = _save(tmp_path, state)
    fresh = make_state()
    progress = load_for_resume(path).restore(fresh.model, fresh.optimizer, fresh.scheduler)
    assert progress.warnings == ["this run has a scheduler but the checkpoint has no scheduler state; it starts fresh"]
