"""`ckptkit resume RUN_DIR|PATH [-- trainer flags]`."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import click

from ckptkit.cli import main
from ckptkit.cli.render import emit_json, render_findings
from ckptkit.runs.resuming import plan_resume


@main.command("resume", context_settings={"ignore_unknown_options": True})
@click.argument("target", type=click.Path(path_type=Path))
@click.argument("trainer_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--dry-run", is_flag=True, help="Show the checkpoint and the command; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON and run nothing.")
def resume_command(target: Path, trainer_args: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Continue a run of a bundled trainer from its newest valid checkpoint.

    TARGET is a run directory (the checkpoint `ckptkit latest` picks) or one checkpoint. It is
    validated first: errors refuse the resume (exit 2) and are listed; warnings are shown. The
    trainer that wrote it is recognised from the checkpoint, and any TRAINER_ARGS after `--`
    are passed on. Exit code: the trainer's.

    \b
    Examples:
      ckptkit resume runs/lm
      ckptkit resume runs/lm/checkpoint_step_500.pt -- --extend-steps 5000
    """
    plan = plan_resume(target, trainer_args)
    if as_json:
        emit_json(plan.to_json())
        return
    verb = "would resume" if dry_run else "resuming"
    click.echo(f"{verb} {plan.checkpoint} ({plan.progress.describe()}) with the '{plan.trainer}' trainer")
    if plan.findings:
        click.echo(render_findings(plan.findings))
    click.echo("$ " + shlex.join(["python", *plan.command[1:]]))
    if dry_run:
        return
    raise SystemExit(subprocess.run(plan.command).returncode)
