from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ckptkit.core.errors import CkptkitError, UnsupportedFeatureError
from ckptkit.formats import open_checkpoint
from ckptkit.repair import fix_epoch
from ckptkit.validating import validate_path
from tests.repair.conftest import REAL


def _counters(path: Path, *keys: str) -> dict:
    tree = torch.load(path, weights_only=True)
    return {k: tree.get(k) for k in keys}


def test_enstack_epoch_1_complete_sets_step_to_total_batches_so_its_resume_starts_epoch_2(training_state: Path) -> None:
    original = training_state.read_bytes()
    result = fix_epoch(training_state, 1)
    assert result.written and result.status == "written"
    counters = _counters(training_state, "epoch", "step", "total_batches")
    assert counters == {"epoch": 1, "step": 1270, "total_batches": 1270}
    assert [(c.key, c.before, c.after) for c in result.plan.changes] == [("step", 1000, 1270)]
    assert result.plan.progress_before == "epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)"
    assert result.plan.progress_after == "epoch 1 complete"
    backup = training_state.with_name("training_state.pth.bak")
    assert result.backups == [str(backup)] and backup.read_bytes() == original


def test_running_fix_epoch_twice_writes_nothing_the_second_time(training_state: Path) -> None:
    fix_epoch(training_state, 1)
    after_first = training_state.read_bytes()
    again = fix_epoch(training_state, 1)
    assert not again.written and again.status == "already consistent, nothing written"
    assert training_state.read_bytes() == after_first
    assert not training_state.with_name("training_state.pth.bak.1").exists()


def test_a_seed_003_folder_is_fixed_through_its_training_state_file(training_state: Path) -> None:
    result = fix_epoch(training_state.parent, 2, step=300)
    assert result.plan.path == str(training_state)
    assert _counters(training_state, "epoch", "step") == {"epoch": 2, "step": 300}
    assert open_checkpoint(training_state).progress.describe() == "epoch 2 INCOMPLETE: 300/1270 batches (23.6%)"


def test_a_step_past_the_end_of_the_epoch_is_refused_and_nothing_is_written(training_state: Path) -> None:
    before = training_state.read_bytes()
    with pytest.raises(UnsupportedFeatureError, match="not inside an epoch of total_batches = 1270"):
        fix_epoch(training_state, 2, step=1270)
    assert training_state.read_bytes() == before
    assert sorted(p.name for p in training_state.parent.iterdir()) == ["config.json", "model.safetensors",
                                                                      "training_state.pth"]


def test_a_step_past_the_trainers_steps_per_epoch_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    # ckptkit's trainer counts batch_in_epoch 0..steps_per_epoch-1; validate calls more counters.step-past-epoch-end.
    path = tmp_path / "checkpoint_step_7.pt"
    torch.save({"w": torch.ones(2), "global_step": 7, "epoch": 1, "best_val_loss": 0.5, "train_history": [],
                "data_position": {"epoch": 1, "batch_in_epoch": 5, "steps_per_epoch": 9, "micro_step": 0,
                                  "grad_accum": 2}}, path)
    before = path.read_bytes()
    with pytest.raises(UnsupportedFeatureError, match="not inside an epoch of steps_per_epoch = 9 batches"):
        fix_epoch(path, 2, step=9)
    assert path.read_bytes() == before
    fix_epoch(path, 2, step=8, keep_backup=False)
    assert torch.load(path, weights_only=True)["data_position"]["batch_in_epoch"] == 8


def test_llamarec_stores_the_number_of_epochs_finished(samples: Path) -> None:
    path = samples / "recsys" / "models" / "checkpoint-recent.pth"
    fix_epoch(path, 3, keep_backup=False)
    assert _counters(path, "epoch") == {"epoch": 3}
    assert open_checkpoint(path).progress.epochs_completed == 3
    assert not path.with_name("checkpoint-recent.pth.bak").exists()


def test_recsys_refuses_a_mid_epoch_position(samples: Path) -> None:
    with pytest.raises(UnsupportedFeatureError, match="LlamaRec saves 'epoch' = epochs finished"):
        fix_epoch(samples / "recsys" / "models" / "checkpoint-recent.pth", 3, step=10)


