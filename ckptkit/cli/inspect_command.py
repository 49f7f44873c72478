"""`ckptkit inspect PATH`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ckptkit.cli import EXIT_CLEAN, EXIT_ERROR, main
from ckptkit.cli.render import emit_json, heading, human_bytes, layout_line, number, render_findings, table
from ckptkit.inspection import Inspection, ModuleRow, inspect_checkpoint
from ckptkit.views.jsonable import summarize, to_jsonable


@main.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--tensors", is_flag=True, help="List every model tensor with its shape and dtype.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON (schema in README).")
def inspect_command(path: Path, tensors: bool, as_json: bool) -> None:
    """Show what is in a checkpoint: format, progress in plain words, model, optimizer,
    scheduler, AMP scaler, RNG, metrics, config, and security findings.

    Reads only the checkpoint's index, never its tensor bytes, and never runs code from the
    file. Exit 0 when it was read (security findings are shown, not fatal), 2 when unusable.

    \b
    Examples:
      ckptkit inspect checkpoints/best_model.pt
      ckptkit inspect checkpoint-recent.pth.final --tensors
      ckptkit inspect model.safetensors --json | jq .progress
    """
    report = inspect_checkpoint(path)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(render_inspection(report, tensors))
    # A file that tried to run code is read fine but is not fit for use: exit 2 says so.
    dangerous = [f for f in report.findings if f.code == "security.dangerous-global"]
    if dangerous:
        click.echo(f"ckptkit: error: {path}: its pickle would run code if loaded with torch.load("
                   f"weights_only=False) ({len(dangerous)} dangerous global(s), see Security); "
                   "ckptkit ran none of it", err=True)
    raise SystemExit(EXIT_ERROR if dangerous else EXIT_CLEAN)


def render_inspection(r: Inspection, show_tensors: bool) -> str:
    out = [heading(r.path),
           f"  format    {r.format}",
           layout_line(r.family),
           f"  size      {human_bytes(r.size_bytes)} ({r.size_bytes:,} bytes)",
           f"  progress  {r.progress.describe()}"]
    out += [f"            {field}: {source}" for field, source in r.progress.sources.items()]
    out += [f"            note: {note}" for note in r.progress.notes]
    if r.progress.stored:
        out.append("  stored    " + ", ".join(f"{k} = {v}" for k, v in r.progress.stored.items()))
    if r.progress.resume is not None:
        out.append(f"  resume    {r.progress.resume.describe()}")
    out += _members(r) + _model(r, show_tensors) + _chunks(r, show_tensors) + _optimizer(r)
    for title, section in (("Scheduler", r.scheduler), ("AMP scaler", r.scaler)):
        if section is not None:
            out += ["", heading(title)] + [f"  {k}: {summarize(v, 70)}" for k, v in section.items()]
    if r.rng is not None:
        out += ["", heading("RNG state")] + [f"  {entry}" for entry in r.rng]
    if r.metrics:
        out += ["", heading("Metrics"), table([(k, number(v)) for k, v in r.metrics.items()], ["name", "value"])]
    if r.histories:
        out += ["", heading("Histories"), table([(h.name, h.length, _cell(h.last), _cell(h.best))
                                                  for h in r.histories], ["name", "length", "last", "best"])]
    if r.config is not None:
        out += ["", heading("Config")] + _config_lines(r.config)
    if r.other_keys:
        out += ["", heading("Other keys")] + [f"  {k}: {v}" for k, v in r.other_keys.items()]
    if r.metadata:
        out += ["", heading("Format metadata")] + [f"  {k}: {summarize(v, 70)}" for k, v in r.metadata.items()]
    out += ["", heading("Findings" if r.members else "Security")]
    out += [render_findings(r.findings)] if r.findings else ["  no findings: only known-safe globals"]
    return "\n".join(out)


def _model(r: Inspection, show_tensors: bool) -> list[str]:
    m = r.model
    if m is None:
        return ["", heading("Model"), "  no model state found"]
    dtypes = ", ".join(f"{d} x{n}" for d, n in m.dtypes.items())
    # A bare state dict's source is "(top level)": "Model (the whole file)", not "Model ((top level))".
    source = "the whole file" if m.source == "(top level)" else m.source
    out = ["", heading(f"Model ({source})"),
           f"  {m.tensors} tensors, {number(m.parameters)} parameters, {human_bytes(m.bytes)}, {dtypes}",
           _module_table(m.modules, show_tensors)]
    out += [f"  tied (one storage, counted once): {' = '.join(names)}" for names in m.ties]
    if m.global_parameters is not None:
        out.append(f"  one rank's shards of DTensors (FSDP2 or tensor parallel): {number(m.parameters)} of the whole "
                   f"tensors' {number(m.global_parameters)} parameters")
    if show_tensors:
        out += ["", table([(t.name, t.dtype, "x".join(map(str, t.shape)) or "scalar", number(t.parameters))
                           for t in m.tensor_list], ["tensor", "dtype", "shape", "elements"])]
    return out


# A mixture of experts has thousands of modules: the table shows the first and the last ones
# (a summary one can read; 12,500 rows of it took longer to print than to read the checkpoint).
MODULE_ROWS_SHOWN = (20, 5)


def _module_table(modules: list[ModuleRow], show_tensors: bool) -> str:
    head, tail = MODULE_ROWS_SHOWN
    rows = [(row.prefix, str(row.tensors), number(row.parameters), row.dtypes) for row in
            (modules if len(modules) <= head + tail + 1 else [*modules[:head], *modules[-tail:]])]
    hidden = len(modules) - len(rows)
    if hidden:
        rows.insert(head, (f"... {hidden:,} more modules", "", "", ""))
    text = table(rows, ["module", "tensors", "parameters", "dtypes"])
    if hidden and not show_tensors:
        text += f"\n  ({len(modules):,} modules: --json lists every one, --tensors every tensor)"
    return text


def _members(r: Inspection) -> list[str]:
    if not r.members:
        return []
    return ["", heading(f"Files ({len(r.members)})"),
            table([(m.name, human_bytes(m.size_bytes), m.role, m.format or "-") for m in r.members],
                  ["file", "size", "holds", "read as"])]


def _chunks(r: Inspection, show_tensors: bool) -> list[str]:
    if not r.chunks:
        return []
    files = sorted({c.file for cs in r.chunks.values() for c in cs})
    pieces = sum(len(cs) for cs in r.chunks.values())
    out = ["", heading("Tensor chunks"),
           f"  {len(r.chunks)} tensors in {pieces} chunks across {len(files)} files ({', '.join(files[:4])}"
           f"{', ...' if len(files) > 4 else ''})" + ("" if show_tensors else "; --tensors lists them")]
    if show_tensors:
        rows = [(name, len(cs), "; ".join(f"{c.file}@{c.byte_offset}+{c.length} at {list(c.offsets)}" for c in cs[:3])
                 + (" ..." if len(cs) > 3 else "")) for name, cs in r.chunks.items()]
        out.append(table(rows, ["tensor", "chunks", "stored at (file@offset+length at offsets)"]))
    return out


def _optimizer(r: Inspection) -> list[str]:
    o = r.optimizer
    if o is None:
        return []
    step = f", step {o.step}" if o.step is not None else ""
    return ["", heading(f"Optimizer ({o.source})"),
            f"  {o.kind}, {len(o.groups)} param groups, {o.state_entries} state entries{step}",
            table([(g.index, g.params, _cell(g.lr), _cell(g.weight_decay), _cell(g.betas), _cell(g.momentum))
                   for g in o.groups], ["group", "params", "lr", "weight_decay", "betas", "momentum"])]


def _config_lines(config: Any) -> list[str]:
    if isinstance(config, dict):
        return [f"  {k}: {summarize(to_jsonable(v), 70)}" for k, v in config.items()]
    return [f"  {summarize(config, 70)}"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_cell(v) for v in value) + ")"
    return number(value)
