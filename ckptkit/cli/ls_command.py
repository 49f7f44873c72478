"""`ckptkit ls RUN_DIR` and `ckptkit latest RUN_DIR`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ckptkit.cli import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS, main
from ckptkit.cli.render import emit_json, human_bytes, render_findings, table
from ckptkit.core.checkpoint import Severity
from ckptkit.runs import Run, RunEntry, scan_run


@main.command("ls")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (schema in README).")
def ls_command(run_dir: Path, as_json: bool) -> None:
    """List every checkpoint below RUN_DIR, whatever its format, ordered by training progress
    (never by file name or time), with size, a quick health status and markers:
    latest (furthest progress; of several saved at the same point, the one a resume
    takes), best, final (training finished), resume (what `ckptkit latest` picks). Run-level traps are
    listed under the table.

    Exit 0 when every checkpoint is ok and no trap was found, 1 otherwise, 2 when RUN_DIR
    cannot be read.

    \b
    Examples:
      ckptkit ls checkpoints/
      ckptkit ls experiments/llm/beauty/checkpoints --json | jq '.checkpoints[].path'
    """
    run = scan_run(run_dir)
    if as_json:
        emit_json(run.to_json())
    else:
        click.echo(render_run(run))
    problems = any(e.health.status != "ok" for e in run.entries) or not run.entries or any(
        f.severity.rank >= Severity.WARNING.rank for f in run.findings)
    raise SystemExit(EXIT_FINDINGS if problems else EXIT_CLEAN)


def render_run(run: Run) -> str:
    if not run.entries:
        return f"no checkpoints found below {run.root}"
    groups = run.groups() if len(run.runs()) > 1 else {run.root: run.entries}
    out: list[str] = []
    for folder, entries in groups.items():
        if len(groups) > 1:     # several runs: one table each (their counters do not compare)
            out += (["", f"run {folder}"] if out else [f"run {folder}"])
        # The checkpoint column is never wrapped: a path is copied whole (even one with spaces).
        rows = [(e.relative + ("/" if e.is_folder else ""), e.format or "?", e.progress.describe(),
                 human_bytes(e.size_bytes), _health(e), ", ".join(e.markers)) for e in entries]
        out.append(table(rows, ["checkpoint", "format", "progress", "size", "health", "markers"],
                         widths=[None, None, 44, None, 48, None], indent=""))
    if run.findings:
        out += ["", f"Run findings ({len(run.findings)})", render_findings(run.findings)]
    return "\n".join(out)


def _health(entry: RunEntry) -> str:
    """Broken rows say why (that is what the reader needs); warnings name their codes (details: validate)."""
    h = entry.health
    if h.status == "broken":
        reason = h.reason or ""
        return f"broken: {reason[:117] + '...' if len(reason) > 120 else reason}"
    if h.status == "warnings":
        return f"warnings ({', '.join(h.codes)})"
    return h.status


@main.command("latest")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print {path, format, progress} as JSON instead of the bare path.")
def latest_command(run_dir: Path, as_json: bool) -> None:
    """Print only the path of the most advanced checkpoint below RUN_DIR that is whole and
    consistent (readable, no error findings, not a leftover temporary, progress known).

    Exit 1 with a message on stderr when none qualifies.

    \b
    Example:
      python train.py --resume_from_checkpoint "$(ckptkit latest runs/x)"
    """
    run = scan_run(run_dir)
    if run.resume is None and len(run.runs()) > 1:
        names = [str(folder) for folder in run.runs()]
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more: `ckptkit ls {run_dir}` lists them"
                                         if len(names) > 5 else "")
        click.echo(f"ckptkit: {run_dir} holds {len(names)} runs ({listed}): their counters do not compare; "
                   f"name one, e.g. `ckptkit latest {names[-1]}`", err=True)
        sys.exit(EXIT_ERROR)
    if run.resume is None:
        click.echo(f"ckptkit: no whole and consistent checkpoint below {run_dir} ({run.counted()}; "
                   f"see `ckptkit ls {run_dir}`)", err=True)
        sys.exit(EXIT_FINDINGS)
    if as_json:
        entry = run.resume
        emit_json({"path": str(entry.path), "format": entry.format, "progress": entry.progress.to_json()})
    else:
        click.echo(str(run.resume.path))
    raise SystemExit(EXIT_CLEAN)
