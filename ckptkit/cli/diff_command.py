"""`ckptkit diff A B`."""
from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ckptkit.cli import EXIT_CLEAN, EXIT_FINDINGS, main
from ckptkit.cli.render import emit_json, heading, number, table
from ckptkit.diffing.report import (
    CHANGED,
    EQUAL,
    IDENTICAL,
    ONLY_A,
    ONLY_B,
    SECTIONS,
    SHAPE_CHANGED,
    CheckpointDiff,
    DiffOptions,
    TensorDiff,
)
from ckptkit.formats import open_checkpoint
from ckptkit.views.keys import summarize_renames


@main.command("diff")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--atol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Absolute tolerance: elements within atol + rtol * |b| count as equal.")
@click.option("--rtol", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Relative tolerance (see --atol).")
@click.option("--only", "only", type=click.Choice(SECTIONS), multiple=True,
              help="Compare only this section (repeatable). Default: all.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the most changed tensors to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON (schema in README).")
def diff_command(a: Path, b: Path, atol: float, rtol: float, only: tuple[str, ...], top: int,
                 as_json: bool) -> None:
    """Show what changed from checkpoint A to checkpoint B: keys, shapes and dtypes, tensor
    values, optimizer/scheduler/scaler/RNG state, progress, metrics, config and histories.

    Works across formats (a .pth against the .safetensors converted from it) and across the
    wrapper prefixes module. / _orig_mod. / model. / base_model.model. (reported as renames).
    Values are compared streaming, one tensor pair at a time; equal bytes need no decoding.
    Exit 0 when equal within tolerance, 1 when different, 2 when an input is unusable.

    \b
    Examples:
      ckptkit diff checkpoint_step_500.pt checkpoint_step_1000.pt
      ckptkit diff model.pth model.safetensors --only model --atol 1e-3
      ckptkit diff resumed.pt uninterrupted.pt --json | jq .top
    """
    from ckptkit.diffing import bytes_to_compare, diff_checkpoints  # numpy: only when diffing

    options = DiffOptions(atol=atol, rtol=rtol, sections=only or SECTIONS, top=top)
    ckpt_a, ckpt_b = open_checkpoint(a), open_checkpoint(b)
    show_bar = not as_json and sys.stderr.isatty()
    with click.progressbar(length=max(1, bytes_to_compare(ckpt_a, options)), label="comparing",
                           file=sys.stderr if show_bar else _Null()) as bar:
        result = diff_checkpoints(ckpt_a, ckpt_b, options, _bar_callback(bar) if show_bar else None)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(render_diff(result))
    raise SystemExit(EXIT_CLEAN if result.equal else EXIT_FINDINGS)


class _Null(io.StringIO):
    """Where the bar draws when it is not shown: keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)


def _bar_callback(bar: Any) -> Callable[[int], None]:
    def update(done: int) -> None:
        bar.update(done - bar.pos)
    return update


def render_diff(r: CheckpointDiff) -> str:
    out = [f"{heading('A')}  {r.a.path}  ({r.a.format}, {r.a.family}: {r.a.progress})",
           f"{heading('B')}  {r.b.path}  ({r.b.format}, {r.b.family}: {r.b.progress})",
           f"compared: {', '.join(r.sections)}; tolerance atol={r.tolerance.atol:g} rtol={r.tolerance.rtol:g}"]
    for name, side in (("A", r.a), ("B", r.b)):
        out += [f"  {name} {f['severity']} {f['code']}: {f['where']}: {f['message']}"
                for f in side.security + side.damage]
    if "model" in r.sections:
        out += _model(r)
    if "optimizer" in r.sections:
        out += _optimizer(r)
    out += _other_tensors(r) + _changes(r)
    out += ["", heading(f"Result: {_verdict(r)}")]
    return "\n".join(out)


def _verdict(r: CheckpointDiff) -> str:
    damaged = [name for name, side in (("A", r.a), ("B", r.b)) if side.damage]
    if damaged:
        unread = f"{' and '.join(damaged)} could not be read whole (see the errors above)"
        return f"{_breakdown(r)}; {unread}" if r.difference_count else f"not equal: {unread}"
    if not r.equal:
        return _breakdown(r)
    if all(t.status == IDENTICAL for t in r.tensors):
        return "identical (every tensor bit for bit, every other value equal)"
    return "equal within tolerance"


def _breakdown(r: CheckpointDiff) -> str:
    content = sum(1 for t in r.tensors if t.differs_in_content)
    renamed_only = sum(1 for t in r.tensors if t.differs and not t.differs_in_content)
    parts = [_plural(content, "tensor differs", "tensors differ"),
             _plural(renamed_only, "tensor only renamed", "tensors only renamed"),
             _plural(len(r.changes), "other change", "other changes")]
    return f"{_plural(r.difference_count, 'difference', 'differences')} ({', '.join(p for p in parts if p)})"


def _plural(n: int, one: str, many: str) -> str:
    return "" if n == 0 else f"{n} {one if n == 1 else many}"


def _model(r: CheckpointDiff) -> list[str]:
    model = [t for t in r.tensors if t.section == "model"]
    if not model:
        return []
    out = ["", heading("Model"), "  " + _counts(model)]
    for how, count in summarize_renames(r.renamed).items():
        first = next(x for x in r.renamed if x.describe() == how)
        out.append(f"  renamed: {count} keys, {how} (e.g. {first.a} -> {first.b})")
    out += _structure(model)
    groups = [g for g in r.groups if g.section == "model"]
    if groups and any(g.differing for g in groups):
        out += ["", table([(g.group, g.tensors, g.identical, g.differing, _num(g.max_abs_diff),
                            _pct(g.changed_fraction)) for g in groups],
                          ["module", "tensors", "identical", "differing", "max |a-b|", "elements changed"])]
    if r.top:
        out += ["", f"  most changed (top {len(r.top)}):",
                table([_value_row(t) for t in r.top],
                      ["tensor", "dtype", "max |a-b|", "rel L2", "elements changed"])]
    return out


def _optimizer(r: CheckpointDiff) -> list[str]:
    state = [t for t in r.tensors if t.section == "optimizer"]
    if not state:
        return []
    out = ["", heading("Optimizer state"), "  " + _counts(state)]
    out += _structure(state)
    groups = [g for g in r.groups if g.section == "optimizer"]
    if any(g.differing for g in groups):
        out += ["", table([(g.group, g.tensors, g.identical, g.differing, _num(g.max_abs_diff),
                            _pct(g.changed_fraction)) for g in groups],
                          ["state", "tensors", "identical", "differing", "max |a-b|", "elements changed"])]
    out += _scalar_changes(state)
    return out


def _scalar_changes(state: list[TensorDiff]) -> list[str]:
    """One row per kind of one-element state and change: "step  4 -> 8  28 parameters"."""
    rows: dict[tuple[str, str, str], int] = {}
    for t in state:
        if t.value_a is not None and t.differs:
            key = (t.name.rsplit(".", 1)[-1], number(t.value_a), number(t.value_b))
            rows[key] = rows.get(key, 0) + 1
    if not rows:
        return []
    return ["", table([(kind, a, b, n) for (kind, a, b), n in rows.items()], ["state", "A", "B", "parameters"])]


def _other_tensors(r: CheckpointDiff) -> list[str]:
    other = [t for t in r.tensors if t.section not in ("model", "optimizer") and t.differs]
    if not other:
        return []
    return ["", heading("Other tensors that differ"),
            table([(t.section, t.name, t.status, _difference(t)) for t in other],
                  ["section", "key", "status", "difference"])]


def _difference(t: TensorDiff) -> str:
    """A generator's state is bytes, equal or not: a largest byte difference ("255") means nothing."""
    v = t.values
    if v is None:
        return "-"
    if t.section == "rng" or t.dtype_a in ("uint8", "bool"):
        unit = "bytes" if t.dtype_a == "uint8" else "values"
        return f"{v.changed_elements:,} of {v.numel:,} {unit} differ"
    return f"max |a-b| {_num(v.max_abs_diff)}"


def _changes(r: CheckpointDiff) -> list[str]:
    if not r.changes:
        return []
    rows = [(c.section, c.key, _cell(c.a, c.kind == ONLY_B), _cell(c.b, c.kind == ONLY_A), c.note)
            for c in r.changes]
    return ["", heading("Progress, metadata and state"),
            table(rows, ["section", "key", "A", "B", "note"], widths=[None, 36, 28, 28, 48])]


def _structure(diffs: list[TensorDiff]) -> list[str]:
    rows = []
    for t in diffs:
        if t.status in (ONLY_A, ONLY_B):
            rows.append((t.name, "only in A" if t.status == ONLY_A else "only in B",
                         _desc(t.dtype_a, t.shape_a), _desc(t.dtype_b, t.shape_b)))
        elif t.status == SHAPE_CHANGED or t.dtype_changed:
            what = "shape" if t.status == SHAPE_CHANGED else "dtype"
            what += " and dtype" if t.status == SHAPE_CHANGED and t.dtype_changed else ""
            rows.append((t.name, f"{what} changed", _desc(t.dtype_a, t.shape_a), _desc(t.dtype_b, t.shape_b)))
    return ["", table(rows, ["key", "change", "A", "B"])] if rows else []


def _counts(diffs: list[TensorDiff]) -> str:
    paired = [t for t in diffs if t.status not in (ONLY_A, ONLY_B)]
    n = {s: sum(1 for t in paired if t.status == s) for s in (IDENTICAL, EQUAL, CHANGED, SHAPE_CHANGED)}
    text = (f"{len(paired)} tensors paired: {n[IDENTICAL]} identical, {n[EQUAL]} equal within tolerance, "
            f"{n[CHANGED]} changed")
    if n[SHAPE_CHANGED]:
        text += f", {n[SHAPE_CHANGED]} reshaped"
    only_a = sum(1 for t in diffs if t.status == ONLY_A)
    only_b = sum(1 for t in diffs if t.status == ONLY_B)
    return text + (f"; {only_a} only in A, {only_b} only in B" if only_a or only_b else "")


def _value_row(t: TensorDiff) -> tuple[str, ...]:
    v = t.values
    assert v is not None
    dtype = t.dtype_a if not t.dtype_changed else f"{t.dtype_a} -> {t.dtype_b}"
    return (t.name, dtype or "-", _num(v.max_abs_diff), _num(v.rel_l2_diff),
            f"{_pct(v.changed_fraction)} ({v.changed_elements:,})")


def _desc(dtype: str | None, shape: tuple[int, ...] | None) -> str:
    if dtype is None:
        return "-"
    return f"{dtype}[{', '.join(map(str, shape or ()))}]"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _cell(value: Any, absent: bool) -> str:
    if absent:
        return "(absent)"
    return "-" if value is None else number(value) if isinstance(value, (int, float)) else str(value)
