"""Each training system's rules, on checkpoints built the way that system's own code writes them.

For every system: the keys, counter convention and file names its code uses; what `inspect`
reads (progress, stored counters), what it predicts the system's own resume does, the finding
codes `validate` gives, and what `fix-epoch` writes, read back through the system's own resume
rule (written here as that code does it; docs/families.md names the code).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ckptkit.cli import main as cli
from ckptkit.core.checkpoint import Severity
from ckptkit.formats import open_checkpoint
from ckptkit.repair import fix_epoch
from ckptkit.runs import scan_run
from ckptkit.validation import validate_path


def _model_and_optimizer(steps: int = 2) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        model(torch.randn(2, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _codes(path: Path, *, at_least: Severity = Severity.INFO) -> list[str]:
    return sorted(f.code for f in validate_path(path).findings if f.severity.rank >= at_least.rank)


def _validate_exit(path: Path) -> int:
    return CliRunner().invoke(cli, ["validate", str(path)]).exit_code


# --- LlamaRec retriever: HSandz/LlamaRec trainer/base.py + trainer/loggers.py @ 790eda5 ----------

def llamarec_file(folder: Path, name: str, epoch: int | None, *, trained: bool = True) -> Path:
    """RecentModelLogger: the state dict of _create_state_dict() with 'epoch' = validate's epoch + 1."""
    model, opt = _model_and_optimizer(2 if trained else 0)
    state: dict[str, Any] = {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()}
    if epoch is not None:
        state["epoch"] = epoch
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    return folder / name


def llamarec_resume(path: Path) -> int:
    """_load_checkpoint: start_epoch = checkpoint['epoch']; train(): range(start_epoch, num_epochs).
    Returns the 1-based epoch it trains first."""
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint.get("epoch", 0) + 1


def test_llamarec_epoch_5_is_five_epochs_finished_and_its_resume_starts_the_6th(tmp_path: Path) -> None:
    path = llamarec_file(tmp_path / "models", "checkpoint-recent.pth", 5)
    p = open_checkpoint(path).progress
    assert (p.epochs_completed, p.epoch_complete, p.stored) == (5, True, {"epoch": 5})
    assert p.describe() == "epoch 5 complete"
    assert p.resume is not None and (p.resume.start_epoch, p.resume.start_batch) == (6, 0)
    assert p.resume.describe() == ("LlamaRec retriever's --resume_from_checkpoint starts the 6th epoch at batch 0; "
                                   "the LR schedule, accum_iter, best metric and early-stopping patience start over")
    assert llamarec_resume(path) == p.resume.start_epoch
    assert _codes(path, at_least=Severity.WARNING) == []
    assert _validate_exit(path) == 0


def test_llamarec_fix_epoch_4_complete_writes_4_so_its_resume_starts_the_5th(tmp_path: Path) -> None:
    path = llamarec_file(tmp_path / "models", "checkpoint-recent.pth", 5)
    fix_epoch(path, 4, keep_backup=False)
    assert torch.load(path, weights_only=True)["epoch"] == 4
    assert llamarec_resume(path) == 5
    assert open_checkpoint(path).progress.resume.start_epoch == 5   # type: ignore[union-attr]


def test_llamarec_file_saved_before_training_is_no_epoch_done_with_a_warning_and_a_fix(tmp_path: Path) -> None:
    # train() calls validate(0, 0) first: 'epoch' = 1 with the initial weights and an optimizer never stepped
    path = llamarec_file(tmp_path / "models", "checkpoint-recent.pth", 1, trained=False)
    p = open_checkpoint(path).progress
    assert (p.epochs_completed, p.stored) == (0, {"epoch": 1})
    assert p.resume.start_epoch == 2     # type: ignore[union-attr]  # what LlamaRec would do: skip the 1st
    [finding] = [f for f in validate_path(path).findings if f.code == "counters.untrained-progress"]
    assert finding.severity is Severity.WARNING and finding.where == "checkpoint-recent.pth: epoch"
    assert finding.fix.endswith("checkpoint-recent.pth --epoch 0 --complete")   # type: ignore[union-attr]
    fix_epoch(path, 0, keep_backup=False)
    assert torch.load(path, weights_only=True)["epoch"] == 0 and llamarec_resume(path) == 1
    assert "counters.untrained-progress" not in _codes(path)


