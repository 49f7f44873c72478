"""What every training script does the same way, as plain functions it calls: pick the device,
seed the training streams, enter autocast, turn Ctrl+C/SIGTERM into "save at this exact batch
and stop", and crash on purpose (``--kill-at-micro-step``) for tests and the demo.

    options = RunOptions(out=Path("runs/x"))
    device = pick_device(options.device)
    stop = StopRequest()
    with stop_on_signals(stop):
        for batch in ...:
            ...
            kill_if_at(options, position.batches_consumed)
            if stop.requested or stop_at(options, position.batches_consumed): save, break
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist


@dataclass
class RunOptions:
    """How a training run runs (not what it trains: that is its config, saved in checkpoints)."""

    out: Path
    keep_last: int | None = 3  # ignored by layouts whose checkpoints are replaced in place
    device: str = "auto"  # auto | cpu | cuda
    asynchronous_save: bool = True
    fsdp: bool = False  # under torchrun: FSDP with sharded (DCP) checkpoints (the LM trainer)
    kill_at_micro_step: int | None = None  # SIGKILL this process right after that many batches
    stop_at_micro_step: int | None = None  # interrupt there: save, then return
    progress_stream: TextIO | None = None  # default sys.stdout
    progress_every: float | None = None  # off a TTY: a progress line every N seconds (None: none)


@dataclass
class StopRequest:
    """Set by the signal handler; the loop checks it after each batch (so a save lands on a
    batch boundary, never inside one)."""

    requested: bool = False
    signal: int | None = None  # SIGINT/SIGTERM that asked for the stop, if any

    @property
    def exit_code(self) -> int:
        """0 after a planned stop; 128+signal after a signal (130 Ctrl+C, 143 SIGTERM)."""
        return 128 + self.signal if self.signal is not None else 0


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """SIGINT/SIGTERM set ``stop``; a second one raises KeyboardInterrupt at once (the last
    checkpoint on disk is intact). The previous handlers come back on exit."""

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested, stop.signal = True, signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_at(options: RunOptions, batches_consumed: int) -> bool:
    """--stop-at-micro-step: an interrupt planned at that batch (as if SIGTERM came there)."""
    return options.stop_at_micro_step is not None and batches_consumed >= options.stop_at_micro_step


def kill_if_at(options: RunOptions, batches_consumed: int) -> None:
    """--kill-at-micro-step: a real crash (SIGKILL, no handler runs) right after that many batches."""
    if options.kill_at_micro_step == batches_consumed:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def pick_device(requested: str) -> torch.device:
    """``auto``: CUDA when there is one; under torchrun, this process's local rank's GPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def resolve_precision(requested: str, device: torch.device) -> tuple[str, list[str]]:
    """bf16 autocast on CUDA, fp32 on CPU; a saved GPU precision falls back to fp32 on CPU, with a note."""
    if requested == "auto":
        return ("bf16" if device.type == "cuda" else "fp32"), []
    if requested in ("bf16", "fp16") and device.type != "cuda":
        return "fp32", [
            f"precision {requested} needs CUDA; training in fp32 on CPU (numbers will differ from a GPU run)"
        ]
    return requested, []


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


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                  scaler: torch.amp.GradScaler, max_norm: float = 1.0) -> None:
    """The end of an accumulation window: unscale, clip, step (skipped by the scaler on inf),
    zero the gradients, advance the schedule."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


# -- several ranks (torchrun): the same calls work with one process, where they do nothing -------

@contextlib.contextmanager
def distributed_session() -> Iterator[None]:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    owns = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        if owns:
            dist.destroy_process_group()


def _reduce_device(device: torch.device) -> torch.device | str:
    return device if dist.get_backend() == "nccl" else "cpu"


def mean_over_ranks(value: float, device: torch.device, world_size: int) -> float:
    """The mean of ``value`` over all ranks (a logged loss every rank agrees on)."""
    if world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(total)
    return float(total.item()) / world_size


def any_rank(flag: bool, device: torch.device, world_size: int) -> bool:
    """True on every rank when it is true on one (a stop asked of one rank stops them all together)."""
    if world_size == 1:
        return flag
    reduced = torch.tensor([int(flag)], device=_reduce_device(device))
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return bool(reduced.item())
