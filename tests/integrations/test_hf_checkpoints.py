"""Which checkpoint-N/ folder a ranker run resumes from, and which folders rotation keeps."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ckptkit.core.errors import ResumeRefusedError
from ckptkit.integrations.hf import verified_checkpoint
from ckptkit.integrations.hf_checkpoints import rotate
from ckptkit.storage.manifest import Manifest, describe_files, manifest_path, write_manifest
from tests.integrations.hf_runs import small_config, train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(small_config(), out)    # checkpoints 1..5, all kept; the best is checkpoint-2
    return out


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def test_a_clean_run_resumes_from_its_newest_folder(run: Path) -> None:
    assert verified_checkpoint(run) == str(run / "checkpoint-5")


def test_a_bit_flipped_newest_folder_is_passed_over_with_a_message(run: Path) -> None:
    weights = run / "checkpoint-5" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"passed over checkpoint-5: integrity.manifest-mismatch: "
                                         r"checkpoint-5/adapter_model.safetensors: CRC-32 \w+ on disk"):
        assert verified_checkpoint(run) == str(run / "checkpoint-4")
    from transformers.trainer_utils import get_last_checkpoint
    assert get_last_checkpoint(str(run)) == str(run / "checkpoint-5")   # what Trainer itself would load


def test_a_half_written_newest_folder_is_passed_over_with_a_message(run: Path) -> None:
    # a crash inside Trainer's save: no trainer_state.json yet, and so no manifest
    (run / "checkpoint-5" / "trainer_state.json").unlink()
    manifest_path(run / "checkpoint-5").unlink()
    with pytest.warns(UserWarning, match=r"passed over checkpoint-5: folder.missing-trainer-state"):
        assert verified_checkpoint(run) == str(run / "checkpoint-4")


def test_a_folder_whose_save_never_confirmed_it_is_passed_over_in_a_run(run: Path) -> None:
    manifest_path(run / "checkpoint-5").unlink()   # died between Trainer's save and the manifest
    with pytest.warns(UserWarning, match=r"passed over checkpoint-5: no checkpoint-5.manifest.json"):
        assert verified_checkpoint(run) == str(run / "checkpoint-4")


def test_a_named_folder_with_validation_errors_is_refused(run: Path) -> None:
    (run / "checkpoint-5" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(ResumeRefusedError, match="checkpoint-5.manifest.json: checkpoint-5/optimizer.pt: 0 bytes"):
        verified_checkpoint(run / "checkpoint-5")


def test_an_output_dir_without_checkpoints_starts_fresh(tmp_path: Path) -> None:
    assert verified_checkpoint(tmp_path) is None


def _folder(out: Path, step: int, verified: bool) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * step)
    if verified:
        write_manifest(folder, Manifest(checkpoint=folder.name, files=describe_files(folder), global_step=step))
    return folder


def test_rotation_keeps_the_newest_verified_folder_and_the_best_where_trainer_deletes_it(tmp_path: Path) -> None:
    from ckptkit.integrations.hf import _trainer_rotate

    for out in (tmp_path / "ckptkit", tmp_path / "trainer"):
        _folder(out, 3, verified=True)       # the best
        _folder(out, 6, verified=True)       # the newest verified
        _folder(out, 9, verified=False)      # just saved, failed verification
    deleted = rotate(tmp_path / "ckptkit", 1, str(tmp_path / "ckptkit" / "checkpoint-3"))
    assert deleted == []
    _trainer_rotate(str(tmp_path / "trainer"), 1, str(tmp_path / "trainer" / "checkpoint-3"), False)
    assert sorted(p.name for p in (tmp_path / "trainer").glob("checkpoint-?")) == ["checkpoint-3", "checkpoint-9"]


def test_rotation_deletes_the_oldest_beyond_the_limit_and_their_manifests(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4, 5):
        _folder(tmp_path, step, verified=True)
    # as Trainer counts it: the best is one of the `limit` kept
    assert [p.name for p in rotate(tmp_path, 3, str(tmp_path / "checkpoint-1"))] == ["checkpoint-2", "checkpoint-3"]
    assert sorted(os.listdir(tmp_path)) == [f"checkpoint-{s}{m}" for s in (1, 4, 5) for m in ("", ".manifest.json")]


def test_a_ranker_run_never_rotates_away_its_last_verified_folder(tmp_path: Path) -> None:
    from transformers import TrainerCallback

    from trainers.ranker import StopAt, build_trainer

    class DamageSave(TrainerCallback):   # a save whose optimizer.pt came out empty (disk full)
        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 2:
                (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(b"")

    trainer, exact = build_trainer(small_config(save_total_limit=1), tmp_path, "cpu")
    callbacks = trainer.callback_handler.callbacks
    callbacks.insert(callbacks.index(exact), DamageSave())
    trainer.add_callback(StopAt(2, None))
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")  # Trainer would keep only this
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-1.manifest.json", "checkpoint-2"]
    with pytest.warns(UserWarning, match="passed over checkpoint-2"):
        assert verified_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")


def test_ckptkit_itself_never_imports_transformers() -> None:
    import subprocess
    import sys

    code = ("import sys, ckptkit, ckptkit.cli, ckptkit.runs.resuming, ckptkit.validation, ckptkit.repair.hf_trainer; "
            "print(sorted(m for m in ('transformers', 'peft', 'accelerate') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.strip() == "[]", proc.stderr


def test_fix_epoch_on_a_ranker_folder_renews_its_manifest(run: Path) -> None:
    from ckptkit.core.checkpoint import Severity
    from ckptkit.repair.hf_trainer import fix_epoch_hf
    from ckptkit.storage.manifest import read_manifest
    from ckptkit.validation import validate_path

    result = fix_epoch_hf(run / "checkpoint-4", 2, None, dry_run=False, backup=None, keep_backup=True)
    assert result.written
    assert read_manifest(run / "checkpoint-4").global_step == 6   # 2 complete epochs x 3 steps
    errors = [f.code for f in validate_path(run / "checkpoint-4", deep=True).findings if f.severity is Severity.ERROR]
    assert errors == ["counters.hf-step-mismatch"]   # the folder rename fix-epoch leaves to the user; no manifest error
