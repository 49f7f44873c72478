"""ExactResume on the LoRA ranker: a resumed Trainer run equals the uninterrupted one bit for bit."""
from __future__ import annotations

from pathlib import Path

import pytest

from ckptkit.core.errors import ResumeRefusedError
from tests.integrations.hf_runs import (
    STOPS,
    copy_checkpoint,
    differences,
    final_state,
    max_adapter_difference,
    small_config,
    train,
)

LOADERS = {"plain shuffled DataLoader": None, "DataLoader with its own generator": 7}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One full run per loader, every checkpoint kept (each stop resumes from one of them)."""
    runs = {}
    for name, loader_seed in LOADERS.items():
        out = tmp_path_factory.mktemp("full")
        train(small_config(loader_seed=loader_seed), out)
        runs[name] = out
    return runs


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("stop", STOPS)
def test_a_resumed_run_equals_the_uninterrupted_one_bitwise(uninterrupted: dict[str, Path], tmp_path: Path,
                                                            loader: str, stop: str) -> None:
    full = final_state(uninterrupted[loader])
    resume = copy_checkpoint(uninterrupted[loader] / f"checkpoint-{STOPS[stop]}", tmp_path)
    train(small_config(loader_seed=LOADERS[loader]), tmp_path, resume=resume, draw_before_train=True)
    resumed = final_state(tmp_path)
    assert differences(full, resumed) == []
    # what the comparison covers, so that an empty difference means something
    assert full["folder"] == {"plain shuffled DataLoader": "checkpoint-5",
                              "DataLoader with its own generator": "checkpoint-6"}[loader]
    assert full["trainer_state"]["best_folder"] == resumed["trainer_state"]["best_folder"] is not None
    assert len(full["adapter"]) == 4 * 1 and full["optimizer"]["state"]


def test_trainer_alone_resumes_inside_epoch_1_on_another_data_order(uninterrupted: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """Without ExactResume, Trainer draws the resumed epoch's order before restoring rng_state.pth."""
    loader = "plain shuffled DataLoader"
    full = final_state(uninterrupted[loader])
    resume = copy_checkpoint(uninterrupted[loader] / "checkpoint-4", tmp_path)
    train(small_config(), tmp_path, resume=resume, exact=False)
    assert max_adapter_difference(full, final_state(tmp_path)) > 1e-4


def test_trainer_alone_replays_epoch_0_order_with_its_own_generator(uninterrupted: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """A DataLoader's own generator is saved nowhere: after an epoch end, Trainer alone starts
    epoch 1 from the generator's first state, repeating epoch 0's order."""
    loader = "DataLoader with its own generator"
    full = final_state(uninterrupted[loader])
    resume = copy_checkpoint(uninterrupted[loader] / "checkpoint-3", tmp_path)
    train(small_config(loader_seed=7), tmp_path, resume=resume, exact=False)
    assert max_adapter_difference(full, final_state(tmp_path)) > 1e-4


@pytest.mark.parametrize(("change", "named"), [
    ({"train_batch": 2}, "gradient_accumulation_steps was 2 at the save, now 1"),
    ({"samples": 10}, "train_samples was 12 at the save, now 10"),
    ({"lr": 1e-3}, "learning_rate was 0.02 at the save, now 0.001"),
])
def test_a_resume_with_arguments_that_shift_batches_or_schedule_is_refused_by_name(
        uninterrupted: dict[str, Path], tmp_path: Path, change: dict, named: str) -> None:
    resume = copy_checkpoint(uninterrupted["plain shuffled DataLoader"] / "checkpoint-4", tmp_path)
    with pytest.raises(ResumeRefusedError) as refused:
        train(small_config(**change), tmp_path, resume=resume)
    assert named in refused.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-4.manifest.json"]


def test_an_allowed_change_resumes_with_a_warning(uninterrupted: dict[str, Path], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from trainers.ranker import build_trainer

    resume = copy_checkpoint(uninterrupted["plain shuffled DataLoader"] / "checkpoint-4", tmp_path)
    trainer, _ = build_trainer(small_config(val_iterations=2), tmp_path, "cpu")
    trainer.train(resume_from_checkpoint=str(resume))
    assert "eval_steps was 1, now 2" in caplog.text
    assert (tmp_path / "checkpoint-5").is_dir()   # eval_steps itself comes back from trainer_state.json
