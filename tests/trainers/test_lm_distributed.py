from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> tuple[Path, dict]:
    """One torchrun launch (2 CPU ranks, gloo) for both DDP and FSDP: starting ranks is the slow part."""
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO_ROOT / "tests/trainers/distributed_worker.py"), str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "result.json").read_text())


def test_ddp_on_two_gloo_ranks_resumes_to_a_byte_identical_final_checkpoint(two_rank_runs) -> None:
    out, results = two_rank_runs
    assert results["ddp"] == {"stopped_at": [4, 8], "resumed_from": "checkpoint_step_4.pt", "resume_warnings": []}
    a, b = out / "ddp/uninterrupted/final_model.pt", out / "ddp/resumed/final_model.pt"
    assert a.read_bytes() == b.read_bytes()
    final = torch.load(a, weights_only=True)
    assert final["global_step"] == 8 and final["data_position"]["world_size"] == 2
    assert final["data_position"]["steps_per_epoch"] == 5  # 44 samples / (4 per rank x 2 ranks)


def test_ddp_checkpoints_hold_one_rng_state_per_rank_and_they_differ(two_rank_runs) -> None:
    out, _ = two_rank_runs
    rng = torch.load(out / "ddp/resumed/checkpoint_step_4.pt", weights_only=True)["rng_state"]
    assert rng["world_size"] == 2 and len(rng["ranks"]) == 2
    assert not torch.equal(rng["ranks"][0]["torch_cpu"], rng["ranks"][1]["torch_cpu"])


def test_fsdp_sharded_checkpoints_resume_to_the_same_shards_and_state(two_rank_runs, tmp_path: Path) -> None:
    out, results = two_rank_runs
    assert results["fsdp"] == {"stopped_at": [4, 8], "resumed_from": "checkpoint_step_4", "resume_warnings": []}
    a, b = out / "fsdp/uninterrupted/final_model", out / "fsdp/resumed/final_model"
    assert sorted(p.name for p in a.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "ckptkit_training_state.pt",
    ]
    for name in ("__0_0.distcp", "__1_0.distcp", "ckptkit_training_state.pt"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    dcp_to_torch_save(a, tmp_path / "a.pt")
    dcp_to_torch_save(b, tmp_path / "b.pt")
    full_a, full_b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.pt", "b.pt"))
    assert full_a["model"].keys() == full_b["model"].keys()
    assert all(torch.equal(full_a["model"][k], full_b["model"][k]) for k in full_a["model"])
    state = torch.load(a / "ckptkit_training_state.pt", weights_only=True)
    assert "model_state_dict" not in state and state["ckptkit"]["sharded"] is True
    assert state["global_step"] == 8 and len(state["rng_state"]["ranks"]) == 2


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "trainers.lm", *args], env=env, capture_output=True, text=True, timeout=240)


def test_an_fsdp_run_killed_while_its_async_save_is_in_flight_resumes_to_the_same_shards(
        two_rank_runs, tmp_path: Path) -> None:
    out, _ = two_rank_runs
    run = tmp_path / "killed"
    # micro-step 12 completes step 6: its best+periodic save is submitted, then every rank is SIGKILLed
    killed = _torchrun("--config", "tiny", "--grad-accum", "2", "--max-steps", "8", "--save-interval", "3",
                       "--eval-interval", "3", "--fsdp", "--out", str(run), "--kill-at-micro-step", "12")
    assert killed.returncode != 0 and not (run / "final_model").exists()
    # step 3's folders are untouched and still confirmed, whatever the kill interrupted
    for name in ("checkpoint_step_3", "best_model"):
        assert (run / f"{name}.manifest.json").is_file(), sorted(p.name for p in run.iterdir())
    leftovers = [p.name for p in run.iterdir() if ".ckptkit-tmp-new-" in p.name]
    # `ckptkit resume RUN_DIR` finds the newest confirmed folder and relaunches the trainer under torchrun
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    resumed = subprocess.run([sys.executable, "-m", "ckptkit", "resume", str(run)], env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--nproc-per-node=2 -m trainers.lm --resume" in resumed.stdout and "--fsdp" in resumed.stdout
    assert "resuming from" in resumed.stdout and "checkpoint_step_" in resumed.stdout
    for name in leftovers:   # what the kill left half-written is cleared by the resumed run's manager
        assert f"removed {name}: the unfinished write of a crashed save" in resumed.stdout
    assert not [p.name for p in run.iterdir() if ".ckptkit-tmp-" in p.name]
    reference = out / "fsdp/uninterrupted/final_model"
    for name in ("__0_0.distcp", "__1_0.distcp", "ckptkit_training_state.pt"):
        assert (run / "final_model" / name).read_bytes() == (reference / name).read_bytes(), name
