"""`ckptkit demo [DIR]`: the README's main job."""
from __future__ import annotations

import tempfile
from pathlib import Path

import click

from ckptkit.cli import EXIT_CLEAN, EXIT_ERROR, main
from ckptkit.cli.render import emit_json, heading
from ckptkit.demo import DemoStep, run_demo


@main.command("demo")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary: each step's command and exit code.")
def demo_command(directory: Path | None, as_json: bool) -> None:
    """Crash a tiny training run for real, inspect, validate, resume it, and prove with
    `ckptkit diff` that the result equals an uninterrupted run bit for bit (about a minute on a
    laptop CPU, nothing downloaded). Every step prints the command it runs, so you can repeat it.

    DIRECTORY (default: a new temporary folder) must be empty or not exist yet.
    """
    root = (directory or Path(tempfile.mkdtemp(prefix="ckptkit-demo-"))).resolve()   # its commands show whole paths
    if root.exists() and any(root.iterdir()):
        raise click.BadParameter(f"{root} is not empty; give a new folder", param_hint="DIRECTORY")
    root.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 100))

    def show(step: DemoStep) -> None:
        click.echo("\n" + heading(f"[{next(counter)}] {step.title}"))
        click.echo(click.style(f"$ {step.shown()}", fg="cyan"))
        if step.note:
            click.echo(f"({step.note})")

    if as_json:
        result = run_demo(root, lambda step: None, lambda out: None)
        emit_json({"root": str(root), "identical": result.identical, "ok": result.ok,
                   "steps": [{"title": s.title, "command": s.shown(), "exit_code": code}
                             for s, code in result.steps]})
        raise SystemExit(EXIT_CLEAN if result.ok and result.identical else EXIT_ERROR)
    result = run_demo(root, show, lambda out: click.echo(out.rstrip("\n")))
    click.echo("")
    if not result.ok:
        step, code = result.steps[-1]
        expected = ", ".join(map(str, step.expect))
        click.echo(f"demo stopped: `{step.shown()}` exited {code} (expected {expected})", err=True)
        raise SystemExit(EXIT_ERROR)
    verdict = "byte-identical" if result.identical else "NOT byte-identical"
    click.echo(heading(f"The resumed run's final_model.pt is {verdict} to the uninterrupted run's."))
    click.echo(f"Everything is in {root}")
    raise SystemExit(EXIT_CLEAN if result.identical else EXIT_ERROR)
