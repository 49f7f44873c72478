"""A one-line training progress display that always shows the true position.

EnStack's bar was ``tqdm(enumerate(loader), total=total_batches, initial=resume_step)`` over a
loop that still iterated (and skipped) the first ``resume_step`` batches, so it counted them
twice ("1812it" for 1270 batches). Here the line is *rendered from the data position itself*,
never from a counter of loop iterations, so it cannot drift from where the run really is.

On a TTY the line is redrawn in place; anywhere else (a log file, a pipe) it is silent unless
``every`` is given, and then a full ``progress: ...`` line is written every ``every`` seconds,
so a long run is never silent for long. No tqdm dependency.
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


def render_epoch_position(position: DataPosition, global_step: int, epochs: int) -> str:
    """``epoch 2 | batch 5/12 | step 8 | 1 of 4 epochs complete``: an epoch trainer's resume point."""
    return (f"epoch {position.epoch + 1} | batch {position.batch_in_epoch}/{position.steps_per_epoch} | "
            f"step {global_step} | {position.epoch} of {epochs} epochs complete")


class ProgressLine:
    """Redraws one status line in place on a TTY at most ``max_per_second`` times; elsewhere
    a ``progress:`` line every ``every`` seconds (counted from construction), or nothing."""

    def __init__(self, stream: TextIO | None = None, *, max_per_second: float = 10.0, force: bool = False,
                 every: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = force or _isatty(self.stream)
        self._min_interval = 1.0 / max_per_second
        self._last_draw = float("-inf")
        self._every = None if self.enabled else every
        self._last_line = time.monotonic()
        self._width = 0
        self.last_text = ""

    def update(self, position: DataPosition, global_step: int, max_steps: int, loss: float | None = None) -> None:
        self.last_text = render_progress(position, global_step, max_steps, loss)
        now = time.monotonic()
        if self.enabled and now - self._last_draw >= self._min_interval:
            self._draw(self.last_text)
            self._last_draw = now
        elif self._every is not None and now - self._last_line >= self._every:
            self.stream.write(f"progress: {self.last_text}\n")
            self.stream.flush()
            self._last_line = now

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
