"""Each layout family maps its own counters to one Progress, in numbers and in words."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptkit.core.checkpoint import Progress
from ckptkit.formats import open_checkpoint
from scripts.make_seed_samples import write_samples


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("seeds"))


# name, family, epochs_completed, step_in_epoch, steps_per_epoch, global_step, epoch_complete,
# max_steps, training_finished, describe()
SEED_PROGRESS = [
    ("checkpoint-recent.pth", "recsys", 5, None, None, None, True, None, None, "epoch 5 complete"),
    ("checkpoint-recent.pth.final", "recsys", 5, None, None, None, True, None, True,
     "epoch 5 complete, training finished"),
    ("best_acc_model.pth", "state-dict", None, None, None, None, None, None, None,
     "unknown (no progress counters found)"),
    ("retrieval", "retrieval", 10, None, None, None, True, None, None, "epoch 10 complete"),
    ("checkpoint_step_500.pt", "experiment", 0, None, None, 500, None, 2000, False,
     "in epoch 1 (boundary unknown), global step 500/2000"),
    ("final_model.pt", "experiment", 0, None, None, 2000, None, 2000, True,
     "in epoch 1 (boundary unknown), global step 2000/2000, training finished"),
    ("training_state.pth", "training-state", 0, 1000, 1270, None, False, None, None,
     "epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)"),
    ("legacy", "recsys", 5, None, None, None, True, None, None, "epoch 5 complete"),
]


@pytest.mark.parametrize("name, family, epochs, step, per_epoch, global_step, complete, max_steps, finished, words",
                         SEED_PROGRESS)
def test_each_seed_layout_maps_to_its_family_and_progress(
        samples: dict[str, Path], name: str, family: str, epochs: int | None, step: int | None,
        per_epoch: int | None, global_step: int | None, complete: bool | None, max_steps: int | None,
        finished: bool | None, words: str) -> None:
    ckpt = open_checkpoint(samples[name])
    p = ckpt.progress
    assert ckpt.family == family
    assert (p.epochs_completed, p.step_in_epoch, p.steps_per_epoch, p.global_step, p.epoch_complete,
            p.max_steps, p.training_finished) == (epochs, step, per_epoch, global_step, complete, max_steps, finished)
    assert p.describe() == words


def test_fashion_recommender_epoch_is_read_as_epochs_finished_and_says_so(samples: dict[str, Path]) -> None:
    p = open_checkpoint(samples["retrieval"]).progress
    assert p.sources["epochs_completed"] == "key 'epoch' = 10: epochs finished (saved as epoch + 1)"
    assert p.stored == {"epoch": 10}
    assert p.resume is not None and (p.resume.start_epoch, p.resume.start_batch) == (11, 0)


def test_seed_sections_are_found_under_the_keys_each_system_uses(samples: dict[str, Path]) -> None:
    ckpt = open_checkpoint(samples["checkpoint_step_500.pt"])
    assert ckpt.sources == {"model": "model_state_dict", "optimizer": "optimizer_state_dict",
                            "scheduler": "scheduler_state_dict", "config": "config"}
    assert ckpt.config == {"d_model": 32, "n_layers": 2, "batch_size": 4, "max_steps": 2000, "save_interval": 500}
    assert ckpt.metrics == {"best_val_loss": 0.3961}
    assert list(ckpt.histories) == ["train_history", "val_history"]
    assert sorted(ckpt.model) == ["0.bias", "0.weight", "2.bias", "2.weight"]


@pytest.mark.parametrize("epoch, step, total, words", [
    (1, 1000, 1270, "epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)"),
    (2, 0, 1270, "epoch 2 complete"),
    (2, 1270, 1270, "epoch 2 complete"),
    (3, 5, None, "epoch 3 INCOMPLETE: 5 batches done"),
])
def test_training_state_step_zero_means_the_epoch_ended(tmp_path: Path, epoch: int, step: int,
                                                         total: int | None, words: str) -> None:
    path = tmp_path / "training_state.pth"
    state: dict[str, Any] = {"epoch": epoch, "step": step, "best_val_f1": 0.5}
    if total is not None:
        state["total_batches"] = total
    torch.save(state, path)
    assert open_checkpoint(path).progress.describe() == words


def _nanogpt(iter_num: int) -> dict[str, Any]:
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    model_args = {"n_layer": 2, "n_head": 2, "n_embd": 4, "block_size": 8, "bias": False, "vocab_size": 16}
    return {"model": OrderedDict((f"_orig_mod.{k}", v) for k, v in model.state_dict().items()),
            "optimizer": opt.state_dict(), "model_args": model_args, "iter_num": iter_num,
            "best_val_loss": torch.tensor(1.4321), "config": {"batch_size": 12, "learning_rate": 6e-4,
                                                               "max_iters": 5000, "dataset": "shakespeare_char"}}


def test_nanogpt_dicts_map_iter_num_to_global_step(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(_nanogpt(2000), path)
    ckpt = open_checkpoint(path)
    assert ckpt.family == "nanogpt"
    assert (ckpt.progress.global_step, ckpt.progress.epochs_completed) == (2000, None)
    assert ckpt.progress.sources == {"global_step": "key 'iter_num' = 2000"}
    assert ckpt.progress.describe() == "global step 2000"
    assert sorted(ckpt.model) == ["_orig_mod.bias", "_orig_mod.weight"]
    assert ckpt.sources == {"model": "model", "optimizer": "optimizer", "config": "config"}
    assert ckpt.config["max_iters"] == 5000
    assert ckpt.extra["model_args"]["n_layer"] == 2


def _lightning(epochs: tuple[int, int], batches: tuple[int, int], last_batch: bool, global_step: int) -> dict[str, Any]:
    """A Lightning 2.x .ckpt dict with the keys and loop counters Lightning 2.6 writes."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    def counter(done: int, started: int) -> dict[str, int]:
        return {"ready": started, "completed": min(done, started - 1) if started else 0, "started": started,
                "processed": done}
    fit_loop = {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": global_step},
                "epoch_loop.batch_progress": {"total": counter(*batches), "current": counter(*batches),
                                              "is_last_batch": last_batch},
                "epoch_progress": {"total": counter(*epochs), "current": counter(*epochs)}}
    return {"epoch": epochs[1] - 1, "global_step": global_step, "pytorch-lightning_version": "2.6.6",
            "state_dict": OrderedDict((f"net.{k}", v) for k, v in model.state_dict().items()),
            "loops": {"fit_loop": fit_loop}, "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": ""}},
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [{"step_size": 1, "last_epoch": 1}],
            "hparams_name": "kwargs", "hyper_parameters": {"hidden": 8, "lr": 0.05}}


