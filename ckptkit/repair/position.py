"""fix-epoch's human numbering, shared by the single-file and HF Trainer folder repairs:
`--epoch N --complete` means N whole epochs are done; `--epoch N --step S` means the N-th epoch
is in progress with S batches of it trained."""
from __future__ import annotations


def target_position(epoch: int, step: int | None) -> tuple[int, int]:
    """(epochs completed, batches into the next epoch) for human `--epoch N [--step S]`."""
    if epoch < 0:
        raise ValueError(f"--epoch must be 0 or more, got {epoch}")
    if step is None:
        return epoch, 0
    if epoch < 1 or step < 1:
        raise ValueError("--step S means S batches of epoch N are done: needs N >= 1 and S >= 1 "
                         "(for a finished epoch use --complete)")
    return epoch - 1, step


def describe_action(epoch: int, step: int | None) -> str:
    return f"fix-epoch --epoch {epoch} " + ("--complete" if step is None else f"--step {step}")
