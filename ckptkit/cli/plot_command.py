"""`ckptkit plot RUN_DIR|PATH -o curves.png [--json]`."""
from __future__ import annotations

from pathlib import Path

import click

from ckptkit.cli import EXIT_CLEAN, EXIT_ERROR, main
from ckptkit.cli.render import emit_json, heading, table
from ckptkit.plotting import PlotData, collect_series


@main.command("plot")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="The PNG to write (needs the plot extra: pip install 'ckptkit[plot]').")
@click.option("--json", "as_json", is_flag=True, help="Print the series as JSON instead of drawing them.")
def plot_command(path: Path, output: Path | None, as_json: bool) -> None:
    """Draw the loss and metric histories a run's checkpoints carry, as one PNG.

    Reads train_history/val_history (run_experiment.py LM), train_losses/val_recalls
    (retrieval .pt), log_history (HF Trainer folder), Lightning's monitored score, and the
    bundled trainers' records. One line per run (the folder its checkpoints lie in), against
    global step (or epoch where that is all there is); the newest checkpoint's history is used,
    older ones fill gaps. Every checkpoint on disk is marked (star: latest, diamond: best,
    red X: broken); a dashed line marks a resume the histories show.

    Exit 0 when something was drawn (or printed), 2 when nothing carries a history.

    \b
    Examples:
      ckptkit plot runs/exp1 -o curves.png
      ckptkit plot output/checkpoint-500 -o curves.png
      ckptkit plot runs/exp1 --json
    """
    if output is None and not as_json:
        raise click.BadParameter("give -o curves.png (or --json for the series)", param_hint="-o")
    data = collect_series(path)
    if output is not None:
        from ckptkit.plotting.png import (
            write_png,  # matplotlib: only this command, only when drawing
        )

        write_png(data, output)
    if as_json:
        emit_json(data.to_json())
    else:
        click.echo(render_plot(data, output))
    raise SystemExit(EXIT_CLEAN if data.series else EXIT_ERROR)


def render_plot(data: PlotData, output: Path | None) -> str:
    rows = [(s.run, s.metric, s.axis, len(s.points), f"{s.points[0][0]:g}..{s.points[-1][0]:g}", s.source)
            for s in data.series]
    out = [heading(f"{data.root} -> {output}"), table(rows, ["run", "metric", "against", "points", "range", "from"])]
    marks = [(m.run, m.path, m.kind, "" if m.step is None else f"{m.step:g}", m.note or "") for m in data.markers]
    out += ["", heading("Checkpoints marked"), table(marks, ["run", "checkpoint", "as", "step", "note"],
                                                    widths=[None, 40, None, None, 50])]
    out += [f"  resumed at {r.axis} {r.step:g} ({r.run}): {r.why}" for r in data.resumes]
    out += [f"  note: {n}" for n in data.notes]
    return "\n".join(out)
