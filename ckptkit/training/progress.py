"""A one-line training progress display that always shows the true position.

Seed 003's bar was ``tqdm(enumerate(loader), total=total_batches, initial=resume_step)`` over a
loop that still iterated (and skipped) the first ``resume_step`` batches, so it counted them
twice ("1812it" for 1270 batches). Here the line is *rendered from the data position itself*,
never from a counter of loop iterations, so it cannot drift from where the run really is.

Writes only when the stream is a TTY (logs and ``--json`` stay clean); no tqdm dependency.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from ckptkit.training.sampler import DataPosition


def render_progress(position: DataPosition, global_step: int, max_steps: int, loss: float | None = None) -> str:
    """``epoch 2 | batch 1000/1270 (78.7%) | step 3540/12700 | loss 2.3150``: the true position.

    Epochs are numbered from 1 as in `Progress.describe()` ("epoch 2 INCOMPLETE: 1000/1270"), so
    the trainer's log and `ckptkit inspect` name the same position the same way.
    """
    done = position.batch_in_epoch
    pct = 100.0 * done / position.steps_per_epoch if position.steps_per_epoch else 0.0
    parts = [
        f"epoch {position.epoch + 1}",
        f"batch {done}/{position.steps_per_epoch} ({pct:.1f}%)",
        f"step {global_step}/{max_steps}",
    ]
    if position.micro_step:
        parts.append(f"micro {position.micro_step}/{position.grad_accum}")
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    return " | ".join(parts)


class ProgressLine:
    """Redraws one status line in place on a TTY at most ``max_per_second`` times; silent otherwise."""

    def __init__(self, stream: TextIO | None = None, *, max_per_second: float = 10.0, force: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = force or _isatty(self.stream)
        self._min_interval = 1.0 / max_per_second
        self._last_draw = float("-inf")
        self._width = 0
        self.last_text = ""

    def update(self, position: DataPosition, global_step: int, max_steps: int, loss: float | None = None) -> None:
        self.last_text = render_progress(position, global_step, max_steps, loss)
        now = time.monotonic()
        if self.enabled and now - self._last_draw >= self._min_interval:
            self._draw(self.last_text)
            self._last_draw = now

    def message(self, text: str) -> None:
        """Print a full line above the progress line (log lines, eval results)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
        self.stream.write(text + "\n")
        if self.enabled and self.last_text:
            self._draw(self.last_text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self._draw(self.last_text)
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    def _draw(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
