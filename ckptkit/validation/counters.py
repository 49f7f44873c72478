"""Progress counters: do the checkpoint's counters agree with each other and with its name?

Every family stores progress its own way; the reader maps it to one `Progress` and these
checks speak about that record, quoting the stored keys so a user can find them.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ckptkit.core.checkpoint import Finding, Severity
from ckptkit.families import RETRIEVAL_NAME, counters_tree, family_named
from ckptkit.validation.position_range import check_position_range
from ckptkit.views import sections as S

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

STEP_NAME = re.compile(r"(?:checkpoint|ckpt)[_-]?step[_-]?(?P<step>\d+)", re.IGNORECASE)


def is_training_layout(family: str) -> bool:
    """A dict layout with training counters (one of ckptkit.families), not a bare model or folder model."""
    return family_named(family) is not None


def check_counters(ctx: ValidationContext) -> Iterable[Finding]:
    yield from _epoch_position(ctx)
    yield from _family_traps(ctx)
    yield from _file_name(ctx)
    yield from _step_budget(ctx)
    yield from _optimizer_and_scheduler(ctx)
    yield from check_position_range(ctx)


def _epoch_position(ctx: ValidationContext) -> Iterable[Finding]:
    """EnStack: where inside an epoch the checkpoint was taken, and whether that can be told."""
    p, tree = ctx.ckpt.progress, ctx.ckpt.tree
    if not is_training_layout(ctx.ckpt.family) or not isinstance(tree, dict):
        return
    # Folder formats keep counters in their own member files; their readers report them missing.
    if p.epochs_completed is None and p.global_step is None and not ctx.ckpt.path.is_dir():
        if S.is_optimizer_state(ctx.ckpt.optimizer):
            yield Finding("counters.missing-epoch", Severity.WARNING, ctx.where("epoch"),
                          "expected an 'epoch' (or step) counter beside the optimizer state, found none: "
                          "resume would restart at epoch 0 and repeat every epoch already trained",
                          ctx.repair("counters.missing-epoch"))
        return


def _family_traps(ctx: ValidationContext) -> Iterable[Finding]:
    """The traps the checkpoint's family knows from its system's code (``ckptkit.families``),
    on the same tree whether the file or its folder was given."""
    family, found = family_named(ctx.ckpt.family), counters_tree(ctx.ckpt)
    if family is None or family.traps is None or found is None:
        return
    member, tree = found
    for hit in family.traps(tree, ctx.ckpt.path, ctx.ckpt.progress):
        yield Finding(hit.code, hit.severity, ctx.where(hit.key, member), hit.message,
                      ctx.command(*hit.fix) if hit.fix else None)


def _file_name(ctx: ValidationContext) -> Iterable[Finding]:
    """Numbers in the file name (epoch, recall, step) against the same numbers inside the file."""
    name, tree = ctx.name, ctx.ckpt.tree
    m = RETRIEVAL_NAME.search(name)
    if m and isinstance(tree, dict):
        stored = S.as_int(tree.get("epoch"))
        named = int(m.group("epoch"))
        if stored is not None and stored != named:
            yield Finding("counters.filename-mismatch", Severity.WARNING, ctx.where("epoch"),
                          f"the file name says epoch {named} but the file stores 'epoch' = {stored}: one of "
                          "them is wrong (was the file renamed, or overwritten by a later save?); if the name "
                          f"is right, record it with: {ctx.command('fix-epoch', '--epoch', str(named), '--complete')}")
        recall = tree.get("recall_at_10")
        named_recall = float(m.group("recall"))
        decimals = len(m.group("recall").split(".")[1]) if "." in m.group("recall") else 0
        if S.is_number(recall) and abs(float(recall) - named_recall) > 0.5 * 10 ** -decimals + 1e-12:
            yield Finding("counters.filename-mismatch", Severity.WARNING, ctx.where("recall_at_10"),
                          f"the file name says recall {m.group('recall')} but the file stores "
                          f"'recall_at_10' = {float(recall):.6g}: the name does not describe these weights")
    m = STEP_NAME.search(name)
    step = ctx.ckpt.progress.global_step
    if m and step is not None and int(m.group("step")) != step:
        yield Finding("counters.filename-mismatch", Severity.WARNING, ctx.where("global_step"),
                      f"the file name says step {m.group('step')} but the file stores global step {step}")


def _step_budget(ctx: ValidationContext) -> Iterable[Finding]:
    """run_experiment.py LM: a checkpoint at max_steps resumes into a loop that is already over."""
    p = ctx.ckpt.progress
    if p.global_step is None or p.max_steps is None or p.global_step < p.max_steps:
        return
    # Information, not a defect: a finished run's last checkpoint is exactly this. It matters
    # only to someone resuming from it, and the message says what to do then.
    yield Finding("counters.past-max-steps", Severity.INFO, ctx.where("global_step"),
                  f"global step {p.global_step} is at or past max_steps = {p.max_steps} "
                  f"({p.sources.get('max_steps', 'config')}): resume would finish immediately; extend the "
                  "step budget (raise max_steps, e.g. --extend-steps) to train further")


def _optimizer_and_scheduler(ctx: ValidationContext) -> Iterable[Finding]:
    """An optimizer cannot have stepped more often than the trainer counted, nor the scheduler drift."""
    p, opt = ctx.ckpt.progress, ctx.ckpt.optimizer
    opt_step = ctx.read_optimizer_step(opt) if S.is_optimizer_state(opt) else None
    if opt_step is not None and p.global_step is not None and opt_step > p.global_step:
        # A warning: a run restarted from another run's optimizer (counters reset) is legitimate.
        yield Finding("counters.optimizer-ahead", Severity.WARNING, ctx.section_where("optimizer", "state.*.step"),
                      f"the optimizer has taken {opt_step} steps but global step is {p.global_step}: the "
                      "optimizer state was saved by a later step than the counters, or the counters were "
                      "reset when this run started from another run's optimizer")
    sched = ctx.ckpt.scheduler
    last = S.as_int(sched.get("last_epoch")) if isinstance(sched, dict) else None
    if last is None or last < 0:
        return
    candidates = {v for v in (opt_step, p.global_step, p.epochs_completed) if v is not None}
    if candidates and not any(abs(last - v) <= 1 for v in candidates):
        said = ", ".join(f"{n} {v}" for n, v in (("optimizer steps", opt_step), ("global step", p.global_step),
                                                ("epochs completed", p.epochs_completed)) if v is not None)
        yield Finding("counters.scheduler-position", Severity.WARNING,
                      ctx.section_where("scheduler", "last_epoch"),
                      f"scheduler last_epoch = {last} matches none of the run's counters ({said}): "
                      "a resume would continue the learning-rate schedule from the wrong place")


def _get(tree: Any, key: str) -> Any:
    return tree.get(key) if isinstance(tree, dict) else None