def test_retrieval_stores_epoch_plus_one_and_says_the_file_name_is_now_wrong(samples: Path) -> None:
    path = samples / "retrieval" / "checkpoints" / "optimized_model_epoch_10_recall_0.3456.pt"
    result = fix_epoch(path, 9)
    assert _counters(path, "epoch") == {"epoch": 9}
    assert any("the file name says epoch 10 but the file now records 9 epochs" in t for t in result.plan.cannot_fix)
    assert any("last_epoch = 2 was left as is" in t for t in result.plan.cannot_fix)


def test_experiment_epoch_changes_and_global_step_is_reported_not_guessed(samples: Path) -> None:
    path = samples / "experiment" / "checkpoints" / "checkpoint_step_1000.pt"
    result = fix_epoch(path, 2)
    tree = open_checkpoint(path).tree     # the pickled config keeps torch.load(weights_only=True) out
    assert (tree["epoch"], tree["global_step"]) == (2, 1000)
    assert any(t.startswith("global_step = 1000 was left as is") for t in result.plan.cannot_fix)


def test_a_legacy_file_is_rewritten_as_a_zip_archive_with_the_same_tensors(samples: Path) -> None:
    path = samples / "legacy" / "model_legacy.pt"
    before = torch.load(path, weights_only=True)
    result = fix_epoch(path, 7)
    assert open_checkpoint(path).format == "torch-zip"
    assert any("rewritten as a torch.save zip archive" in n for n in result.plan.notes)
    after = torch.load(path, weights_only=True)
    assert after["epoch"] == 7
    for key, tensor in before["model_state_dict"].items():
        assert torch.equal(after["model_state_dict"][key], tensor)


def test_safetensors_files_are_refused_with_where_progress_lives(samples: Path) -> None:
    path = samples / "enstack" / "checkpoints" / "codebert" / "last_checkpoint" / "model.safetensors"
    with pytest.raises(UnsupportedFeatureError, match="no training progress"):
        fix_epoch(path, 1)


def test_dry_run_plans_the_change_and_writes_nothing(training_state: Path) -> None:
    before = training_state.read_bytes()
    result = fix_epoch(training_state, 1, dry_run=True)
    assert result.status == "dry run, nothing written"
    assert [(c.key, c.before, c.after) for c in result.plan.changes] == [("step", 1000, 1270)]
    assert training_state.read_bytes() == before
    assert not training_state.with_name("training_state.pth.bak").exists()


def test_an_explicit_backup_path_is_used_and_never_overwritten(training_state: Path, tmp_path: Path) -> None:
    backup = tmp_path / "kept.pth"
    fix_epoch(training_state, 1, backup=backup)
    assert torch.load(backup, weights_only=True)["step"] == 1000
    with pytest.raises(CkptkitError, match="backup path already exists"):
        fix_epoch(training_state, 3, backup=backup)
    assert torch.load(training_state, weights_only=True)["epoch"] == 1


def test_lightning_epoch_end_is_written_the_way_lightning_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    shutil.copy(REAL / "lightning" / "mid_epoch" / "epoch=1-step=4.ckpt", path)
    assert open_checkpoint(path).progress.describe().startswith("epoch 2 INCOMPLETE")
    result = fix_epoch(path, 2)
    tree = torch.load(path, weights_only=True)
    assert tree["epoch"] == 1 and tree["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] is True
    assert open_checkpoint(path).progress.epochs_completed == 2
    assert any("Lightning's global_step" in t for t in result.plan.cannot_fix)


def test_hf_trainer_folder_gets_float_epoch_and_global_step_and_the_folder_name_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(REAL / "hf_full" / "checkpoint-4", folder)
    others = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "trainer_state.json"}
    result = fix_epoch(folder, 1)
    state = json.loads((folder / "trainer_state.json").read_text())
    assert (state["epoch"], state["global_step"]) == (1.0, 5)
    assert state["log_history"][0]["step"] == 2          # the rest of the file is kept
    assert any("mv" in t and "checkpoint-5" in t for t in result.plan.cannot_fix)
    assert {p.name: p.read_bytes() for p in folder.iterdir()
            if p.name not in ("trainer_state.json", "trainer_state.json.bak")} == others
    assert fix_epoch(folder, 1).status == "already consistent, nothing written"


