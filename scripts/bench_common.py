"""Shared pieces of the benchmarks: the big checkpoint they all measure, and process timing.

`write_big_pth(path)` writes the 1.2 GB `.pth` of the issues' targets: 24 x nn.Linear(2048, 2048)
plus AdamW state after one step (weights + exp_avg + exp_avg_sq = 3 x 403 MB), saved as a
recsys-style dict. `run_measured(cmd)` runs a command and returns its wall time and peak RSS.
"""
from __future__ import annotations

import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

FULL_WIDTH, LAYERS = 2048, 24


def width_for(size_mb: float) -> int:
    """The layer width that makes the checkpoint about `size_mb` MB (full size: 2048)."""
    per_element = LAYERS * 3 * 4          # weights + two Adam moments, float32
    width = int(math.sqrt(size_mb * 1e6 / per_element))
    return max(8, min(FULL_WIDTH, width))


def write_big_pth(path: Path, width: int = FULL_WIDTH, layers: int = LAYERS) -> Path:
    """`layers` x nn.Linear(width, width) and AdamW state after one step, torch.save'd to `path`."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, width)).square().mean().backward()
    opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "epoch": 0}, path)
    return path


@dataclass
class Measured:
    seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` to completion; wall time, and its own peak RSS from wait4's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(seconds, usage.ru_maxrss * 1024, proc.returncode, out)


def warm_page_cache(path: Path) -> None:
    """Read the file once so every timed run starts from the same (cached) state."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass
