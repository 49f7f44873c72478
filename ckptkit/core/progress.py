"""Training progress in one language (`Progress`), whatever each family stored, and what a
training system's own resume code will do with a checkpoint (`ResumePrediction`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ResumePrediction:
    """What the training system's own resume code will do with a checkpoint, in its terms.

    Told by the checkpoint's family (``ckptkit.families``), which knows that system's code:
    which epoch and batch it starts at (human numbering: the 6th epoch is 6), what it restores
    and what it silently loses.
    """

    system: str                          # "LlamaRec retriever", as its users know it
    how: str                             # "--resume_from_checkpoint", "resume_training.py"
    start_epoch: int | None = None       # 1-based epoch it trains first; None: it cannot tell
    start_batch: int | None = None       # batches of that epoch skipped (0: from its start)
    global_step: int | None = None       # for step-counted systems: the step it continues from
    restores: list[str] = field(default_factory=list)
    loses: list[str] = field(default_factory=list)
    refuses: str | None = None           # why its resume stops on this file (it raises), if it does

    def describe(self) -> str:
        """One line, e.g. "LlamaRec retriever's --resume_from_checkpoint starts the 6th epoch at batch 0"."""
        if self.refuses is not None:
            return f"{self.system}'s {self.how} refuses this file: {self.refuses}"
        if self.start_epoch is not None:
            where = f"starts the {ordinal(self.start_epoch)} epoch at batch {self.start_batch or 0}"
        elif self.global_step is not None:
            where = f"continues from global step {self.global_step}"
        else:
            where = "starts training from the beginning"
        text = f"{self.system}'s {self.how} {where}"
        if self.loses:
            text += "; " + "; ".join(self.loses)
        return text

    def to_json(self) -> dict[str, Any]:
        return {"system": self.system, "how": self.how, "start_epoch": self.start_epoch,
                "start_batch": self.start_batch, "global_step": self.global_step,
                "restores": list(self.restores), "loses": list(self.loses), "refuses": self.refuses,
                "summary": self.describe()}


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass
class Progress:
    """Training progress in one language, whatever the family stored.

    Epochs are counted, not indexed: `epochs_completed` = 3 means three whole epochs are done.
    `step_in_epoch` counts the batches of the next, unfinished epoch already trained
    (0 at an epoch boundary). `sources` says where each value came from, in words.
    """

    epochs_completed: int | None = None
    step_in_epoch: int | None = None
    steps_per_epoch: int | None = None
    global_step: int | None = None
    epoch_complete: bool | None = None
    epoch_float: float | None = None     # HF Trainer's fractional epoch, as stored
    max_steps: int | None = None
    training_finished: bool | None = None
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The counters as the file stores them (dotted key -> value), before any normalizing: users
    # compare these with their own code's reading.
    stored: dict[str, Any] = field(default_factory=dict)
    resume: ResumePrediction | None = None   # what the system's own resume does with it

    @property
    def known(self) -> bool:
        return self.epochs_completed is not None or self.global_step is not None

    def describe(self) -> str:
        """Plain words: "epoch 3 complete, global step 4500", "epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)"."""
        parts: list[str] = []
        if self.training_finished and self.epoch_complete is False and self.step_in_epoch:
            return self._finished_mid_epoch()
        if self.epochs_completed is not None:
            if self.epoch_complete is False and self.step_in_epoch:
                current = self.epochs_completed + 1
                if self.steps_per_epoch:
                    pct = 100.0 * self.step_in_epoch / self.steps_per_epoch
                    parts.append(f"epoch {current} INCOMPLETE: {self.step_in_epoch}/"
                                 f"{self.steps_per_epoch} batches ({pct:.1f}%)")
                else:
                    done = self.step_in_epoch
                    parts.append(f"epoch {current} INCOMPLETE: {done} batch{'' if done == 1 else 'es'} done")
            elif self.epoch_complete is False:
                parts.append(f"epoch {self.epochs_completed + 1} INCOMPLETE (position in it unknown)")
            elif self.epoch_complete is None:
                done = self.epochs_completed
                parts.append(f"{done} epoch{'' if done == 1 else 's'} completed (boundary unknown)"
                             if done else "in epoch 1 (boundary unknown)")
            elif self.epochs_completed == 0:
                parts.append("no epoch completed")
            else:
                parts.append(f"epoch {self.epochs_completed} complete")
        if self.epoch_float is not None and self.epochs_completed is None:
            parts.append(f"epoch {self.epoch_float:g}")
        if self.global_step is not None:
            step = f"global step {self.global_step}"
            parts.append(f"{step}/{self.max_steps}" if self.max_steps else step)
        if self.training_finished:
            parts.append("training finished")
        return ", ".join(parts) if parts else "unknown (no progress counters found)"

    def _finished_mid_epoch(self) -> str:
        """A run counted in steps ends where max_steps falls, inside an epoch: nothing is missing,
        so no "INCOMPLETE" (which would send a user to resume it)."""
        at = ""
        if self.global_step is not None:
            at = f" at global step {self.global_step}" + (f"/{self.max_steps}" if self.max_steps else "")
        batches = f"{self.step_in_epoch}/{self.steps_per_epoch}" if self.steps_per_epoch else str(self.step_in_epoch)
        epoch = (f", {batches} batches into epoch {self.epochs_completed + 1}"
                 if self.epochs_completed is not None else "")
        return f"training finished{at}{epoch}"

    def sort_key(self) -> tuple[float, float, float]:
        """Orders checkpoints of one run by how far training got; unknown sorts first."""
        epochs = self.epochs_completed if self.epochs_completed is not None else -1
        within = self.step_in_epoch or 0
        step = self.global_step if self.global_step is not None else -1
        if self.global_step is not None:
            return (step, epochs, within)
        return (-1, epochs, within)

    def to_json(self) -> dict[str, Any]:
        return {"epochs_completed": self.epochs_completed, "step_in_epoch": self.step_in_epoch,
                "steps_per_epoch": self.steps_per_epoch, "global_step": self.global_step,
                "epoch_complete": self.epoch_complete, "epoch_float": self.epoch_float,
                "max_steps": self.max_steps, "training_finished": self.training_finished,
                "summary": self.describe(), "sources": dict(self.sources), "notes": list(self.notes),
                "stored": dict(self.stored), "resume": self.resume.to_json() if self.resume else None}
