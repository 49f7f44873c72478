"""`ckptkit salvage DAMAGED OUT [--names-from OTHER] [--json]`."""
from __future__ import annotations

from pathlib import Path

import click

from ckptkit.cli import EXIT_CLEAN, EXIT_FINDINGS, main
from ckptkit.cli.render import emit_json, heading, human_bytes, table
from ckptkit.salvage import SalvageReport, salvage

_SHOWN = 10     # recovered items listed in the text output; --json lists them all


@main.command("salvage")
@click.argument("damaged", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--names-from", "names_from", type=click.Path(path_type=Path), metavar="OTHER",
              help="Another checkpoint of the same run: names and shapes for the damaged file's tensors "
                   "when its data.pkl is lost (matched by record key and size, else by order).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def salvage_command(damaged: Path, out: Path, names_from: Path | None, as_json: bool) -> None:
    """Rescue what a truncated or partly overwritten checkpoint still holds.

    Every torch.save record whose bytes are all present and whose CRC-32 matches (found by its
    own header: no zip directory needed), every complete tensor of a safetensors file, every
    whole member of a folder, is written to OUT, a new checkpoint that torch.load /
    safetensors load. DAMAGED is never changed; OUT must not exist. The report says what was
    recovered, what was lost (by name where known) and whether a run can resume from OUT.

    Exit 0 when everything was recovered, 1 when something was lost, 2 when nothing could be.

    \b
    Examples:
      ckptkit salvage checkpoint_step_1000.pt rescued.pt
      ckptkit salvage best_model.pt rescued.pt --names-from checkpoint_step_500.pt
      ckptkit salvage checkpoint-500/ checkpoint-500-rescued/ --json
    """
    report = salvage(damaged, out, names_from)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(render_salvage(report))
    raise SystemExit(EXIT_CLEAN if report.complete else EXIT_FINDINGS)


def render_salvage(report: SalvageReport) -> str:
    lost = report.all_lost()
    recovered = _all_recovered(report)
    out = [heading(f"{report.source} -> {report.output}"), f"  format     {report.format}",
           f"  recovered  {len(recovered)} item(s), {human_bytes(sum(r[2] for r in recovered))}",
           f"  lost       {len(lost)} item(s)" + ("" if lost else ": nothing")]
    if lost:
        parts: dict[str, int] = {}
        for x in lost:
            parts[x.name.split(".", 1)[0]] = parts.get(x.name.split(".", 1)[0], 0) + 1
        more = len(lost) - _SHOWN
        out += ["", heading("Lost" + (f" (first {_SHOWN}; --json lists all {len(lost)})" if more > 0 else "")),
                table([(x.name, x.reason) for x in lost[:_SHOWN]], ["name", "why"], widths=[48, 64]),
                "  by part: " + ", ".join(f"{name} {n}" for name, n in parts.items())]
    if recovered:
        rows = [(name, what, checked) for name, what, _, checked in recovered[:_SHOWN]]
        more = len(recovered) - _SHOWN
        out += [
            "",
            heading("Recovered" + (f" (first {_SHOWN}; --json lists all {len(recovered)})" if more > 0 else "")),
            table(rows, ["name", "what", "checked by"], widths=[48, 28, 40]),
        ]
    r = report.resume
    out += [
        "",
        heading("Can a run resume from it?"),
        f"  model      {r.model}",
        f"  optimizer  {r.optimizer}",
        f"  counters   {r.counters}",
        "  verdict    "
        + (
            "yes: validate it, then resume (ckptkit validate " + str(report.output) + ")"
            if r.resumable
            else "no: use it for its weights, or resume from an older whole checkpoint (ckptkit latest RUN_DIR)"
        ),
    ]
    out += [f"  note: {n}" for n in _notes(report)]
    return "\n".join(out)


def _all_recovered(report: SalvageReport, prefix: str = "") -> list[tuple[str, str, int, str]]:
    rows = [(prefix + r.name, r.what, r.nbytes, r.checked) for r in report.recovered]
    for m in report.members:
        rows += _all_recovered(m, f"{prefix}{m.source.name}: ")
    return rows


def _notes(report: SalvageReport) -> list[str]:
    notes = list(report.notes)
    for m in report.members:
        notes += [f"{m.source.name}: {n}" for n in m.notes]
    return notes
