"""`convert --to hf`: a source without trainer_state.json gets one from its progress, and
transformers' Trainer resumes from the folder at the source's global step."""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.conversion import ConvertOptions, convert_checkpoint
from ckptkit.conversion.to_hf import NO_TRAINER_STATE_NOTE
from scripts.make_seed_samples import write_samples
from trainers.lm import PRESETS, LMRun, RunOptions

BATCH, SAMPLES, TRAINED = 2, 8, 5          # 4 steps per epoch: step 5 is 1 batch into the second epoch
TINY_GPT2 = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def mid_epoch_trainer_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ckptkit's tiny LM trainer stopped inside an epoch (its data_position records where)."""
    out = tmp_path_factory.mktemp("lm")
    config = dataclasses.replace(PRESETS["tiny"], max_steps=3, save_interval=3, eval_interval=3)
    assert LMRun(config, RunOptions(out=out, keep_last=None, progress_stream=io.StringIO())).run().status == "finished"
    return out / "final_model.pt"


def _state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))


def test_a_trainer_checkpoint_gets_its_global_step_and_exact_float_epoch_in_a_state_transformers_loads(
        mid_epoch_trainer_checkpoint: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    saved = torch.load(mid_epoch_trainer_checkpoint, weights_only=True)
    position = saved["data_position"]
    assert 0 < position["batch_in_epoch"] < position["steps_per_epoch"]   # a real fraction to carry
    result = convert_checkpoint(mid_epoch_trainer_checkpoint, tmp_path / "checkpoint-3", ConvertOptions(to="hf"))
    state = _state(tmp_path / "checkpoint-3")
    expected_epoch = position["epoch"] + position["batch_in_epoch"] / position["steps_per_epoch"]
    assert (state["global_step"], state["epoch"]) == (saved["global_step"], expected_epoch) == (3, expected_epoch)
    assert state["train_batch_size"] == saved["config"]["batch_size"]
    loaded = transformers.trainer_callback.TrainerState.load_from_json(str(tmp_path / "checkpoint-3" /
                                                                            "trainer_state.json"))
    assert (loaded.global_step, loaded.epoch, loaded.best_metric) == (3, expected_epoch, saved["best_val_loss"])
    assert [e["step"] for e in loaded.log_history] == sorted(e["step"] for e in
                                                             saved["train_history"] + saved["val_history"])
    assert f"trainer_state.json epoch = {expected_epoch:g} ({position['epoch']} epochs + " \
           f"{position['batch_in_epoch']}/{position['steps_per_epoch']} batches, as Trainer counts it)" in result.notes
    assert not any("Trainer names this step's folder" in n for n in result.notes)   # named checkpoint-3


def test_seed_004s_best_model_gets_its_best_val_loss_and_notes_for_every_value_it_could_not_read(
        samples: dict[str, Path], tmp_path: Path) -> None:
    result = convert_checkpoint(samples["best_model.pt"], tmp_path / "best", ConvertOptions(to="hf"))
    state = _state(tmp_path / "best")
    assert (state["global_step"], state["epoch"], state["best_metric"]) == (500, 0.0, 0.3961)
    assert state["train_batch_size"] == 4                        # ExperimentConfig.batch_size
    assert state["log_history"] == [{"step": 500, "val_loss": 0.45}]   # train_history has no steps
    notes = "\n".join(result.notes)
    assert "trainer_state.json epoch = 0, APPROXIMATE (whole epochs only)" in notes
    assert "log_history leaves out train_history" in notes
    assert "Trainer names this step's folder checkpoint-500" in notes
    assert NO_TRAINER_STATE_NOTE not in result.notes
    # what trainer_state.json holds is no longer listed as dropped
    assert "other keys (config, train_history): an HF folder has no file for them" in result.dropped


def test_a_source_without_a_batch_size_gets_train_batch_size_0_which_trainers_argument_check_accepts(
        tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.trainer_utils import compare_trainer_and_checkpoint_args

    torch.save({"model": {"w": torch.ones(2)}, "step": 3}, tmp_path / "a.pth")
    result = convert_checkpoint(tmp_path / "a.pth", tmp_path / "checkpoint-3", ConvertOptions(to="hf"))
    state = transformers.trainer_callback.TrainerState.load_from_json(str(tmp_path / "checkpoint-3" /
                                                                           "trainer_state.json"))
    assert (state.global_step, state.epoch, state.train_batch_size, state.log_history) == (3, 0.0, 0, [])
    # a null train_batch_size would raise here (None // n_gpu) and stop every resume
    compare_trainer_and_checkpoint_args(SimpleNamespace(per_device_train_batch_size=2, n_gpu=1, logging_steps=500,
                                                        eval_steps=None, save_steps=500), state)
    assert any(n.startswith("trainer_state.json train_batch_size = 0: the source records no batch size")
               for n in result.notes)
    assert "trainer_state.json epoch = 0: the source records no epoch (Trainer recomputes it as it trains)" \
        in result.notes


def test_a_source_without_a_global_step_keeps_the_note_and_gets_no_trainer_state(
        samples: dict[str, Path], tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["convert", str(samples["checkpoint-recent.pth"]), str(tmp_path / "hf"),
                                     "--to", "hf", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert NO_TRAINER_STATE_NOTE in report["notes"]
    assert not any(n.startswith("trainer_state.json") for n in report["notes"])
    assert not (tmp_path / "hf" / "trainer_state.json").exists()
    assert (tmp_path / "hf" / "optimizer.pt").exists()


def _tiny_model() -> Any:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY_GPT2))


def _dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY_GPT2["vocab_size"], (SAMPLES, 8), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def _seed_004_style_checkpoint(path: Path, max_steps: int) -> None:
    """A plain torch loop, optimizer grouped as Trainer groups it, saved as run_experiment.py LM saves."""
    import transformers

    model = _tiny_model()
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))   # uses no trainer state
    groups = [{"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": 0.0},
              {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3)
    sched = transformers.get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=max_steps)
    data = _dataset()
    for step in range(TRAINED):
        batch = data[(step * BATCH) % SAMPLES:(step * BATCH) % SAMPLES + BATCH]
        ids = torch.stack([b["input_ids"] for b in batch])
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "scheduler_state_dict": sched.state_dict(), "global_step": TRAINED, "epoch": TRAINED * BATCH // SAMPLES,
                "best_val_loss": 3.5, "config": {**TINY_GPT2, "batch_size": BATCH, "max_steps": max_steps}},
               path)


