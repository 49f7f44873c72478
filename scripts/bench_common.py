"""Shared pieces of the benchmarks: big synthetic checkpoints and timing a command as a process.

    from scripts.bench_common import write_big_pth, run_measured
    write_big_pth(Path("/tmp/a.pth"), seed=0)                     # ~1.2 GB: 24 x Linear(2048, 2048) + AdamW
    write_big_pth(Path("/tmp/b.pth"), seed=0, perturb=(3, 17))    # the same, two layers nudged
    seconds, peak_rss_bytes, rc, stdout = run_measured([sys.executable, "-m", "ckptkit", ...])

Checkpoints are randomly initialised (no downloads); the same seed writes the same bytes.
"""
from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

LAYERS = 24


def width_for(size_mb: float) -> int:
    """Layer width giving a checkpoint of about `size_mb` MB (weights + AdamW's two moments)."""
    return max(8, int(math.sqrt(size_mb * 1e6 / (LAYERS * 4 * 3))))


def write_big_pth(path: Path, seed: int, size_mb: float = 1200.0, perturb: Sequence[int] = (),
                  perturb_optimizer: bool = True) -> Path:
    """A recsys-layout .pth: 24 Linear layers, AdamW state after one step, `epoch`.

    `perturb` lists layers whose weight gets a small change (and, with `perturb_optimizer`,
    whose exp_avg too), so two files written with one seed differ in exactly those tensors.
    At the default size, width is 2048 (24 x nn.Linear(2048, 2048): ~1.2 GB).
    """
    import torch
    from torch import nn

    width = 2048 if size_mb == 1200.0 else width_for(size_mb)
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(LAYERS)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * 1e-2
    opt.step()
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 3}
    with torch.no_grad():
        for layer in perturb:
            weight = state["model_state_dict"][f"{layer}.weight"]
            weight[0, : max(1, width // 8)] += 1e-3
            if perturb_optimizer:
                state["optimizer_state_dict"]["state"][2 * layer]["exp_avg"][0, 0] += 1e-3
    torch.save(state, path)
    return path


def run_measured(cmd: Sequence[str], cwd: Path | None = None) -> tuple[float, int, int, str]:
    """Run `cmd` as its own process: (wall seconds, peak RSS in bytes, exit code, stdout).

    The peak RSS is the child's own ru_maxrss (from wait4), which counts touched pages of
    memory-mapped files as well as allocated memory.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {proc.returncode}: {stderr.strip()[-500:]}")
    return seconds, usage.ru_maxrss * 1024, proc.returncode, stdout