def test_llamarec_best_file_without_epoch_restarts_at_the_first_epoch_and_says_so(tmp_path: Path) -> None:
    path = llamarec_file(tmp_path / "models", "best_acc_model.pth", None)
    p = open_checkpoint(path).progress
    assert p.epochs_completed is None and p.resume.start_epoch == 1   # type: ignore[union-attr]
    assert "counters.missing-epoch" in _codes(path, at_least=Severity.WARNING)


def test_llamarec_mid_epoch_position_cannot_be_recorded(tmp_path: Path) -> None:
    path = llamarec_file(tmp_path / "models", "checkpoint-recent.pth", 5)
    result = CliRunner().invoke(cli, ["fix-epoch", str(path), "--epoch", "6", "--step", "10"])
    assert result.exit_code == 2
    assert "LlamaRec saves 'epoch' = epochs finished" in result.output


# --- fashion recommender: ktoan911/Fashion-Recommendation-System- resume_training.py -------------

def fashion_file(folder: Path, epoch: int, *, final: bool = False, total_steps: int = 100) -> Path:
    model, opt = _model_and_optimizer()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=total_steps, pct_start=0.1)
    state: dict[str, Any] = {"epoch": epoch, "model_state_dict": model.state_dict(),
                             "optimizer_state_dict": opt.state_dict(), "scheduler_state_dict": sched.state_dict()}
    if final:   # final_resumed_model_epoch_{N}_recall_{R}.pt
        state.update(final_loss=0.41, final_recall_at_10=0.35, train_losses=[0.5] * epoch, val_recalls=[0.3] * epoch)
        name = f"final_resumed_model_epoch_{epoch}_recall_0.3500.pt"
    else:
        state.update(loss=0.41, recall_at_10=0.3456, train_losses=[0.5] * epoch, val_recalls=[0.3] * epoch)
        name = f"optimized_model_epoch_{epoch}_recall_0.3456.pt"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    return folder / name


def fashion_resume(path: Path) -> int:
    """start_epoch = checkpoint.get('epoch', 0); for epoch in range(start_epoch, args.epochs)."""
    return torch.load(path, weights_only=True).get("epoch", 0) + 1


def test_fashion_recommender_epoch_10_resumes_at_the_11th_and_its_fixed_schedule_is_told(tmp_path: Path) -> None:
    path = fashion_file(tmp_path / "checkpoints", 10)
    p = open_checkpoint(path).progress
    assert (p.epochs_completed, p.stored) == (10, {"epoch": 10})
    assert p.resume.start_epoch == fashion_resume(path) == 11   # type: ignore[union-attr]
    assert "no GradScaler state" in p.resume.describe()          # type: ignore[union-attr]
    findings = {f.code: f for f in validate_path(path).findings}
    assert findings["counters.fixed-schedule-length"].severity is Severity.INFO
    assert "total_steps = 100" in findings["counters.fixed-schedule-length"].message


def test_fashion_recommender_fix_epoch_9_writes_9_and_its_resume_starts_the_10th(tmp_path: Path) -> None:
    path = fashion_file(tmp_path / "checkpoints", 10)
    result = fix_epoch(path, 9, keep_backup=False)
    assert torch.load(path, weights_only=True)["epoch"] == 9 and fashion_resume(path) == 10
    assert any("rename it yourself" in t for t in result.plan.cannot_fix)


def test_fashion_recommender_final_file_is_flagged_because_its_resume_crashes_on_the_missing_loss(
        tmp_path: Path) -> None:
    path = fashion_file(tmp_path / "checkpoints", 20, final=True)
    [finding] = [f for f in validate_path(path).findings if f.code == "counters.resume-will-crash"]
    assert finding.severity is Severity.WARNING and "'N/A'" in finding.message


# --- EnStack: TCTri205/EnStack-paper src/trainer.py (save_checkpoint, train(resume_from=...)) -------

def enstack_folder(parent: Path, name: str, epoch: int, step: int, total: int | None = 1270) -> Path:
    """save_checkpoint: model.save_pretrained(dir) + training_state.pth beside it."""
    from safetensors.torch import save_file

    model, opt = _model_and_optimizer()
    folder = parent / name
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "roberta", "num_labels": 3}))
    state: dict[str, Any] = {"optimizer_state_dict": opt.state_dict(), "best_val_f1": 0.5, "best_val_acc": 0.6,
                             "epoch": epoch, "step": step}
    if total is not None:
        state["total_batches"] = total
    torch.save(state, folder / "training_state.pth")
    return folder


def enstack_resume(folder: Path, steps_per_epoch: int = 1270) -> tuple[int, int]:
    """train(resume_from=...) at its latest commit: (start_epoch, start_step)."""
    state = torch.load(folder / "training_state.pth", weights_only=True)
    loaded_epoch, loaded_step = state.get("epoch", 0), state.get("step", 0)
    start_epoch, start_step = 1, 0
    if loaded_step == 0 and loaded_epoch > 0:
        start_epoch = loaded_epoch + 1
    if loaded_step >= steps_per_epoch:          # the branch that always follows (start_epoch <= num_epochs)
        start_epoch, start_step = loaded_epoch + 1, 0
    else:
        start_epoch, start_step = loaded_epoch, loaded_step
    return start_epoch, start_step


def test_enstack_folder_and_its_file_get_the_same_findings(tmp_path: Path) -> None:
    folder = enstack_folder(tmp_path / "checkpoints", "last_checkpoint", 2, 300)
    on_folder = _codes(folder)
    assert "counters.incomplete-epoch" in on_folder
    assert on_folder == _codes(folder / "training_state.pth")


def test_enstack_mid_epoch_prediction_is_its_own_resume_with_other_samples(tmp_path: Path) -> None:
    folder = enstack_folder(tmp_path / "checkpoints", "last_checkpoint", 2, 300)
    p = open_checkpoint(folder).progress
    assert (p.epochs_completed, p.step_in_epoch) == (1, 300)
    assert (p.resume.start_epoch, p.resume.start_batch) == enstack_resume(folder) == (2, 300)   # type: ignore[union-attr]
    assert "the batches it skips are not the ones that were trained" in p.resume.describe()   # type: ignore[union-attr]


def test_enstack_end_of_epoch_state_is_trained_again_by_its_own_resume_and_the_prediction_says_so(
        tmp_path: Path) -> None:
    folder = enstack_folder(tmp_path / "checkpoints", "last_checkpoint", 2, 0)
    p = open_checkpoint(folder).progress
    assert (p.epochs_completed, p.epoch_complete) == (2, True)
    assert (p.resume.start_epoch, p.resume.start_batch) == enstack_resume(folder) == (2, 0)   # type: ignore[union-attr]
    assert "epoch 2 is finished but is trained again" in p.resume.describe()   # type: ignore[union-attr]


def test_enstack_fix_epoch_complete_writes_what_its_resume_needs_to_start_the_next_epoch(tmp_path: Path) -> None:
    folder = enstack_folder(tmp_path / "checkpoints", "last_checkpoint", 2, 300)
    fix_epoch(folder, 2, keep_backup=False)
    state = torch.load(folder / "training_state.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 1270)
    assert enstack_resume(folder) == (3, 0)
    assert open_checkpoint(folder).progress.describe() == "epoch 2 complete"
    assert _validate_exit(folder) == 0


def test_enstack_crash_mid_swap_backup_is_never_resumed_and_the_mv_restores_it(tmp_path: Path) -> None:
    out = tmp_path / "checkpoints"
    enstack_folder(out, ".backup_last_checkpoint", 2, 0)
    enstack_folder(out, ".tmp_last_checkpoint_k3j2", 3, 0)
    run = scan_run(out)
    assert run.resume is None      # neither copy is resumed from; the finding says how to restore
    [swap] = [f for f in run.findings if f.code == "run.swap-leftover"]
    assert swap.fix == f"mv {out / '.backup_last_checkpoint'} {out / 'last_checkpoint'}"
    assert any(f.code == "run.temporary-leftover" and "EnStack" in f.message for f in run.findings)
    (out / ".backup_last_checkpoint").rename(out / "last_checkpoint")
    shutil.rmtree(out / ".tmp_last_checkpoint_k3j2")
    assert scan_run(out).resume.path == out / "last_checkpoint"   # type: ignore[union-attr]


def test_enstack_temporary_folder_beside_last_checkpoint_is_not_latest(tmp_path: Path) -> None:
    out = tmp_path / "checkpoints"
    enstack_folder(out, "last_checkpoint", 2, 0)
    enstack_folder(out, ".tmp_last_checkpoint_ab12", 3, 0)
    run = scan_run(out)
    assert run.resume.path == out / "last_checkpoint"   # type: ignore[union-attr]


# --- run_experiment.py LM: blueberry-llm exp6 run_experiment.py @ 227d53a -------------------------

@dataclasses.dataclass
class ExperimentConfig:
    max_steps: int = 2000


def experiment_file(folder: Path, name: str, global_step: int, epoch: int) -> Path:
    model, opt = _model_and_optimizer()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "global_step": global_step, "epoch": epoch, "best_val_loss": 0.4, "config": ExperimentConfig(),
                "train_history": [], "val_history": []}, folder / name)
    return folder / name


