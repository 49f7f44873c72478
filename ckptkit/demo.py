"""`ckptkit demo`: the whole story on a tiny LM in about a minute, with nothing prepared.

Train an uninterrupted reference run; train the same run again and kill it for real mid-epoch;
look at what is on disk (`ls`, `inspect`, `validate`); resume; prove with `diff` that the
resumed run equals the uninterrupted one bit for bit; convert the result to safetensors.

Each step is a real command a user can repeat. This module only plans and runs them; the
caller decides how to show them (`on_command`, `on_output`).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.runs.trainer_registry import trainer_module

# The tiny preset has 11 batches per epoch; 25 is inside the third epoch, 5 batches after the
# periodic save at step 20 started, so the crash can also catch a background write in flight.
KILL_AT_MICRO_STEP = 25
TRAINER = ["-m", trainer_module("lm"), "--config", "tiny"]  # the LM trainer, as registered


@dataclass
class DemoStep:
    title: str
    args: list[str]                      # after the interpreter: ["-m", "ckptkit", ...]
    expect: tuple[int, ...] = (0,)       # exit codes that mean the step went as planned
    capture: bool = False                # keep stdout (used by the following step)

    def shown(self) -> str:
        """The command as a user would type it."""
        if self.args[:2] == ["-m", "ckptkit"]:
            return shlex.join(["ckptkit", *self.args[2:]])
        return shlex.join(["python", *self.args])


@dataclass
class DemoResult:
    root: Path
    steps: list[tuple[DemoStep, int]] = field(default_factory=list)
    identical: bool = False

    @property
    def ok(self) -> bool:
        return all(code in step.expect for step, code in self.steps)


def run_demo(root: Path, on_command: Callable[[DemoStep], None], on_output: Callable[[str], None]) -> DemoResult:
    """Run every step below `root` (which must not hold an earlier demo); stops at the first surprise."""
    reference, run = root / "uninterrupted", root / "run"
    # One thread: bitwise-reproducible and fastest for a model this small on a shared CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = DemoResult(root)
    latest: list[str] = []

    def step(title: str, args: list[str], expect: tuple[int, ...] = (0,), capture: bool = False) -> bool:
        s = DemoStep(title, args, expect, capture)
        on_command(s)
        proc = subprocess.run([sys.executable, *args], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        on_output(proc.stdout)
        if capture:
            latest[:] = [proc.stdout.strip()]
        result.steps.append((s, proc.returncode))
        return proc.returncode in expect

    final, reference_final = run / "final_model.pt", reference / "final_model.pt"
    plan: list[Callable[[], bool]] = [
        lambda: step("Train the tiny LM without interruption (the reference)", [*TRAINER, "--out", str(reference)]),
        lambda: step(f"Train it again and kill the process for real at batch {KILL_AT_MICRO_STEP} (mid-epoch)",
                     [*TRAINER, "--out", str(run), "--kill-at-micro-step", str(KILL_AT_MICRO_STEP)],
                     expect=(-9, 137)),
        lambda: step("What is on disk after the crash?", ["-m", "ckptkit", "ls", str(run)], expect=(0, 1)),
        lambda: step("Which checkpoint would a resume use?", ["-m", "ckptkit", "latest", str(run)], capture=True),
        lambda: step("What is in it?", ["-m", "ckptkit", "inspect", latest[0]]),
        lambda: step("Is it whole and consistent?", ["-m", "ckptkit", "validate", latest[0]], expect=(0, 1)),
        lambda: step("Resume the run (validated first) and let it finish", ["-m", "ckptkit", "resume", str(run)]),
        lambda: step("Is the resumed run the uninterrupted run, bit for bit?",
                     ["-m", "ckptkit", "diff", str(final), str(reference_final)]),
        lambda: step("Convert the final weights to safetensors for release (verified)",
                     ["-m", "ckptkit", "convert", str(final), str(run / "final_model.safetensors"),
                      "--weights-only"]),
    ]
    for action in plan:
        if not action():
            return result
    result.identical = final.read_bytes() == reference_final.read_bytes()
    return result
