"""Shared pieces of the benchmarks: the big checkpoint they all measure, and process timing.

`write_big_pth(path)` writes the 1.2 GB `.pth` of the issues' targets: 24 x nn.Linear(2048, 2048)
plus AdamW state after one step (weights + exp_avg + exp_avg_sq = 3 x 403 MB), saved as a
recsys-style dict. `run_measured(cmd)` runs a command and returns its wall time and peak RSS.
"""
from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
import tempfile
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


REPO_ROOT = Path(__file__).resolve().parent.parent


def compile_bytecode() -> None:
    """Compile this checkout's ckptkit to .pyc, as `pip install` does for an installed package.

    Python reads cached bytecode even when PYTHONDONTWRITEBYTECODE=1 (set on our CI machines)
    stops it from writing any; without this every timed command would compile ckptkit's ~60
    modules from source first (~40 ms), which no installed ckptkit does and no baseline pays
    (torch's modules come compiled from its wheel).
    """
    import compileall

    compileall.compile_dir(REPO_ROOT / "ckptkit", quiet=1)


def repo_env() -> dict[str, str]:
    """The environment for child processes: this checkout's ckptkit first on the path."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def big_pth_in_child(folder: Path, size_mb: float) -> Path:
    """The benchmark checkpoint of about `size_mb` MB in `folder` (written once, then reused).

    Written by a child process: a benchmark that imported torch and built the model itself would
    carry that memory, and it would leak into every measured child's peak RSS (see run_measured).
    """
    width = FULL_WIDTH if size_mb >= 1200 else width_for(size_mb)
    path = folder / f"big_{width}.pth"
    if not path.exists():
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from scripts.bench_common import write_big_pth; "
                        "write_big_pth(Path(sys.argv[1]), int(sys.argv[2]))", str(path), str(width)],
                       check=True, env=repo_env())
    return path


@dataclass
class Measured:
    seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str


GNU_TIME = Path("/usr/bin/time")


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` to completion; its wall time and its own peak RSS.

    A child spawned straight from this Python process inherits this process's RSS high-water
    mark when it execs (Linux folds the old address space's peak into the new program's
    maxrss), which overstates a small command's peak by whatever the benchmark itself used.
    /usr/bin/time forks the command from a tiny process, so its %M is the command's own.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        timed = [str(GNU_TIME), "-o", report.name, "-f", "%M", *cmd] if GNU_TIME.exists() else cmd
        start = time.perf_counter()
        proc = subprocess.run(timed, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        seconds = time.perf_counter() - start
        lines = report.read().split()
    peak = int(lines[-1]) * 1024 if GNU_TIME.exists() and lines else _children_peak()
    return Measured(seconds, peak, proc.returncode, proc.stdout.decode(errors="replace"))


def _children_peak() -> int:
    # Fallback without GNU time: may include this process's own peak (see run_measured).
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def warm_page_cache(path: Path) -> None:
    """Read the file once so every timed run starts from the same (cached) state. Through a
    small buffer: this process's own peak RSS must stay small (see run_measured)."""
    buffer = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
