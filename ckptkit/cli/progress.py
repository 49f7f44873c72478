"""A byte-count progress bar on stderr, shown only on a terminal (long work: deep validation)."""
from __future__ import annotations

import sys
from typing import Any

import click


class ByteProgress:
    """A `progress_callback(done, total)` that draws a bar on stderr; `close()` ends the line."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=max(total, 1), label=self.label, file=sys.stderr,
                                          show_eta=True, show_percent=True, width=30)
        step = done - self._bar.pos
        if step > 0:
            self._bar.update(step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()


def progress_for(label: str, enabled: bool) -> ByteProgress | None:
    """A progress bar when `enabled` and stderr is a terminal; None (silent) otherwise."""
    return ByteProgress(label) if enabled and sys.stderr.isatty() else None
