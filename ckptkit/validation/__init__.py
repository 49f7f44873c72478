"""`validate`: run every check on a checkpoint and return all findings at once.

This layer looks at the checkpoint alone (its files, and `--against` a reference). What its run
directory says about it (a stale "last", a best model behind the latest...) is the runs layer's,
above this one; `ckptkit.validating.validate_path`, the `validate` verb, adds those findings.

A check is a function `(ValidationContext) -> Iterable[Finding]`, registered in CHECKS below
(one module per group of checks under `ckptkit/validation/`). Checks never raise for a problem
they find; they describe it as a Finding with a stable code, a severity, where it is (file and
key), expected vs found in plain words, and the ckptkit command that fixes it when there is one.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Finding, Severity, TensorRef, iter_tensor_values
from ckptkit.core.errors import CkptkitError
from ckptkit.families.base import optimizer_step
from ckptkit.formats import cyclic_gc_paused, open_checkpoint
from ckptkit.validation.compatibility import check_compatibility
from ckptkit.validation.completeness import check_completeness
from ckptkit.validation.counters import check_counters
from ckptkit.validation.deep import check_deep
from ckptkit.validation.epoch_step import check_epoch_step
from ckptkit.validation.hf_folder import check_hf_folder
from ckptkit.validation.integrity import check_integrity
from ckptkit.validation.manifest import check_manifest
from ckptkit.validation.optimizer import check_optimizer
from ckptkit.validation.param_matching import OptimizerParam, optimizer_params
from ckptkit.validation.precision import check_mixed_precision
from ckptkit.validation.rng import check_rng
from ckptkit.validation.security import check_security


@dataclass
class ValidationContext:
    """What a check may look at. `reference` is the --against checkpoint, if any."""

    ckpt: Checkpoint
    deep: bool = False
    reference: Checkpoint | None = None
    progress_callback: Callable[[int, int], None] | None = None   # deep checks: bytes done, total
    _steps: dict[int, int | None] = field(default_factory=dict, repr=False)
    _tensors: list[tuple[str, TensorRef]] | None = field(default=None, repr=False)
    _values: list[TensorRef] | None = field(default=None, repr=False)
    _params: dict[int, list[OptimizerParam]] = field(default_factory=dict, repr=False)

    def optimizer_params(self, optimizer: dict[str, Any]) -> list[OptimizerParam]:
        """`param_matching.optimizer_params`, listed once per optimizer per validation: two checks
        ask (groups, and the pairing with the model), 20,000 parameters each in a mixture of
        experts. Keyed by identity, as `read_optimizer_step`."""
        key = id(optimizer)
        if key not in self._params:
            self._params[key] = optimizer_params(optimizer)
        return self._params[key]

    @property
    def tensor_values(self) -> list[TensorRef]:
        """Every tensor of the checkpoint, in `ckpt.tensors()` order, listed once per validation
        without its key path: several checks walk every tensor, and a shard folder of 100,000
        tensors would make each dotted path again per walk. `tensors[i]` is the pair of the i-th."""
        if self._values is None:
            self._values = list(iter_tensor_values(self.ckpt.tree))
        return self._values

    @property
    def tensors(self) -> list[tuple[str, TensorRef]]:
        """`ckpt.tensors()`, listed once, for the checks that name what they find. Listed with
        the cycle collector paused, as the index was read: 100,000 new pairs would otherwise set
        off a full collection over every object of the index."""
        if self._tensors is None:
            with cyclic_gc_paused():
                self._tensors = list(self.ckpt.tensors())
        return self._tensors

    def read_optimizer_step(self, optimizer: Any) -> int | None:
        """`families.base.optimizer_step`, read once per optimizer per validation: two checks ask,
        and each reading touches every parameter's one-element `step` tensor (20,000 of them in
        a mixture-of-experts optimizer). Keyed by identity: the context holds the checkpoint."""
        key = id(optimizer)
        if key not in self._steps:
            self._steps[key] = optimizer_step(optimizer)
        return self._steps[key]

    @property
    def name(self) -> str:
        """The checkpoint's file or folder name, as findings show it."""
        return self.ckpt.path.name

    def where(self, key: str | None = None, member: str | None = None) -> str:
        """"file: key" for a finding; `member` names a file inside a folder checkpoint."""
        place = f"{self.name}/{member}" if member else self.name
        return f"{place}: {key}" if key else place

    def section_where(self, section: str, key: str) -> str:
        """Where `key` inside a section (optimizer, scheduler, ...) is: its member file in a folder
        checkpoint ("checkpoint-8/optimizer.pt: state"), its top-level key in a file
        ("ckpt.pt: optimizer_state_dict.state")."""
        source = self.ckpt.sources.get(section, section)
        if self.ckpt.path.is_dir() and isinstance(self.ckpt.tree, dict) and source in self.ckpt.tree:
            return self.where(key, source)
        return self.where(f"{source}.{key}")

    def command(self, verb: str, *args: str) -> str:
        """The ckptkit command line that fixes a finding on this checkpoint."""
        return " ".join(["ckptkit", verb, shlex.quote(str(self.ckpt.path)), *args])

    def repair(self, code: str) -> str:
        return self.command("repair", "--fix", code)


Check = Callable[[ValidationContext], Iterable[Finding]]


