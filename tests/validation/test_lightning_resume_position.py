"""Where Lightning resumes a .ckpt, held to Lightning itself: `tests/fixtures/real/lightning_resumed/
resumes.json` records where a fresh `Trainer(max_epochs=3).fit(ckpt_path=...)` started on each
file (scripts/make_real_fixtures.py). ckptkit read the file `trainer.save_checkpoint` writes after
`fit` returns as one epoch further on than Lightning resumes it ("epoch 3 complete" after 2
epochs). And a Lightning sharded checkpoint folder (FSDPStrategy(state_dict_type="sharded"):
DCP + meta.pt) was a generic DCP folder with no progress, its counters unread in meta.pt.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from ckptkit.formats import open_checkpoint
from ckptkit.runs import scan_run
from tests.validation.helpers import codes, only, run

FIXTURE = Path(__file__).parents[1] / "fixtures" / "real" / "lightning_resumed"
RESUMES = json.loads((FIXTURE / "resumes.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(RESUMES))
def test_progress_is_where_lightning_resumes(name: str) -> None:
    progress = open_checkpoint(FIXTURE / name).progress
    resumed = RESUMES[name]
    assert (progress.epochs_completed, progress.step_in_epoch) == (resumed["epoch"], resumed["batch"])
    assert progress.epoch_complete == (resumed["batch"] == 0)


def test_the_file_saved_after_fit_reads_as_two_epochs_done() -> None:
    stored = torch.load(FIXTURE / "after_fit.ckpt", weights_only=True)
    assert stored["epoch"] == 2 and stored["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    done = subprocess.run([sys.executable, "-m", "ckptkit", "inspect", str(FIXTURE / "after_fit.ckpt")],
                          capture_output=True, text=True)
    assert done.returncode == 0
    assert "progress  epoch 2 complete, global step 6" in done.stdout


def test_a_lightning_sharded_folder_is_the_checkpoint_it_was_cut_from() -> None:
    whole, sharded = open_checkpoint(FIXTURE / "after_fit.ckpt"), open_checkpoint(FIXTURE / "sharded.ckpt")
    assert (sharded.format, sharded.family) == ("dcp", "lightning")
    assert (sharded.progress.epochs_completed, sharded.progress.global_step) == (2, 6)
    assert list(sharded.model) == list(whole.model)
    assert sharded.optimizer is not None and sharded.sources["optimizer"] == "optimizer_states"
    assert set(sharded.optimizer["state"]) == set(whole.model)      # FSDP's form: keyed by parameter name
    assert sharded.tree["loops"] == whole.tree["loops"] and sharded.tree["lr_schedulers"] == whole.tree["lr_schedulers"]
    resume = sharded.progress.resume
    assert resume is not None and resume.global_step == 6 and resume.refuses is None
    report = run(FIXTURE / "sharded.ckpt")
    assert report.findings == []
    assert [m.role for m in sharded.members if m.name == "meta.pt"] == [
        "Lightning checkpoint state (counters, loops, callbacks, hyper-parameters)"]


def test_ls_picks_the_sharded_folder_by_its_progress(tmp_path: Path) -> None:
    runs = tmp_path / "checkpoints"
    runs.mkdir()
    shutil.copytree(FIXTURE / "sharded.ckpt", runs / "epoch=1-step=6.ckpt")
    shutil.copy(FIXTURE / "mid_epoch" / "epoch=1-step=4.ckpt", runs / "epoch=1-step=4.ckpt")
    found = scan_run(runs)
    sharded = next(e for e in found.entries if e.path.name == "epoch=1-step=6.ckpt")
    assert (sharded.format, sharded.family, sharded.progress.global_step) == ("dcp", "lightning", 6)
    assert found.resume is not None and found.resume.path.name == "epoch=1-step=6.ckpt"


def test_a_sharded_folder_without_its_meta_pt_is_an_error(tmp_path: Path) -> None:
    """FSDPStrategy.save_checkpoint writes meta.pt on rank 0 after the DCP shards; without it
    Lightning's load_checkpoint raises ValueError ('does not point to a valid checkpoint'), and
    ckptkit called the folder clean."""
    runs = tmp_path / "checkpoints"
    runs.mkdir()
    folder = shutil.copytree(FIXTURE / "sharded.ckpt", runs / "epoch=1-step=6.ckpt")
    (folder / "meta.pt").unlink()
    finding = only(run(folder), "folder.missing-member")
    assert finding.severity.value == "error" and finding.where == "epoch=1-step=6.ckpt/meta.pt"
    assert "Lightning refuses the folder ('does not point to a valid checkpoint')" in finding.message
    shutil.copy(FIXTURE / "mid_epoch" / "epoch=1-step=4.ckpt", runs / "epoch=1-step=4.ckpt")
    found = scan_run(runs)
    assert found.resume is not None and found.resume.path.name == "epoch=1-step=4.ckpt"


def test_a_weights_only_sharded_folder_without_meta_pt_is_told_by_its_name(tmp_path: Path) -> None:
    """save_weights_only puts only {"model"} through DCP: a `.ckpt` folder of it alone lacks meta.pt,
    while accelerate's FSDP model folder (pytorch_model_fsdp_0/, the same {"model"}) is whole."""
    model = torch.nn.Linear(4, 2)
    for name in ("last.ckpt", "pytorch_model_fsdp_0"):
        dcp.save({"model": model.state_dict()}, checkpoint_id=tmp_path / name, no_dist=True)
    assert only(run(tmp_path / "last.ckpt"), "folder.missing-member").severity.value == "error"
    assert "folder.missing-member" not in codes(run(tmp_path / "pytorch_model_fsdp_0"))


