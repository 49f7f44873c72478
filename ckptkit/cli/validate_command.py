"""`ckptkit validate PATH [--deep] [--against REF] [--fail-on LEVEL] [--json]`."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from ckptkit.cli import EXIT_CLEAN, EXIT_FINDINGS, main
from ckptkit.cli.progress import progress_for
from ckptkit.cli.render import emit_json, heading, render_findings
from ckptkit.core.checkpoint import Severity
from ckptkit.validating import validate_path
from ckptkit.validation import ValidationReport


@main.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--deep", is_flag=True,
              help="Also read every tensor byte (streamed): zip CRCs, NaN/Inf, negative exp_avg_sq.")
@click.option("--against", "against", type=click.Path(path_type=Path), metavar="REF",
              help="A reference checkpoint or weights file: report missing/unexpected keys, shape "
                   "mismatches and their cause.")
@click.option("--fail-on", type=click.Choice([s.value for s in Severity]), default="error", show_default=True,
              help="Exit 1 when a finding of this severity or worse is present.")
@click.option("--no-run", "no_run", is_flag=True,
              help="Check PATH alone: skip the run-level checks (no other checkpoint of its folder is read).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema in README).")
def validate_command(path: Path, deep: bool, against: Path | None, fail_on: str, no_run: bool,
                     as_json: bool) -> None:
    """Is this checkpoint whole, consistent and safe to resume from? Runs every check and
    reports all findings: a stable code, severity, where (file: key), expected vs found, and
    the ckptkit command that fixes it.

    Exit 0 when no finding reaches --fail-on, 1 when one does, 2 when the input is unusable.

    \b
    Examples:
      ckptkit validate checkpoints/checkpoint_step_1000.pt
      ckptkit validate last_checkpoint/training_state.pth --deep
      ckptkit validate model.pt --against reference.safetensors --json
    """
    progress = progress_for("deep check", deep and not as_json)
    try:
        report = validate_path(path, deep=deep, against=against, siblings=not no_run,
                               progress_callback=progress)
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(render_report(report))
    raise SystemExit(EXIT_FINDINGS if report.fails(Severity(fail_on)) else EXIT_CLEAN)


def render_report(report: ValidationReport) -> str:
    counts = Counter(f.severity.value for f in report.findings)
    mode = "deep" if report.deep else "index only; add --deep to read tensor bytes"
    out = [heading(report.path), f"  format    {report.format}", f"  layout    {report.family}",
           f"  checks    {len(report.checks_run)} groups ({mode})"]
    if report.resume:
        out.append(f"  resume    {report.resume}")
    if not report.findings:
        return "\n".join(out + ["", "  clean: no findings"])
    summary = ", ".join(f"{counts[s.value]} {s.value}{'s' if counts[s.value] != 1 and s.value != 'info' else ''}"
                        for s in Severity if counts[s.value])
    return "\n".join(out + ["", heading(f"Findings ({summary})"), render_findings(report.findings)])
