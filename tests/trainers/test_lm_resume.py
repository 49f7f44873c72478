"""Resume equals the uninterrupted run, bitwise, on CPU: same weights, optimizer state, losses, bytes."""
from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.training import load_for_resume
from trainers.lm import PRESETS, LMRun, RunOptions

# 11 batches per epoch, 2 per optimizer step: windows straddle epoch ends; 14 steps = 28 batches.
CONFIG = dataclasses.replace(PRESETS["tiny"], grad_accum=2, max_steps=14, save_interval=4, eval_interval=4)


def _run(out: Path, resume=None, **options) -> object:
    return LMRun(CONFIG, RunOptions(out=out, keep_last=None, progress_stream=io.StringIO(), **options), resume).run()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    result = _run(out)
    assert result.status == "finished" and result.global_step == 14
    return out


def _assert_same_run(reference: Path, resumed: Path) -> None:
    a = torch.load(reference / "final_model.pt", weights_only=True)
    b = torch.load(resumed / "final_model.pt", weights_only=True)
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])
    for index, state in a["optimizer_state_dict"]["state"].items():
        other = b["optimizer_state_dict"]["state"][index]
        assert all(torch.equal(state[k], other[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert a["train_history"] == b["train_history"] and a["val_history"] == b["val_history"]
    assert a["scheduler_state_dict"] == b["scheduler_state_dict"]
    assert (reference / "final_model.pt").read_bytes() == (resumed / "final_model.pt").read_bytes()


@pytest.mark.parametrize(
    ("stop_at", "saved_as", "position"),
    [
        pytest.param(6, "checkpoint_step_3.pt", (0, 6, 0), id="inside-the-first-epoch-before-it-ends"),
        pytest.param(7, "checkpoint_step_3_micro_1.pt", (0, 7, 1), id="inside-an-accumulation-window"),
        pytest.param(11, "checkpoint_step_5_micro_1.pt", (1, 0, 1), id="at-the-end-of-an-epoch-inside-a-window"),
        pytest.param(12, "checkpoint_step_6.pt", (1, 1, 0), id="after-the-first-batch-of-an-epoch"),
        pytest.param(22, "checkpoint_step_11.pt", (2, 0, 0), id="at-the-end-of-an-epoch-before-the-next"),
    ],
)
def test_an_interrupted_run_resumed_from_its_interrupt_checkpoint_equals_the_uninterrupted_run(
    uninterrupted: Path, tmp_path: Path, stop_at: int, saved_as: str, position: tuple[int, int, int]
) -> None:
    stopped = _run(tmp_path, stop_at_micro_step=stop_at)
    assert stopped.status == "interrupted" and [p.name for p in stopped.checkpoints][-1] == saved_as
    point = load_for_resume(tmp_path)  # the run directory: newest valid checkpoint by progress
    assert point.path.name == saved_as and point.warnings == []
    assert (point.position.epoch, point.position.batch_in_epoch, point.position.micro_step) == position
    assert _run(tmp_path, point).status == "finished"
    _assert_same_run(uninterrupted, tmp_path)


def test_resuming_from_a_periodic_checkpoint_after_a_crash_replays_the_lost_steps_exactly(
    uninterrupted: Path, tmp_path: Path
) -> None:
    # as if the run had been killed after step 9: its newest checkpoint is step 8
    shutil.copy(uninterrupted / "checkpoint_step_8.pt", tmp_path)
    shutil.copy(uninterrupted / "checkpoint_step_8.pt.manifest.json", tmp_path)
    point = load_for_resume(tmp_path / "checkpoint_step_8.pt")
    assert point.global_step == 8 and point.position.batch_in_epoch == 5 and point.position.epoch == 1
    _run(tmp_path, point)
    _assert_same_run(uninterrupted, tmp_path)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop_at=st.integers(1, 27))
def test_an_interrupt_after_any_batch_resumes_to_the_same_final_bytes(
    uninterrupted: Path, tmp_path_factory, stop_at: int
) -> None:
    out = tmp_path_factory.mktemp("any")
    _run(out, stop_at_micro_step=stop_at)
    _run(out, load_for_resume(out))
    assert (out / "final_model.pt").read_bytes() == (uninterrupted / "final_model.pt").read_bytes()


def test_the_uninterrupted_run_saved_best_periodic_and_final_with_manifests(uninterrupted: Path) -> None:
    names = sorted(p.name for p in uninterrupted.iterdir())
    assert names == [
        "best_model.pt", "best_model.pt.manifest.json",
        "checkpoint_step_12.pt", "checkpoint_step_12.pt.manifest.json",
        "checkpoint_step_4.pt", "checkpoint_step_4.pt.manifest.json",
        "checkpoint_step_8.pt", "checkpoint_step_8.pt.manifest.json",
        "final_model.pt", "final_model.pt.manifest.json",
    ]
    final = torch.load(uninterrupted / "final_model.pt", weights_only=True)
    assert (final["global_step"], final["epoch"], final["data_position"]["batch_in_epoch"]) == (14, 2, 6)
    assert [h["step"] for h in final["val_history"]] == [4, 8, 12, 14]
    assert final["train_history"][-1]["loss"] < final["train_history"][0]["loss"]