@pytest.mark.parametrize("epochs, batches, last_batch, global_step, numbers, words", [
    ((1, 1), (3, 3), True, 3, (1, True, 0), "epoch 1 complete, global step 3"),
    ((0, 1), (2, 2), False, 2, (0, False, 2), "epoch 1 INCOMPLETE: 2 batches done, global step 2"),
    ((1, 2), (1, 1), False, 4, (1, False, 1), "epoch 2 INCOMPLETE: 1 batch done, global step 4"),
    ((1, 2), (3, 3), True, 6, (2, True, 0), "epoch 2 complete, global step 6"),
])
def test_lightning_progress_comes_from_the_fit_loop_counters(
        tmp_path: Path, epochs: tuple[int, int], batches: tuple[int, int], last_batch: bool, global_step: int,
        numbers: tuple[Any, ...], words: str) -> None:
    path = tmp_path / "epoch=0-step=3.ckpt"
    torch.save(_lightning(epochs, batches, last_batch, global_step), path)
    ckpt = open_checkpoint(path)
    p = ckpt.progress
    assert ckpt.family == "lightning"
    assert (p.epochs_completed, p.epoch_complete, p.step_in_epoch) == numbers
    assert p.global_step == global_step and p.describe() == words
    assert ckpt.sources == {"model": "state_dict", "optimizer": "optimizer_states", "scheduler": "lr_schedulers",
                            "config": "hyper_parameters"}
    assert ckpt.optimizer["param_groups"][0]["lr"] == 0.05


def test_lightning_without_loop_counters_falls_back_to_the_epoch_key(tmp_path: Path) -> None:
    state = _lightning((1, 1), (3, 3), True, 3)
    del state["loops"]
    path = tmp_path / "old.ckpt"
    torch.save(state, path)
    p = open_checkpoint(path).progress
    assert (p.epochs_completed, p.global_step) == (0, 3)
    assert p.sources["epochs_completed"] == "key 'epoch' = 0 (Lightning's current_epoch)"


REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"


@pytest.mark.parametrize("name, words", [
    ("epoch=0-step=3.ckpt", "epoch 1 complete, global step 3"),
    ("epoch=1-step=6.ckpt", "epoch 2 complete, global step 6"),
    ("last.ckpt", "epoch 2 complete, global step 6"),
    ("mid_epoch/epoch=0-step=2.ckpt", "epoch 1 INCOMPLETE: 2 batches done, global step 2"),
    ("mid_epoch/epoch=1-step=4.ckpt", "epoch 2 INCOMPLETE: 1 batch done, global step 4"),
    ("mid_epoch/epoch=1-step=6.ckpt", "epoch 2 complete, global step 6"),
])
def test_real_lightning_checkpoints_read_as_the_epoch_and_step_in_their_names(name: str, words: str) -> None:
    ckpt = open_checkpoint(REAL / "lightning" / name)
    assert (ckpt.format, ckpt.family) == ("torch-zip", "lightning")
    assert ckpt.progress.describe() == words
    assert ckpt.findings == []
    assert ckpt.config == {"hidden": 8, "lr": 0.05}


def test_real_seed_003_training_state_is_mid_epoch_with_a_numpy_metric() -> None:
    ckpt = open_checkpoint(REAL / "save_pretrained_training_state" / "last_checkpoint" / "training_state.pth")
    assert ckpt.family == "training-state"
    assert ckpt.progress.describe() == "epoch 1 INCOMPLETE: 4/6 batches (66.7%)"
    assert type(ckpt.metrics["best_val_f1"]) is float


def test_progress_words_for_counters_alone() -> None:
    assert Progress(global_step=4500, epochs_completed=3, epoch_complete=True).describe() == \
        "epoch 3 complete, global step 4500"
    assert Progress(epoch_float=1.5).describe() == "epoch 1.5"
    assert Progress(epochs_completed=0, epoch_complete=True).describe() == "no epoch completed"
    assert Progress().describe() == "unknown (no progress counters found)"
