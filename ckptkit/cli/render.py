"""Shared rendering for commands: JSON output, tables, sizes, findings."""
from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

import click

from ckptkit.core.checkpoint import Finding
from ckptkit.families import family_named


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], indent: str = "  ",
          widths: Sequence[int | None] | None = None) -> str:
    if widths:      # one width per column
        rows = [[_wrap(str(cell), width) for cell, width in zip(row, widths, strict=True)] for row in rows]
    else:
        rows = list(rows)
    # Wrapped here, not with tabulate's maxcolwidths: that re-parses cells as numbers even with
    # disable_numparse and fails on "1,000".
    from tabulate import tabulate  # imported here: it costs a fifth of a second at every start

    text = tabulate(rows, headers=list(headers), tablefmt="simple", disable_numparse=True)
    return "\n".join(indent + line for line in text.splitlines())


def _wrap(text: str, width: int | None) -> str:
    """Wrap at spaces only: a path or a command longer than the column stays whole (a wider
    column beats a file name split at a hyphen that nobody can copy and paste)."""
    if width is None:
        return text
    return "\n".join(textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False) if line else line
                     for line in text.splitlines())


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def number(n: Any) -> str:
    if isinstance(n, float):
        return f"{n:.6g}"
    if isinstance(n, int) and not isinstance(n, bool):
        return f"{n:,}"
    return str(n)


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 file", "5 files": a count with its noun in the right number."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def layout_line(family: str) -> str:
    """The `layout` line: the family's name and, where it has one, what users call that layout."""
    known = family_named(family)
    return f"  layout    {family}: {known.description}" if known else f"  layout    {family}"


def heading(text: str) -> str:
    return click.style(text, bold=True)


def render_findings(findings: list[Finding]) -> str:
    # The fix is a command to copy and paste: on one line of its own, never wrapped.
    rows = [(f.severity.value, f.code, _wrap(f.where, 32),
             _wrap(f.message, 72) + (f"\n-> fix: {f.fix}" if f.fix else ""))
            for f in findings]
    return table(rows, ["severity", "code", "where", "message"])
