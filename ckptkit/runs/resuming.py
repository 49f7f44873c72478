"""`ckptkit resume`: find the newest valid checkpoint, validate it, and hand it to the bundled
trainer that wrote it.

The plan is computed here (no printing, no running); the CLI shows it and runs the command.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Finding, Progress, Severity
from ckptkit.core.errors import NotACheckpointError, ResumeRefusedError
from ckptkit.formats import detect_format, open_checkpoint
from ckptkit.runs import scan_run
from ckptkit.runs.trainer_registry import find_trainer, registered_trainers
from ckptkit.validation import validate_checkpoint


@dataclass
class ResumePlan:
    checkpoint: Path
    trainer: str
    command: list[str]
    progress: Progress
    findings: list[Finding] = field(default_factory=list)   # warnings and notes; errors refuse

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "trainer": self.trainer, "command": self.command,
                "progress": self.progress.to_json(), "findings": [f.to_json() for f in self.findings]}


def plan_resume(target: str | os.PathLike[str], trainer_args: tuple[str, ...] = ()) -> ResumePlan:
    """The checkpoint to resume from (a run directory's newest valid one) and the command to run.

    Raises ResumeRefusedError when validation finds errors or no bundled trainer wrote it.
    """
    path = _choose_checkpoint(Path(target))
    ckpt = open_checkpoint(path)
    report = validate_checkpoint(ckpt)
    errors = [f for f in report.findings if f.severity is Severity.ERROR]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ResumeRefusedError(path, f"validation found errors, refusing to resume: {first.code}: "
                                 f"{first.message}{more}; see `ckptkit validate {path}`")
    trainer = trainer_of(ckpt)
    entry = find_trainer(trainer)
    if entry is None:
        registered = registered_trainers()
        if trainer in registered:
            raise ResumeRefusedError(path, f"was written by the '{trainer}' trainer, whose module "
                                     f"{registered[trainer].module} cannot be imported here")
        raise ResumeRefusedError(path, f"was not written by a bundled ckptkit trainer ({', '.join(registered)}); "
                                 f"resume it with its own training script, e.g. --resume_from_checkpoint {path}")
    command = [sys.executable, "-m", entry.module, "--resume", str(path), *trainer_args]
    if ckpt.format == "dcp":   # FSDP shards: the trainer runs under torchrun, one process per rank
        ranks = _world_size(ckpt)
        command[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m"]
        command.insert(command.index("--resume") + 2, "--fsdp")
    return ResumePlan(path, entry.name, command, ckpt.progress, report.findings)


def _world_size(ckpt: Checkpoint) -> int:
    """How many ranks wrote a sharded checkpoint (DCP can reshard to other counts; the data
    order of an exact resume needs the same one)."""
    tree = ckpt.tree if isinstance(ckpt.tree, dict) else {}
    for source in (tree.get("data_position"), tree.get("rng_state")):
        if isinstance(source, dict) and isinstance(source.get("world_size"), int) and source["world_size"] > 0:
            return source["world_size"]
    return 1


def trainer_of(ckpt: Checkpoint) -> str | None:
    """The bundled trainer recorded by ckptkit's checkpoint manager, if any."""
    for source in (ckpt.extra, ckpt.tree if isinstance(ckpt.tree, dict) else {}):
        meta = source.get("ckptkit")
        if isinstance(meta, dict) and isinstance(meta.get("trainer"), str):
            return meta["trainer"]
    return None


def _choose_checkpoint(target: Path) -> Path:
    try:
        detect_format(target)
        return target
    except NotACheckpointError:
        if not target.is_dir():
            raise
    run = scan_run(target)
    if run.resume is None and len(run.runs()) > 1:
        raise ResumeRefusedError(target, f"holds {len(run.runs())} runs ({', '.join(map(str, run.runs()))}); "
                                 "pass the folder of the one to resume")
    if run.resume is None:
        raise ResumeRefusedError(target, "no whole, consistent checkpoint below this folder; "
                                 f"see `ckptkit ls {target}`")
    return run.resume.path
