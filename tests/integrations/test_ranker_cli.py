"""`python -m trainers.ranker` stopped, then continued by `ckptkit resume`, equals one uninterrupted run;
ckptkit's commands read its folders as any Trainer folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integrations.hf_runs import differences, final_state, train
from trainers.ranker import RankerConfig

FLAGS = ["--samples", "12", "--epochs", "2", "--val-iterations", "1", "--device", "cpu"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_ranker_stopped_then_resumed_by_ckptkit_equals_an_uninterrupted_run_and_refuses_other_batches(
    tmp_path: Path,
) -> None:
    out = tmp_path / "ranker"
    stopped = _run("-m", "trainers.ranker", "--out", str(out), *FLAGS, "--stop-at-step", "4")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "trained to step 4" in stopped.stdout

    listed = _run("-m", "ckptkit", "ls", str(out), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["path"]: row for row in json.loads(listed.stdout)["checkpoints"]}
    assert rows["checkpoint-4"]["markers"] == ["latest", "best", "resume"]   # not "final": it stopped early
    assert rows["checkpoint-4"]["progress"]["global_step"] == 4
    assert all(row["health"]["status"] == "ok" for row in rows.values())
    assert _run("-m", "ckptkit", "validate", str(out / "checkpoint-4")).returncode == 0

    refused = _run("-m", "trainers.ranker", "--resume", str(out), "--train-batch", "2")
    assert refused.returncode == 2
    assert "gradient_accumulation_steps was 2 at the save, now 1" in refused.stderr
    assert "Traceback" not in refused.stderr

    resumed = _run("-m", "ckptkit", "resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "with the 'ranker' trainer" in resumed.stdout
    assert f"resuming from {out / 'checkpoint-4'}" in resumed.stdout

    cfg = RankerConfig(samples=12, epochs=2, val_iterations=1)
    train(cfg, tmp_path / "uninterrupted")
    assert differences(final_state(tmp_path / "uninterrupted"), final_state(out)) == []

