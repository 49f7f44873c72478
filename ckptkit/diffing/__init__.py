"""`diff`: what changed between two checkpoints, in any two formats ckptkit reads.

    from ckptkit.diffing import diff_paths, DiffOptions
    result = diff_paths("step_500.pt", "step_1000.pt", DiffOptions(atol=1e-6))
    result.equal, result.top, result.changes

Model tensors are paired by key, across the wrapper prefixes of `ckptkit.views.keys`; values are
compared streaming, one tensor pair at a time (equal bytes first, decoding only when they
differ), so memory stays bounded whatever the checkpoints' size. The modules of this package:
`values` (one tensor pair), `trees` (nested values), `state` (optimizer, scheduler, scaler,
RNG), `meta` (progress, metrics, config, histories), `report` (the returned dataclasses).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ckptkit.conversion.plan import with_whole_tensors
from ckptkit.core.checkpoint import Checkpoint, iter_tensors
from ckptkit.core.findings import Severity
from ckptkit.diffing.meta import diff_meta
from ckptkit.diffing.report import (
    SECTIONS,
    Change,
    CheckpointDiff,
    DiffOptions,
    GroupSummary,
    SideInfo,
    TensorDiff,
    Tolerance,
    ValueStats,
    most_changed,
    summarize_groups,
)
from ckptkit.diffing.state import diff_optimizer, diff_section
from ckptkit.diffing.trees import DiffContext, diff_tensor_maps
from ckptkit.formats import cyclic_gc_paused, open_checkpoint
from ckptkit.views.keys import module_prefixes, strip_known_prefix

__all__ = ["SECTIONS", "Change", "CheckpointDiff", "DiffOptions", "GroupSummary", "TensorDiff", "Tolerance",
           "ValueStats", "diff_checkpoints", "diff_paths", "bytes_to_compare"]


def diff_paths(a: str | os.PathLike[str], b: str | os.PathLike[str], options: DiffOptions = DiffOptions(),
               progress: Callable[[int], None] | None = None) -> CheckpointDiff:
    """Open both checkpoints (raising CkptkitError when one is unusable) and diff them."""
    return diff_checkpoints(open_checkpoint(Path(a)), open_checkpoint(Path(b)), options, progress)


def diff_checkpoints(a: Checkpoint, b: Checkpoint, options: DiffOptions = DiffOptions(),
                     progress: Callable[[int], None] | None = None) -> CheckpointDiff:
    """Compare B against A in the chosen sections. `progress` gets the bytes of A compared so far.
    The cycle collector is paused meanwhile: it would only re-scan both trees as the comparison
    adds to them."""
    unknown = set(options.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    with cyclic_gc_paused():
        return _diff(a, b, options, progress)


def _diff(a: Checkpoint, b: Checkpoint, options: DiffOptions,
          progress: Callable[[int], None] | None) -> CheckpointDiff:

    # A tensor saved in chunks (DCP shards) is compared as the whole tensor they make up.
    a, b = with_whole_tensors(a), with_whole_tensors(b)
    ctx = DiffContext(Tolerance(options.atol, options.rtol), progress)
    result = CheckpointDiff(_side(a), _side(b), ctx.tol, [s for s in SECTIONS if s in options.sections])
    if "model" in options.sections:
        result.renamed = diff_tensor_maps(ctx, "model", a.model, b.model)
    if "optimizer" in options.sections:
        diff_optimizer(ctx, a.optimizer, b.optimizer, a.model, b.model)
    for section in ("scheduler", "scaler", "rng"):
        if section in options.sections:
            diff_section(ctx, section, getattr(a, section), getattr(b, section))
    if "meta" in options.sections:
        diff_meta(ctx, a, b)
    result.tensors, result.changes = ctx.tensors, ctx.changes
    result.groups = _groups(ctx.tensors)
    result.top = most_changed([t for t in ctx.tensors if t.section == "model"], options.top)
    return result


def bytes_to_compare(a: Checkpoint, options: DiffOptions = DiffOptions()) -> int:
    """About how many bytes of A a diff reads (for a progress bar's total)."""
    total = 0
    if "model" in options.sections:
        total += sum(t.nbytes for t in a.model.values())
    for section in ("optimizer", "scheduler", "scaler", "rng"):
        if section in options.sections:
            total += sum(t.nbytes for _, t in iter_tensors(getattr(a, section)))
    return total


def _groups(tensors: list[TensorDiff]) -> list[GroupSummary]:
    """Model tensors by module (wrapper prefixes ignored); optimizer state by kind (exp_avg, ...)."""
    model = [t for t in tensors if t.section == "model"]
    modules = module_prefixes(strip_known_prefix(t.name) for t in model)
    by_module = {t.name: modules[strip_known_prefix(t.name)] for t in model}
    state = {t.name: t.name.rsplit(".", 1)[-1] for t in tensors if t.section == "optimizer"}
    return summarize_groups("model", tensors, by_module) + summarize_groups("optimizer", tensors, state)


def _side(c: Checkpoint) -> SideInfo:
    security = [f.to_json() for f in c.findings if f.code.startswith("security.")]
    damage = [f.to_json() for f in c.findings if f.severity is Severity.ERROR and not f.code.startswith("security.")]
    return SideInfo(str(c.path), c.format, c.family, c.progress.describe(), security, damage)