def test_run_experiment_continues_from_its_global_step_and_loses_the_data_position(tmp_path: Path) -> None:
    path = experiment_file(tmp_path / "checkpoints", "checkpoint_step_1000.pt", 1000, 1)
    p = open_checkpoint(path).progress
    assert (p.global_step, p.max_steps, p.stored) == (1000, 2000, {"global_step": 1000, "epoch": 1})
    assert p.resume.global_step == 1000 and p.resume.start_epoch is None   # type: ignore[union-attr]
    assert p.resume.describe() == ("run_experiment.py LM's --resume continues from global step 1000; the data "   # type: ignore[union-attr]
                                   "position: the data restarts at a new shuffled pass")


def test_run_experiment_at_max_steps_says_its_resume_only_re_saves(tmp_path: Path) -> None:
    path = experiment_file(tmp_path / "checkpoints", "final_model.pt", 2000, 3)
    assert "--extend-steps" in open_checkpoint(path).progress.resume.describe()   # type: ignore[union-attr]


def test_run_experiment_fix_epoch_writes_the_epoch_its_resume_restores(tmp_path: Path) -> None:
    path = experiment_file(tmp_path / "checkpoints", "checkpoint_step_1000.pt", 1000, 1)
    fix_epoch(path, 2, keep_backup=False)
    tree = torch.load(path, weights_only=False)   # our own file: ExperimentConfig is this module's
    assert (tree["epoch"], tree["global_step"]) == (2, 1000)   # resume restores epoch = checkpoint['epoch']


# --- counters one level down ---------------------------------------------------------------------

@pytest.mark.parametrize(("nest", "key", "stored"), [
    ("trainer", "global_step", {"trainer.global_step": 7, "trainer.epoch": 2}),
    ("train_state", "step", {"train_state.step": 7}),
])
def test_progress_counters_nested_one_level_down_are_found(tmp_path: Path, nest: str, key: str,
                                                           stored: dict[str, int]) -> None:
    model, opt = _model_and_optimizer()
    counters = {key: 7, **({"epoch": 2} if nest == "trainer" else {})}
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), nest: counters}, tmp_path / "ckpt.pt")
    p = open_checkpoint(tmp_path / "ckpt.pt").progress
    assert p.global_step == 7 and p.stored == stored
    assert p.sources["global_step"] == f"key '{nest}.{key}' = 7"


def _mmengine_checkpoint(path: Path, epoch: int, iters: int) -> None:
    """As MMEngine's Runner.save_checkpoint writes it (runner.py at 2543429): meta holds the epoch
    and the iterations done (an iteration-based loop's epoch stays 0), beside the message hub."""
    model, opt = _model_and_optimizer()
    meta = {"epoch": epoch, "iter": iters, "cfg": "model = dict(type='Linear')\n", "seed": 42,
            "experiment_name": "exp", "time": "20251027_120000", "mmengine_version": "0.10.7"}
    hub = {"log_scalars": {}, "runtime_info": {"epoch": epoch, "iter": iters - 1}, "resumed_keys": {"iter": True}}
    torch.save({"meta": meta, "state_dict": model.state_dict(), "message_hub": hub, "optimizer": opt.state_dict(),
                "param_schedulers": [{"last_step": iters, "by_epoch": False}]}, path)


def test_mmengine_iteration_checkpoints_are_ordered_by_meta_iter(tmp_path: Path) -> None:
    """iter_9000.pth and iter_10000.pth both hold epoch 0: by name, latest took the older one."""
    for iters in (9000, 10000):
        _mmengine_checkpoint(tmp_path / f"iter_{iters}.pth", 0, iters)
    p = open_checkpoint(tmp_path / "iter_10000.pth").progress
    assert p.global_step == 10000 and p.sources["global_step"] == "key 'meta.iter' = 10000"
    assert p.stored == {"meta.iter": 10000, "meta.epoch": 0}
    result = CliRunner().invoke(cli, ["latest", str(tmp_path)])
    assert result.exit_code == 0 and Path(result.output.strip()).name == "iter_10000.pth"


# --- runs ----------------------------------------------------------------------------------------

