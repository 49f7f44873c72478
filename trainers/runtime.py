"""What every bundled trainer does the same way: pick its device, seed its training streams,
enter its autocast, and run with Ctrl+C/SIGTERM turned into a save at the exact batch. One
place, so the trainers' files stay comparable byte for byte."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptkit.core.errors import CkptkitError

EXIT_USAGE = 2


@dataclass
class RunOptions:
    """How a bundled trainer runs (not what it trains: that is its config, saved in checkpoints)."""

    out: Path
    keep_last: int | None = 3  # ignored by families whose checkpoints are replaced in place
    device: str = "auto"  # auto | cpu | cuda
    asynchronous_save: bool = True
    kill_at_micro_step: int | None = None  # SIGKILL this process right after that many batches
    stop_at_micro_step: int | None = None  # interrupt there: save, then return
    progress_stream: Any = None  # default sys.stdout; the line is drawn only on a TTY

import torch


def pick_device(requested: str) -> torch.device:
    """``auto``: CUDA when there is one; under torchrun, this process's local rank's GPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def seed_training_streams(seed: int, rank: int = 0) -> None:
    """Dropout masks differ between ranks but are reproducible; checkpoints carry them (rng_state).
    numpy's stream too: rng_state saves it, and an unseeded one would differ between two runs."""
    stream_seed = seed + 1 + rank
    random.seed(stream_seed)
    torch.manual_seed(stream_seed)
    try:
        import numpy as np

        np.random.seed(stream_seed)
    except ImportError:  # pragma: no cover
        pass


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast for a resolved precision (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def set_peak_lr(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float, factor: float) -> None:
    """A new peak learning rate under a restored LambdaLR schedule whose position is kept (the
    seeds' ``--lr`` on resume); ``factor`` is the schedule's value at its current step."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor


def on_signal(run_getter: Callable[[], Any]) -> Callable[[int, Any], None]:
    """SIGTERM/SIGINT handler: finish the micro-step, save an interrupt checkpoint, exit cleanly."""

    def handler(signum: int, frame: Any) -> None:
        run = run_getter()
        if run is None or run.stop_requested:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now (the last checkpoint is intact)
        run.stop_requested, run.stop_signal = True, signum

    return handler


@dataclass
class Trained:
    run: Any        # the trainer's run object (LMRun, RetrievalRun, ...)
    result: Any     # what its run() returned
    config: Any
    options: Any


def run_interruptibly(prepare: Callable[[], tuple[Any, Any, Any] | int], make_run: Callable[[Any, Any, Any], Any],
                      session: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                      ) -> Trained | int:
    """`prepare()` -> (config, options, resume point) or an exit code; then `make_run(...)`.run(),
    with SIGINT/SIGTERM asking the run in progress to save where it is and stop. Returns the
    finished (or interrupted) run, or the exit code: 2 with one line for a ckptkit error."""
    current: dict[str, Any] = {"run": None}
    handler = on_signal(lambda: current["run"])
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with session():
            try:
                prepared = prepare()
            except CkptkitError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            if isinstance(prepared, int):
                return prepared
            cfg, options, point = prepared
            run = current["run"] = make_run(cfg, options, point)
            for note in run.notes:
                run.log(f"  warning: {note}")
            return Trained(run, run.run(), cfg, options)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def kill_if_at(options: RunOptions, batches_consumed: int) -> None:
    """--kill-at-micro-step: a real crash (SIGKILL, no handler runs) right after that many batches."""
    if options.kill_at_micro_step == batches_consumed:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