def test_fixed_checkpoints_pass_validation_of_their_counters(training_state: Path) -> None:
    fix_epoch(training_state, 1)
    report = validate_path(training_state)
    assert [f.code for f in report.findings if f.code.startswith("counters.") and f.severity.rank >= 1] == []


def test_the_real_seed_003_file_with_numpy_scalars_is_fixed_and_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "training_state.pth"
    shutil.copy(REAL / "save_pretrained_training_state" / "last_checkpoint" / "training_state.pth", path)
    result = fix_epoch(path, 1)
    assert [(c.key, c.before, c.after) for c in result.plan.changes] == [("step", 4, 6)]
    tree = torch.load(path, weights_only=True)
    assert (tree["epoch"], tree["step"], tree["total_batches"], tree["best_val_f1"]) == (1, 6, 6, 0.0667)


def test_a_damaged_tensor_record_stops_the_rewrite_and_leaves_the_original(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "training_state.pth"
    torch.save({"epoch": 1, "step": 3, "total_batches": 10, "best_val_f1": 0.1,
                "model_state_dict": {"w": torch.arange(4096, dtype=torch.float32)}}, path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("training_state/data/0")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 200] ^= 0xFF        # a bit flip inside the record's data, CRC left stale
    path.write_bytes(bytes(raw))
    with pytest.raises(CkptkitError, match="data/0 read back with other bytes than the original record"):
        fix_epoch(path, 1)
    assert path.read_bytes() == bytes(raw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_state.pth"]


def _small_state(path: Path) -> bytes:
    torch.save({"epoch": 1, "step": 3, "total_batches": 10, "best_val_f1": 0.1,
                "model_state_dict": {"w": torch.arange(4096, dtype=torch.float32),
                                     "b": torch.ones(8)}}, path)
    return path.read_bytes()


def test_an_index_that_decodes_to_another_tree_is_refused_and_the_original_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle-writer bug (here: the index claims epoch 7 where 1 was intended) never lands."""
    from ckptkit.repair import rewrite

    path = tmp_path / "training_state.pth"
    original = _small_state(path)
    real_dumps = rewrite.dumps_tree

    def wrong_epoch(tree):
        data, storages = real_dumps(tree)
        return real_dumps({**tree, "epoch": 7})[0] if "model_state_dict" in tree else data, storages

    monkeypatch.setattr(rewrite, "dumps_tree", wrong_epoch)
    with pytest.raises(CkptkitError,
                       match=r"the rewritten index decodes differently \(epoch: 1 vs 7\); nothing was replaced"):
        fix_epoch(path, 1)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_state.pth"]


def test_a_data_pkl_that_reads_back_other_than_written_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptkit.repair import rewrite

    path = tmp_path / "training_state.pth"
    original = _small_state(path)
    real_write = rewrite.write_torch_zip

    def write_other_index(out, tree, *args, dumped, **kwargs):   # the bytes on disk are not the checked ones
        data, storages = dumped
        real_write(out, tree, *args, dumped=(data.replace(b"total_batches", b"total_batchez"), storages), **kwargs)

    monkeypatch.setattr(rewrite, "write_torch_zip", write_other_index)
    with pytest.raises(CkptkitError,
                       match="data.pkl read back with other bytes than were written; nothing was replaced"):
        fix_epoch(path, 1)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_state.pth"]


def test_a_directory_entry_pointing_away_from_the_checked_record_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptkit.core.checkpoint import ByteRange
    from ckptkit.formats.torch_zip import RecordLocator

    path = tmp_path / "training_state.pth"
    original = _small_state(path)
    real_locate = RecordLocator.__call__

    def shifted(self, key):   # the new archive's directory points 64 bytes past the record
        found = real_locate(self, key)
        moved = key == "0" and ".ckptkit-tmp-" in self.path.name
        return ByteRange(found.path, found.offset + 64, found.length) if moved else found

    monkeypatch.setattr(RecordLocator, "__call__", shifted)
    with pytest.raises(CkptkitError,
                       match="data/0: the new archive's directory does not match the record that was written"):
        fix_epoch(path, 1)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_state.pth"]
