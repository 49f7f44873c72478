"""EnStack's trainer: save_pretrained folders, exact resume, `ckptkit resume`, refusals, fix-epoch."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptkit.core.checkpoint import Severity
from ckptkit.formats import open_checkpoint
from ckptkit.runs.resuming import plan_resume
from ckptkit.storage.manifest import manifest_problems, read_manifest
from ckptkit.training import ProgressLine, load_for_resume
from ckptkit.validating import validate_path
from trainers.pretrained import PRESETS, PretrainedRun, RunOptions, main

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = PRESETS["tiny"]  # 12 batches per epoch, a mid-epoch save every 5 batches, 3 epochs = 36 batches
FOLDER_FILES = ["config.json", "model.safetensors", "training_state.pth"]


def _run(out: Path, resume=None, cfg=CONFIG, **options) -> object:
    return _make(out, resume, cfg, **options).run()


def _make(out: Path, resume=None, cfg=CONFIG, **options) -> PretrainedRun:
    return PretrainedRun(cfg, RunOptions(out=out, keep_last=None, progress_stream=io.StringIO(), **options), resume)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    result = _run(out)
    assert result.status == "finished" and result.record.global_step == 36
    return out


def _assert_same_folders(reference: Path, resumed: Path) -> None:
    for folder in ("last_checkpoint", "best_model"):
        a, b = reference / folder, resumed / folder
        weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert sorted(weights_a) == sorted(weights_b)
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
        state_a = torch.load(a / "training_state.pth", weights_only=True)
        state_b = torch.load(b / "training_state.pth", weights_only=True)
        moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in state_a["optimizer_state_dict"]["state"].values()]
        others = [(s["exp_avg"], s["exp_avg_sq"]) for s in state_b["optimizer_state_dict"]["state"].values()]
        assert len(moments) == len(others)
        assert all(
            torch.equal(x, y)
            for pair, other in zip(moments, others, strict=True)
            for x, y in zip(pair, other, strict=True)
        )
        for name in FOLDER_FILES:
            assert (a / name).read_bytes() == (b / name).read_bytes(), (folder, name)


def test_the_run_saves_seed_003_folders_with_its_keys_ckptkit_extras_and_manifests(uninterrupted: Path) -> None:
    assert sorted(p.name for p in uninterrupted.iterdir()) == [
        "best_model", "best_model.manifest.json", "last_checkpoint", "last_checkpoint.manifest.json"]
    last = uninterrupted / "last_checkpoint"
    assert sorted(p.name for p in last.iterdir()) == FOLDER_FILES
    state = torch.load(last / "training_state.pth", weights_only=True)
    assert list(state) == [
        "optimizer_state_dict", "scheduler_state_dict", "epoch", "step", "total_batches", "best_val_f1", "best_val_acc",
        "global_step", "config", "rng_state", "data_position", "ckptkit",
    ]  # the weights are in model.safetensors; no scaler_state_dict: fp32 on CPU has no GradScaler
    assert (state["epoch"], state["step"], state["total_batches"], state["global_step"]) == (3, 0, 12, 36)
    assert 0.5 < state["best_val_f1"] <= 1.0 and 0.5 < state["best_val_acc"] <= 1.0
    assert state["ckptkit"] == {"version": 1, "trainer": "pretrained", "kind": "final", "world_size": 1,
                                "sharded": False, "layout": "training-state"}
    assert state["config"]["save_steps"] == 5 and state["config"]["precision"] == "fp32"
    config = json.loads((last / "config.json").read_text())
    assert (config["architectures"], config["num_labels"], config["vocab_size"]) == (["TinyTextClassifier"], 2, 64)
    assert sorted(load_file(last / "model.safetensors")) == [
        "classifier.bias", "classifier.weight", "dense.bias", "dense.weight", "embeddings.weight", "positions.weight"]
    manifest = read_manifest(last)
    assert (
        sorted(f.path for f in manifest.files) == [f"last_checkpoint/{n}" for n in FOLDER_FILES]
        and manifest.kind == "final"
    )
    assert manifest_problems(last, manifest) == []


@pytest.mark.parametrize(
    ("stop_at", "position", "described"),
    [
        pytest.param(24, (2, 0), "epoch 2 complete, global step 24", id="at-the-end-of-an-epoch"),
        pytest.param(19, (1, 7), "epoch 2 INCOMPLETE: 7/12 batches (58.3%), global step 19", id="mid-epoch"),
    ],
)
def test_an_interrupted_run_resumed_from_its_run_directory_equals_the_uninterrupted_run(
    uninterrupted: Path, tmp_path: Path, stop_at: int, position: tuple[int, int], described: str
) -> None:
    stopped = _run(tmp_path, stop_at_micro_step=stop_at)
    assert stopped.status == "interrupted"
    point = load_for_resume(tmp_path)
    assert point.path.name == "last_checkpoint"
    assert (point.position.epoch, point.position.batch_in_epoch) == position
    assert open_checkpoint(point.path).progress.describe() == described
    assert _run(tmp_path, point).status == "finished"
    _assert_same_folders(uninterrupted, tmp_path)


def test_a_resume_inside_an_accumulation_window_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = dataclasses.replace(CONFIG, grad_accum=2, epochs=2)
    _run(tmp_path / "whole", cfg=cfg)
    _run(tmp_path / "stopped", cfg=cfg, stop_at_micro_step=19)
    point = load_for_resume(tmp_path / "stopped")
    assert point.checkpoint["accumulation"]["micro_step"] == 1 and point.global_step == 9
    assert _run(tmp_path / "stopped", point, cfg).status == "finished"
    _assert_same_folders(tmp_path / "whole", tmp_path / "stopped")


def test_a_mid_epoch_folder_reads_as_save_pretrained_of_the_training_state_family(tmp_path: Path) -> None:
    _run(tmp_path, stop_at_micro_step=19)
    ckpt = open_checkpoint(tmp_path / "last_checkpoint")
    assert (ckpt.format, ckpt.family) == ("save-pretrained", "training-state")
    p = ckpt.progress
    assert (p.epochs_completed, p.step_in_epoch, p.steps_per_epoch, p.epoch_complete, p.global_step) == (
        1,
        7,
        12,
        False,
        19,
    )
    state = torch.load(tmp_path / "last_checkpoint" / "training_state.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 7)  # the seed's convention: epoch in progress, 1-based


def test_validate_finds_no_errors_and_no_warnings_in_the_trainers_folders(uninterrupted: Path, tmp_path: Path) -> None:
    _run(tmp_path, stop_at_micro_step=19)
    for path in (uninterrupted / "last_checkpoint", uninterrupted / "best_model", tmp_path / "last_checkpoint"):
        report = validate_path(path, deep=True, siblings=False)
        noisy = [f.code for f in report.findings if f.severity is not Severity.INFO]
        assert noisy == [], (path, noisy)


def test_the_progress_line_after_a_resume_starts_at_the_true_batch(tmp_path: Path) -> None:
    _run(tmp_path, stop_at_micro_step=19)
    run = _make(tmp_path, load_for_resume(tmp_path))
    stream = io.StringIO()
    run.display = ProgressLine(stream, force=True, max_per_second=1e9)
    run.run()
    drawn = [line.strip() for line in stream.getvalue().split("\r") if re.match(r"epoch \d+ \| batch", line)]
    assert drawn[0].startswith("epoch 2 | batch 8/12 (66.7%) | step 20/36")  # not EnStack's initial=resume_step count
    batches = [int(re.search(r"batch (\d+)/12", line).group(1)) for line in drawn]
    shown = [b for i, b in enumerate(batches) if i == 0 or b != batches[i - 1]]  # a log line redraws the last one
    assert shown == [8, 9, 10, 11, 0, *range(1, 12), 0]   # 29 batches, each shown once, none past the epoch


def test_a_run_killed_mid_epoch_is_continued_by_ckptkit_resume_to_the_uninterrupted_bytes(
    uninterrupted: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    # batch 19: the last save committed (--sync-save) is the mid-epoch one at batch 5 of epoch 2
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.pretrained",
            "--config",
            "tiny",
            "--out",
            str(killed),
            "--sync-save",
            "--kill-at-micro-step",
            "19",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    plan = plan_resume(killed)
    assert plan.trainer == "pretrained" and plan.command[1:3] == ["-m", "trainers.pretrained"]
    assert (plan.progress.epochs_completed, plan.progress.step_in_epoch) == (1, 5)
    resumed = subprocess.run([sys.executable, "-m", "ckptkit", "resume", str(killed)], env=env,
                             capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "with the 'pretrained' trainer" in resumed.stdout and "at epoch 2 | batch 5/12 | step 17" in resumed.stdout
    assert "finished: 3 epochs, step 36" in resumed.stdout
    _assert_same_folders(uninterrupted, killed)


@pytest.mark.parametrize(
    ("member", "with_manifest", "said"),
    [
        (
            "training_state.pth",
            True,
            "does not match its manifest: last_checkpoint/training_state.pth: 1000 bytes on disk",
        ),
        (
            "model.safetensors",
            True,
            "does not match its manifest: last_checkpoint/model.safetensors: 1000 bytes on disk",
        ),
        ("training_state.pth", False, "training state file cannot be read: zip archive is truncated or damaged"),
        ("model.safetensors", False, "model weights file cannot be read: tensor 'dense.weight' ends at byte"),
    ],
)
def test_a_damaged_folder_is_refused_with_one_line_and_exit_2(
    uninterrupted: Path, tmp_path: Path, capsys, member: str, with_manifest: bool, said: str
) -> None:
    run = Path(shutil.copytree(uninterrupted, tmp_path / "run"))
    folder = run / "last_checkpoint"
    if not with_manifest:
        (run / "last_checkpoint.manifest.json").unlink()
    os.truncate(folder / member, 1000)
    before = (folder / member).read_bytes()
    assert main(["--resume", str(folder), "--epochs", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {folder}: ")
    assert said in err
    assert (folder / member).read_bytes() == before


def test_a_finished_run_is_refused_and_extended_with_epochs(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(uninterrupted, tmp_path / "run"))
    assert main(["--resume", str(run)]) == 2
    assert (
        "is a finished run: epoch 3 of 3. Nothing to resume. To train further: --epochs N (N > 3)."
        in capsys.readouterr().err
    )
    assert main(["--resume", str(run), "--epochs", "4", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert (
        "note: --epochs 4 from here on (the run had 3)" in out
        and "note: --batch-size 8 ignored: the run uses 16" in out
    )
    state = torch.load(run / "last_checkpoint" / "training_state.pth", weights_only=True)
    assert (state["epoch"], state["step"], state["global_step"], state["config"]["epochs"]) == (4, 0, 48, 4)


def test_fix_epoch_on_the_folder_moves_every_counter_and_renews_its_manifest(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ckptkit.cli import main as cli

    _run(tmp_path, stop_at_micro_step=19)
    folder = tmp_path / "last_checkpoint"
    result = CliRunner().invoke(cli, ["fix-epoch", str(folder), "--epoch", "1", "--complete", "--no-backup"])
    assert result.exit_code == 0, result.output
    fixed = torch.load(folder / "training_state.pth", weights_only=True)
    position = fixed["data_position"]
    assert (fixed["epoch"], fixed["step"], position["epoch"], position["batch_in_epoch"], fixed["global_step"]) == (
        1,
        0,
        1,
        0,
        12,
    )
    assert manifest_problems(folder, read_manifest(folder)) == []
    point = load_for_resume(folder)
    assert (point.position.epoch, point.position.batch_in_epoch, point.global_step) == (1, 0, 12)


def test_a_training_state_rolled_back_by_a_sync_is_skipped_for_the_newest_whole_folder(tmp_path: Path) -> None:
    _run(tmp_path, stop_at_micro_step=19)
    # EnStack's Google Drive restored an older training_state.pth into last_checkpoint/ (epoch 1's
    # end): the same size, other bytes, beside the weights of epoch 2, batch 7
    shutil.copyfile(tmp_path / "best_model" / "training_state.pth", tmp_path / "last_checkpoint" / "training_state.pth")
    point = load_for_resume(tmp_path)
    assert point.path.name == "best_model" and (point.position.epoch, point.position.batch_in_epoch) == (1, 0)
    assert any(w.startswith("skipped last_checkpoint, newer but unusable: does not match its manifest: "
                            "last_checkpoint/training_state.pth: CRC-32") for w in point.warnings)
    report = validate_path(tmp_path / "last_checkpoint", deep=True, siblings=False)
    assert [f.code for f in report.findings if f.severity is Severity.ERROR] == ["integrity.manifest-mismatch"]