def test_latest_over_many_runs_names_five_and_counts_the_rest(tmp_path: Path) -> None:
    """A parent of hundreds of runs (/tmp, a home folder) got every one of them on one line."""
    for i in range(8):
        experiment_file(tmp_path / f"run{i}" / "checkpoints", "checkpoint_step_500.pt", 500, 0)
    result = CliRunner().invoke(cli, ["latest", str(tmp_path)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.count("\n") == 0 and "holds 8 runs (" in line
    assert f" and 3 more: `ckptkit ls {tmp_path}` lists them): their counters do not compare" in line
    assert sum(f"run{i}" in line.split("): their")[0] for i in range(8)) == 5


def test_a_folder_of_two_runs_is_grouped_and_latest_refuses_naming_them(tmp_path: Path) -> None:
    llamarec_file(tmp_path / "llamarec" / "models", "checkpoint-recent.pth", 3)
    experiment_file(tmp_path / "lm" / "checkpoints", "checkpoint_step_500.pt", 500, 0)
    run = scan_run(tmp_path)
    assert run.resume is None and len(run.runs()) == 2
    result = CliRunner().invoke(cli, ["latest", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds 2 runs" in result.output and str(tmp_path / "lm" / "checkpoints") in result.output
    named = CliRunner().invoke(cli, ["latest", str(tmp_path / "lm" / "checkpoints")])
    assert named.exit_code == 0 and named.output.strip().endswith("checkpoint_step_500.pt")
    listing = CliRunner().invoke(cli, ["ls", str(tmp_path)]).output
    assert f"run {tmp_path / 'llamarec' / 'models'}" in listing


def test_latest_prefers_the_whole_checkpoint_over_a_weights_only_copy_at_equal_progress(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    out = tmp_path / "checkpoints"
    out.mkdir()
    base = {"model_state_dict": model.state_dict(), "global_step": 1000, "epoch": 1, "best_val_loss": 0.4,
            "config": ExperimentConfig(), "train_history": [], "val_history": []}
    torch.save({**base, "optimizer_state_dict": opt.state_dict()}, out / "a_checkpoint_step_1000.pt")
    torch.save(base, out / "z_weights_step_1000.pt")      # sorts after it by name
    assert scan_run(out).resume.path.name == "a_checkpoint_step_1000.pt"   # type: ignore[union-attr]


def test_a_final_file_is_not_called_stale_when_the_run_was_extended_past_it(tmp_path: Path) -> None:
    out = tmp_path / "models"
    llamarec_file(out, "checkpoint-recent.pth.final", 4)
    llamarec_file(out, "checkpoint-recent.pth", 5)
    assert [f.code for f in scan_run(out).findings] == []


# --- inspect: tied weights -----------------------------------------------------------------------

def test_inspect_counts_a_tied_embedding_and_head_once_and_names_the_tie(tmp_path: Path) -> None:
    from ckptkit.inspection import inspect_checkpoint

    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight                 # tied, as GPT-2 / nanoGPT do
    state = {"embed.weight": embed.weight, "head.weight": head.weight, "norm": torch.ones(4)}
    torch.save({"model": state, "iter_num": 3, "model_args": {}}, tmp_path / "ckpt.pt")
    summary = inspect_checkpoint(tmp_path / "ckpt.pt").model
    assert summary is not None
    assert (summary.tensors, summary.parameters, summary.bytes) == (3, 44, 44 * 4)
    assert summary.ties == [["embed.weight", "head.weight"]]
    output = CliRunner().invoke(cli, ["inspect", str(tmp_path / "ckpt.pt")]).output
    assert "tied (one storage, counted once): embed.weight = head.weight" in output


def test_a_torchtitan_style_dcp_folder_reads_its_step_from_train_state(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.ones(3, 2)},
             "train_state": {"step": torch.tensor(30), "ntokens_seen": torch.tensor(9)}}
    dcp.save(state, checkpoint_id=str(tmp_path / "step-30"))
    p = open_checkpoint(tmp_path / "step-30").progress
    assert (p.global_step, p.stored) == (30, {"train_state.step": 30})
    assert p.sources["global_step"] == "key 'train_state.step' = 30"


def test_stored_counters_that_are_not_numbers_are_not_shown_as_counters(tmp_path: Path) -> None:
    torch.save({"total_batches": (torch.tensor(1.5),), "epoch": 2, "step": 1, "best_val_f1": 0.1}, tmp_path / "t.pth")
    p = open_checkpoint(tmp_path / "t.pth").progress
    assert p.stored == {"epoch": 2, "step": 1}
    json.dumps(p.to_json())