def test_a_fabric_sharded_folder_joins_meta_pt_to_what_dcp_holds(tmp_path: Path) -> None:
    """Fabric's FSDP save: the user's modules and optimizers through DCP under their own keys,
    everything else torch.save'd to meta.pt (lightning.fabric.strategies.fsdp.save_checkpoint)."""
    model = torch.nn.Linear(4, 2)
    folder = tmp_path / "step-10.ckpt"
    dcp.save({"model": model.state_dict()}, checkpoint_id=folder, no_dist=True)
    torch.save({"step": 10, "note": "fabric"}, folder / "meta.pt")
    ckpt = open_checkpoint(folder)
    assert ckpt.tree["step"] == 10 and ckpt.tree["note"] == "fabric"
    assert set(ckpt.model) == {"weight", "bias"}


def test_the_rebuilt_dict_keeps_every_key_dcp_holds() -> None:
    from ckptkit.formats.dcp import lightning_checkpoint

    meta = {"pytorch-lightning_version": "2.6.6", "epoch": 1, "global_step": 6}
    held = {"state_dict": {"w": 1}, "model": {"x": 2}, "optimizer_0": {"a": 0}, "optimizer_1": {"b": 1}, "ema": 3}
    rebuilt = lightning_checkpoint(meta, held)
    assert rebuilt == {**meta, "state_dict": {"w": 1}, "optimizer_states": [{"a": 0}, {"b": 1}], "model": {"x": 2},
                       "ema": 3}
    assert lightning_checkpoint(meta, {"model": {"x": 2}})["state_dict"] == {"x": 2}     # FSDPStrategy's key


LIGHTNING_FILES = sorted(p for p in (FIXTURE.parent).glob("lightning*/**/*.ckpt") if p.is_file())


@pytest.mark.parametrize("path", LIGHTNING_FILES, ids=lambda p: str(p.relative_to(FIXTURE.parent)))
def test_only_the_max_steps_stop_is_said_to_skip_the_rest_of_its_epoch(path: Path) -> None:
    found = [f for f in run(path).findings if f.code == "counters.max-steps-epoch-counted"]
    if "max_steps" not in path.parts:
        assert found == []
        return
    assert len(found) == 1 and found[0].severity.value == "warning"
    assert found[0].message.startswith("training stopped 1 batch into epoch 2 (max_steps)")
    # the resume it describes is the one recorded: epoch index 2 (epoch 3), batch index 1
    assert RESUMES["max_steps/after_fit.ckpt"] == {"epoch": 2, "batch": 1}
