"""Rendering a `RepairResult` (fix-epoch, repair) as a before/after diff, and the shared options."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ckptkit.cli.render import heading
from ckptkit.repair import Change, RepairResult
from ckptkit.views.jsonable import summarize, to_jsonable

MAX_DIFF_LINES = 12


def write_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--dry-run, --backup/--no-backup and --json, the same for every command that writes."""
    for option in reversed([
        click.option("--dry-run", is_flag=True, help="Print the before/after diff; write nothing."),
        click.option("--backup", "backup", type=click.Path(path_type=Path), default=None,
                     help="Where to keep the original (default: <name>.bak beside it; never overwritten)."),
        click.option("--no-backup", is_flag=True, help="Keep no copy of the original."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]):
        command = option(command)
    return command


def check_backup_options(backup: Path | None, no_backup: bool) -> None:
    if backup is not None and no_backup:
        raise click.BadParameter("give either --backup PATH or --no-backup, not both", param_hint="--backup")


def render_result(result: RepairResult) -> str:
    plan = result.plan
    out = [heading(f"{plan.path} ({plan.format}, {plan.family})") + f"  {plan.action}"]
    if plan.progress_before is not None and plan.progress_after is not None:
        arrow = "(unchanged)" if plan.progress_before == plan.progress_after else f"->  {plan.progress_after}"
        out.append(f"  progress  {plan.progress_before}  {arrow}")
    if plan.changes:
        out += diff_lines(plan.changes)
    if plan.cannot_fix:
        out += ["", heading("Not made consistent (left as is)")] + [f"  - {text}" for text in plan.cannot_fix]
    if plan.notes:
        out += ["", heading("Notes")] + [f"  - {text}" for text in plan.notes]
    out += ["", _status_line(result)]
    return "\n".join(out)


def diff_lines(changes: list[Change]) -> list[str]:
    out: list[str] = []
    for file in dict.fromkeys(c.file for c in changes):
        mine = [c for c in changes if c.file == file]
        out += [f"--- {file} (before)", f"+++ {file} (after)"]
        for change in mine[:MAX_DIFF_LINES]:
            if change.kind == "rename":
                holder = f"{change.key}: " if change.path else ""
                out += [click.style(f"-{holder}{change.before}", fg="red"),
                        click.style(f"+{holder}{change.after}", fg="green")]
            else:
                out += [click.style(f"-{change.key}: {_value(change.before)}", fg="red"),
                        click.style(f"+{change.key}: {_value(change.after)}", fg="green")]
        if len(mine) > MAX_DIFF_LINES:
            out.append(f" ... and {len(mine) - MAX_DIFF_LINES} more changes (--json lists them all)")
    return out


def _value(value: Any) -> str:
    if isinstance(value, dict) and len(value) <= 6 and all(isinstance(v, (int, float, str, bool, type(None)))
                                                             for v in value.values()):
        return summarize(to_jsonable(value), 100) if len(repr(value)) > 100 else repr(dict(value))
    return repr(value) if isinstance(value, (int, float, str, bool)) else summarize(value, 100)


def _status_line(result: RepairResult) -> str:
    if result.written:
        kept = f"; original kept at {result.backups[0]}" if result.backups else "; no backup kept (--no-backup)"
        return f"written: {', '.join(result.plan.files)}{kept}"
    return result.status
