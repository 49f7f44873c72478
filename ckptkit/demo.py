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
import site
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ckptkit
from ckptkit.runs.trainer_registry import trainer_module

# The tiny preset: 11 batches per epoch, one optimizer step per batch, a checkpoint every 10
# steps. Batch 25 is the third batch of epoch 3, five batches after the step-20 save. The killed
# run saves with --sync-save (each checkpoint is complete on disk before training goes on), so
# the kill lands after the step-20 checkpoint on every machine instead of racing a background
# write; the narrative below depends on it, and tests/cli/test_demo_command.py checks it.
KILL_AT_MICRO_STEP = 25
BATCHES_PER_EPOCH = 11
LAST_SAVE_STEP = 20
TRAINER = ["-m", trainer_module("lm"), "--config", "tiny"]  # the LM trainer, as registered


@dataclass
class DemoStep:
    title: str
    args: list[str]                      # after the interpreter: ["-m", "ckptkit", ...]
    expect: tuple[int, ...] = (0,)       # exit codes that mean the step went as planned
    capture: bool = False                # keep stdout (used by the following step)
    note: str = ""                       # one line under the command: why it is run this way

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
    root = root.resolve()   # the steps run inside it (see _step_environment)
    reference, run = root / "uninterrupted", root / "run"
    env = _step_environment()
    result = DemoResult(root)
    latest: list[str] = []

    def step(title: str, args: list[str], expect: tuple[int, ...] = (0,), capture: bool = False,
             note: str = "") -> bool:
        s = DemoStep(title, args, expect, capture, note)
        on_command(s)
        proc = subprocess.run([sys.executable, *args], env=env, cwd=root, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        on_output(proc.stdout)
        if capture:
            latest[:] = [proc.stdout.strip()]
        result.steps.append((s, proc.returncode))
        return proc.returncode in expect

    final, reference_final = run / "final_model.pt", reference / "final_model.pt"
    kill_epoch, kill_batch = divmod(KILL_AT_MICRO_STEP, BATCHES_PER_EPOCH)
    plan: list[Callable[[], bool]] = [
        lambda: step("Train the tiny LM without interruption (the reference)", [*TRAINER, "--out", str(reference)]),
        lambda: step(f"Train it again and kill the process for real at batch {KILL_AT_MICRO_STEP} "
                     f"(epoch {kill_epoch + 1}, batch {kill_batch}/{BATCHES_PER_EPOCH}), "
                     f"{KILL_AT_MICRO_STEP - LAST_SAVE_STEP} batches after the step-{LAST_SAVE_STEP} checkpoint",
                     [*TRAINER, "--out", str(run), "--sync-save", "--kill-at-micro-step", str(KILL_AT_MICRO_STEP)],
                     expect=(-9, 137),
                     note="--sync-save: each checkpoint is complete on disk before training goes on, so the kill "
                          f"lands after the step-{LAST_SAVE_STEP} save, never in the middle of it"),
        lambda: step("What is on disk after the crash?", ["-m", "ckptkit", "ls", str(run)], expect=(0, 1)),
        lambda: step("Which checkpoint would a resume use?", ["-m", "ckptkit", "latest", str(run)], capture=True),
        lambda: step("What is in it?", ["-m", "ckptkit", "inspect", latest[0]]),
        lambda: step("Is it whole and consistent?", ["-m", "ckptkit", "validate", latest[0]], expect=(0, 1)),
        lambda: step(f"Resume the run (validated first) and let it finish: batches {LAST_SAVE_STEP + 1}-"
                     f"{KILL_AT_MICRO_STEP} are trained again, in the same order",
                     ["-m", "ckptkit", "resume", str(run)]),
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


def _step_environment() -> dict[str, str]:
    """The steps' environment: they run `python -m ...` inside the demo's own folder, so a
    `ckptkit/` or `trainers/` folder in the user's current folder (the parent of a clone) cannot
    shadow the packages (`python -P` would do it, but only from Python 3.11). The folder that
    holds the running ckptkit (and trainers, installed beside it) goes first on PYTHONPATH, so
    the steps run this very ckptkit; a site-packages folder is already on every path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one thread: bitwise-reproducible
    package_root = str(Path(ckptkit.__file__).resolve().parents[1])
    if package_root not in {str(Path(p).resolve()) for p in (*site.getsitepackages(), site.getusersitepackages())}:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env
