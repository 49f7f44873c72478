"""counters.epoch-step-mismatch never fires on what ckptkit itself writes: its trainer, fix-epoch."""
from __future__ import annotations

import copy
import dataclasses
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.repair import fix_epoch
from ckptkit.training import DataPosition, TrainingState
from ckptkit.training.layout import build_checkpoint
from ckptkit.validation.epoch_step import CODE
from tests.validation.helpers import codes, run, trained_state
from trainers.lm import PRESETS, LMRun, RunOptions

REAL = Path(__file__).parent.parent / "fixtures" / "real"
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# 11 batches per epoch, 2 per optimizer step: accumulation windows straddle epoch ends.
CONFIG = dataclasses.replace(PRESETS["tiny"], grad_accum=2, max_steps=8, save_interval=2, eval_interval=4)


def test_a_real_interrupted_run_of_the_bundled_trainer_never_trips_it(tmp_path: Path) -> None:
    # Stopped at batch 11: the end of epoch 1, inside an accumulation window (micro_step 1).
    options = RunOptions(out=tmp_path, keep_last=None, progress_stream=io.StringIO(), stop_at_micro_step=11)
    assert LMRun(CONFIG, options, None).run().status == "interrupted"
    saved = sorted(tmp_path.glob("*.pt"))
    assert "checkpoint_step_5_micro_1.pt" in [p.name for p in saved]
    for path in saved:
        assert CODE not in codes(run(path)), path.name


@SETTINGS
@given(per_epoch=st.integers(1, 20), accum=st.integers(1, 5), batches=st.integers(0, 200))
def test_the_trainer_layout_at_any_position_never_trips_it(per_epoch: int, accum: int, batches: int) -> None:
    # The loop's own counting: one optimizer step each time the window of `accum` batches closes.
    position = DataPosition(epoch=0, batch_in_epoch=0, steps_per_epoch=per_epoch, micro_step=0, grad_accum=accum,
                            sampler_seed=1, batch_size=2)
    for _ in range(batches):
        position = position.advanced()
    model = torch.nn.Linear(2, 2)
    state = TrainingState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config={},
                          position=position, global_step=batches // accum)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint_step_1.pt"
        torch.save(build_checkpoint(state, {}, "periodic"), path)
        assert CODE not in codes(run(path))


positions = st.tuples(st.integers(1, 40), st.one_of(st.none(), st.integers(1, 4)))


def _fixed(write: Any, epoch: int, step: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp))
        fix_epoch(path, epoch, step=step, keep_backup=False)
        assert CODE not in codes(run(path))


@SETTINGS
@given(position=positions)
def test_fix_epoch_output_of_a_trainer_checkpoint_never_trips_it(position: tuple[int, int | None]) -> None:
    state = trained_state()

    def write(tmp: Path) -> Path:
        path = tmp / "checkpoint_step_7.pt"
        torch.save({**state, "global_step": 7, "epoch": 1, "best_val_loss": 0.5, "train_history": [],
                    "data_position": {"epoch": 1, "batch_in_epoch": 5, "steps_per_epoch": 9, "micro_step": 0,
                                      "grad_accum": 2, "sampler_seed": 0, "batch_size": 2}}, path)
        return path
    _fixed(write, *position)


@SETTINGS
@given(position=positions)
def test_fix_epoch_output_of_a_lightning_checkpoint_never_trips_it(position: tuple[int, int | None]) -> None:
    def write(tmp: Path) -> Path:
        return Path(shutil.copy(REAL / "lightning" / "mid_epoch" / "epoch=1-step=4.ckpt", tmp / "last.ckpt"))
    _fixed(write, *position)


@SETTINGS
@given(position=positions)
def test_fix_epoch_output_of_an_hf_trainer_folder_never_trips_it(position: tuple[int, int | None]) -> None:
    def write(tmp: Path) -> Path:     # --step counts optimizer updates: 5 per epoch here
        return Path(shutil.copytree(REAL / "hf_full" / "checkpoint-8", tmp / "checkpoint-8"))
    _fixed(write, *position)


@SETTINGS
@given(epoch=st.integers(1, 40), step=st.one_of(st.none(), st.integers(2, 1269)))
def test_fix_epoch_output_of_a_seed_003_file_never_trips_it(epoch: int, step: int | None) -> None:
    # Its optimizer took 2 steps: any position of 2 batches or more agrees with it. (A position
    # behind the optimizer's own count is a contradiction fix-epoch reports, and so does validate.)
    state = copy.deepcopy(trained_state())

    def write(tmp: Path) -> Path:
        path = tmp / "training_state.pth"
        torch.save({"epoch": 1, "step": 1000, "total_batches": 1270, "best_val_f1": 0.1, "best_val_acc": 0.5,
                    "optimizer_state_dict": state["optimizer_state_dict"],
                    "scheduler_state_dict": state["scheduler_state_dict"]}, path)
        return path
    _fixed(write, epoch, step)


def test_fix_epoch_keeps_a_trainer_checkpoints_global_step_on_its_position(save: Any) -> None:
    path = save({**trained_state(), "global_step": 7, "epoch": 1, "best_val_loss": 0.5, "train_history": [],
                 "data_position": {"epoch": 1, "batch_in_epoch": 5, "steps_per_epoch": 9, "micro_step": 0,
                                   "grad_accum": 2}}, "checkpoint_step_7.pt")
    result = fix_epoch(path, 3, step=4, keep_backup=False)
    tree = torch.load(path, weights_only=True)
    assert (tree["epoch"], tree["global_step"]) == (2, 11)        # 2 x 9 + 4 = 22 batches = 11 steps
    assert tree["data_position"] == {"epoch": 2, "batch_in_epoch": 4, "steps_per_epoch": 9, "micro_step": 0,
                                     "grad_accum": 2}
    fix_epoch(path, 2, keep_backup=False)                          # 18 batches = 9 steps, window closed
    assert torch.load(path, weights_only=True)["global_step"] == 9
    assert not [t for t in result.plan.cannot_fix if t.startswith("global_step")]
    result = fix_epoch(path, 2, step=4, keep_backup=False)         # 13 batches = 6 steps + 1
    tree = torch.load(path, weights_only=True)
    assert (tree["global_step"], tree["data_position"]["micro_step"]) == (6, 1)
    assert ("the position is 1 batch into a gradient-accumulation window of 2: the gradients of that "
            "batch are not in the checkpoint") in result.plan.cannot_fix[-1]


def test_fix_epoch_moves_lightnings_epoch_progress_with_its_epoch(tmp_path: Path) -> None:
    path = Path(shutil.copy(REAL / "lightning" / "mid_epoch" / "epoch=1-step=4.ckpt", tmp_path / "last.ckpt"))
    fix_epoch(path, 5, keep_backup=False)
    tree = torch.load(path, weights_only=True)
    current = tree["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert tree["epoch"] == 4
    assert current == {"ready": 5, "started": 5, "processed": 5, "completed": 4}   # as at an epoch's end
    fix_epoch(path, 5, step=2, keep_backup=False)
    current = torch.load(path, weights_only=True)["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert current == {"ready": 5, "started": 5, "processed": 4, "completed": 4}   # inside epoch 5
