"""Long training runs are never silent: off a terminal, a ``progress:`` line every N seconds with
the true position (also right after a resume); on a terminal, the live line."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ckptkit.training import load_for_resume
from trainers.retrieval import PRESETS, RetrievalRun, RunOptions

CONFIG = PRESETS["tiny"]  # 12 batches per epoch, grad_accum 2


def test_a_resumed_run_s_first_progress_line_is_the_batch_after_the_checkpoint(tmp_path: Path) -> None:
    options = RunOptions(out=tmp_path, keep_last=None, progress_stream=io.StringIO(), stop_at_micro_step=7)
    assert RetrievalRun(CONFIG, options).run().status == "interrupted"
    stream = io.StringIO()
    resumed = RunOptions(out=tmp_path, keep_last=None, progress_stream=stream, progress_every=0.0)
    RetrievalRun(CONFIG, resumed, load_for_resume(tmp_path)).run()
    progress = [line for line in stream.getvalue().splitlines() if line.startswith("progress: ")]
    assert progress[0] == "progress: epoch 1 | batch 8/12 (66.7%) | step 4/24"
    assert len(progress) == 4 * 12 - 7


@pytest.mark.slow
def test_the_small_lm_preset_prints_a_progress_line_within_seconds_not_after_a_minute(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "trainers.lm",
        "--config",
        "small",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
        "--progress-every",
        "1",
        "--sync-save",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("progress: "):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen.wait(timeout=300)  # generous: two shared cores; the point is "not silent", not speed
        proc.send_signal(signal.SIGTERM)   # the run saves where it is and exits 143
        proc.wait(timeout=300)
        reader.join(timeout=60)
    finally:
        proc.kill()
    first = next((line for line in lines if line.startswith("progress: ")), None)
    assert lines[0].startswith("training small (~") and first is not None, lines
    assert re.fullmatch(r"progress: epoch 1 \| batch \d+/\d+ \(\d+\.\d%\) \| step \d+/2000\n", first), first
    assert proc.returncode == 128 + signal.SIGTERM, lines[-3:]
    assert lines[-1].startswith("resume with: python -m trainers.lm --resume")