def test_transformers_trainer_resumes_a_converted_plain_torch_checkpoint_at_its_global_step(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    _seed_004_style_checkpoint(tmp_path / "run.pt", max_steps=TRAINED + 3)
    done = CliRunner().invoke(main, ["convert", str(tmp_path / "run.pt"), str(tmp_path / f"checkpoint-{TRAINED}"),
                                     "--to", "hf"])
    assert done.exit_code == 0, done.output

    seen: dict[str, list[int]] = {"begin": [], "step_end": [], "end": []}

    class Steps(transformers.TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["begin"].append(state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["step_end"].append(state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["end"].append(state.global_step)

    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=TRAINED + 3,
                                          per_device_train_batch_size=BATCH, learning_rate=1e-3, weight_decay=0.0,
                                          save_strategy="no", report_to=[], use_cpu=True, logging_strategy="no",
                                          disable_tqdm=True)
    trainer = transformers.Trainer(model=_tiny_model(), args=args, train_dataset=_dataset(), callbacks=[Steps()])
    trainer.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{TRAINED}"))
    assert seen == {"begin": [TRAINED], "step_end": [TRAINED + 1, TRAINED + 2, TRAINED + 3], "end": [TRAINED + 3]}
    # optimizer.pt and scheduler.pt resumed from the source's step too
    assert trainer.lr_scheduler.last_epoch == TRAINED + 3
    assert {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()} == {TRAINED + 3}