@dataclass
class ValidationReport:
    path: str
    format: str
    family: str
    findings: list[Finding] = field(default_factory=list)
    checks_run: list[str] = field(default_factory=list)
    deep: bool = False
    resume: str | None = None      # what the system's own resume will do (ckptkit.families), one line
    # The findings of each check group, before de-duplication: the run layer takes a checkpoint's
    # health from its index-only checks, whether or not --deep ran too (not part of the JSON).
    by_check: dict[str, list[Finding]] = field(default_factory=dict, repr=False, compare=False)

    def index_only_findings(self) -> list[Finding]:
        """The findings of every check group but the deep one (what `ls` shows as health)."""
        return [f for name, found in self.by_check.items() if name != "deep" for f in found]

    def add_group(self, name: str, findings: list[Finding], after: str = "read") -> None:
        """Add a check group's findings (the run-level ones, composed by the verb) as if it had
        run right after the group `after`: the order findings are listed in stays the same."""
        groups = list(self.by_check.items())
        at = next((i + 1 for i, (n, _) in enumerate(groups) if n == after), len(groups))
        self.by_check = dict([*groups[:at], (name, findings), *groups[at:]])
        self.checks_run.insert(at, name)
        self._merge()

    def _merge(self) -> None:
        """findings: every group's, in group order, without repeats, worst first (stable)."""
        seen: set[tuple[str, str, str]] = set()
        self.findings = []
        for found in self.by_check.values():
            for finding in found:
                if (finding.code, finding.where, finding.message) not in seen:
                    seen.add((finding.code, finding.where, finding.message))
                    self.findings.append(finding)
        self.findings.sort(key=lambda f: -f.severity.rank)

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)

    def fails(self, threshold: Severity) -> bool:
        return any(f.severity.rank >= threshold.rank for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        worst = self.worst()
        return {"path": self.path, "format": self.format, "family": self.family, "deep": self.deep,
                "worst": worst.value if worst else None, "checks_run": self.checks_run, "resume": self.resume,
                "findings": [f.to_json() for f in self.findings]}


def _read_findings(ctx: ValidationContext) -> Iterable[Finding]:
    """Findings the reader already made (security), and progress notes worth a warning."""
    yield from ctx.ckpt.findings


CHECKS: list[tuple[str, Check]] = [
    ("read", _read_findings),
]


def _register_checks() -> None:
    # One module per group of checks; they import this package only for type hints.

    CHECKS.extend([
        ("security", check_security), ("completeness", check_completeness), ("manifest", check_manifest),
        ("integrity", check_integrity),
        ("counters", check_counters), ("epoch-step", check_epoch_step), ("hf-folder", check_hf_folder),
        ("optimizer", check_optimizer),
        ("mixed-precision", check_mixed_precision), ("rng", check_rng), ("compatibility", check_compatibility),
        ("deep", check_deep),
    ])


def validate_checkpoint(ckpt: Checkpoint, *, deep: bool = False, reference: Checkpoint | None = None,
                        siblings: bool = False,
                        progress_callback: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Run every registered check on an opened checkpoint (the checkpoint alone: `siblings=True`
    is refused here; `ckptkit.validating.validate_path` adds the run-level findings)."""
    _refuse_siblings(siblings)
    ctx = ValidationContext(ckpt, deep, reference, progress_callback)
    report = ValidationReport(str(ckpt.path), ckpt.format, ckpt.family, deep=deep,
                              resume=ckpt.progress.resume.describe() if ckpt.progress.resume else None)
    # The checks keep what they build (80,000 deep records, the tensor list) to the end, and the
    # collector would only re-scan it as it piles up: paused, as while the index was decoded.
    with cyclic_gc_paused():
        for name, check in CHECKS:
            report.checks_run.append(name)
            report.by_check[name] = _run_check(name, check, ctx)
    report._merge()
    return report


def _refuse_siblings(siblings: bool) -> None:
    if siblings:
        raise TypeError("ckptkit.validation checks a checkpoint alone; for the run-level findings call "
                        "ckptkit.validating.validate_path (the validate verb)")


def _run_check(name: str, check: Check, ctx: ValidationContext) -> list[Finding]:
    """A check's findings; a check that trips over values a damaged file holds where its layout
    promises others (a float where a list belongs) becomes one error finding, not a traceback."""
    try:
        return list(check(ctx))
    except CkptkitError:
        raise
    except Exception as exc:
        if os.environ.get("CKPTKIT_DEBUG"):
            raise
        return [Finding("integrity.malformed", Severity.ERROR, ctx.ckpt.path.name,
                        f"the {name} checks could not run on this checkpoint's values "
                        f"({type(exc).__name__}: {str(exc)[:120]}): its structure is damaged or is not "
                        f"what its layout promises")]


def validate_path(path: str | os.PathLike[str], *, deep: bool = False,
                  against: str | os.PathLike[str] | None = None, siblings: bool = False,
                  progress_callback: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Open `path` (and `against`) and validate it alone; raises CkptkitError when input is
    unusable. With its run's findings: `ckptkit.validating.validate_path`."""
    _refuse_siblings(siblings)
    reference = open_checkpoint(Path(against)) if against is not None else None
    return validate_checkpoint(open_checkpoint(Path(path)), deep=deep, reference=reference,
                               progress_callback=progress_callback)


_register_checks()
