"""SIGKILL `ckptkit fix-epoch` at random moments: the target is always the whole old or new file.

Half the kills land anywhere in the process's life; the other half land inside the write
itself (from the moment the temporary file appears until the process ends), where a crash
could do harm. Delays are seeded, so a failure can be replayed.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ckptkit.formats import open_checkpoint
from ckptkit.storage.atomic import TEMP_MARKER, is_temporary
from ckptkit.validating import validate_path

REPO_ROOT = Path(__file__).resolve().parents[2]
KILLS = 8


def _start(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ckptkit", "fix-epoch", str(path), "--epoch", "2", "--complete"],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_temporary(proc: subprocess.Popen[bytes], folder: Path) -> float:
    """Seconds from now until a temporary file appears beside the target (or the process ends)."""
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < 20:
        if any(TEMP_MARKER in name for name in os.listdir(folder)):
            break
        time.sleep(0.0005)
    return time.monotonic() - start


def _reference_run(path: Path) -> tuple[float, float]:
    """(seconds until the write starts, seconds the write takes) for one uninterrupted run."""
    start = time.monotonic()
    proc = _start(path)
    before_write = _wait_for_temporary(proc, path.parent)
    assert proc.wait() == 0
    return before_write, max(time.monotonic() - start - before_write, 0.005)


def test_a_killed_fix_epoch_leaves_exactly_the_old_or_the_new_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = tmp_path / "original.pth"
    model = {f"layer{i}.weight": torch.randn(512, 512) for i in range(8)}   # 8 MiB of records
    torch.save({"epoch": 1, "step": 40, "total_batches": 100, "best_val_f1": 0.3, "model_state_dict": model},
               original)
    reference = tmp_path / "reference" / "training_state.pth"
    reference.parent.mkdir()
    shutil.copy(original, reference)
    before_write, write_time = _reference_run(reference)
    old, new = original.read_bytes(), reference.read_bytes()
    assert old != new

    baseline = {f.code for f in validate_path(original).findings if f.severity.rank >= 1}
    rng = random.Random(20261122)
    outcomes: list[str] = []
    for i in range(KILLS):
        work = tmp_path / f"run{i}"
        work.mkdir()
        target = work / "training_state.pth"
        shutil.copy(original, target)
        proc = _start(target)
        if i % 2:
            _wait_for_temporary(proc, work)
            time.sleep(rng.uniform(0.0, write_time))
        else:
            time.sleep(rng.uniform(0.0, before_write + write_time))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        data = target.read_bytes()
        assert data in (old, new), f"kill {i}: the target is neither the old nor the new checkpoint"
        outcomes.append("new" if data == new else "old")
        assert open_checkpoint(target).progress.epochs_completed == (2 if data == new else 0)
        # Nothing new at warning level or above: the original already lacks optimizer/RNG state.
        assert {f.code for f in validate_path(target).findings if f.severity.rank >= 1} <= baseline
        loaded = torch.load(target, weights_only=True)
        assert torch.equal(loaded["model_state_dict"]["layer7.weight"], model["layer7.weight"])
        leftovers = [n for n in os.listdir(work) if n != "training_state.pth"]
        assert all(is_temporary(Path(n)) or n.startswith("training_state.pth.bak") for n in leftovers), leftovers
        if data == old and "old" not in outcomes[:-1]:      # a rerun after the crash finishes the job
            assert _start(target).wait() == 0
            assert target.read_bytes() == new
    assert len(outcomes) == KILLS
    print(f"outcomes of {KILLS} kills: {outcomes}")
