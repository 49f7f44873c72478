"""What every bundled trainer does the same way: pick its device, seed its training streams,
and enter its autocast. One place, so the trainers' files stay comparable byte for byte."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any

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
