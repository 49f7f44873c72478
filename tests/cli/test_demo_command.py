"""`ckptkit demo`, the README's main job: a real crash, resume, and a bitwise-equal result."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptkit.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def section(out: str, number: int) -> str:
    """Step `number`'s heading, command and output (up to the next step's heading)."""
    start = out.index(f"\n[{number}] ")
    nxt = out.find(f"\n[{number + 1}] ", start)
    return out[start:nxt if nxt >= 0 else len(out)]


def test_demo_tells_the_same_true_story_even_from_a_folder_that_shadows_the_packages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where `python -m ckptkit` would import the wrong package (the parent of a clone):
    the steps must not; and the kill lands after the step-20 save, so every later step says so."""
    cwd = tmp_path / "parent-of-a-clone"
    for package in ("ckptkit", "trainers"):
        (cwd / package).mkdir(parents=True)
        # Shadows an installed package of that name (an empty folder would, as a namespace package).
        (cwd / package / "__init__.py").write_text(
            f"raise SystemExit('the current folder\\'s {package}/ was imported')")
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, ["demo", "demo"])
    out, run = result.output, cwd / "demo" / "run"
    assert result.exit_code == 0, out[-3000:]
    assert "Traceback" not in out and "cannot import" not in out

    assert section(out, 2).startswith("\n[2] Train it again and kill the process for real at batch 25 "
                                      "(epoch 3, batch 3/11), 5 batches after the step-20 checkpoint\n"
                                      f"$ python -m trainers.lm --config tiny --out {run} --sync-save "
                                      "--kill-at-micro-step 25\n")
    listing = section(out, 3)
    assert "temporary" not in listing and "broken" not in listing
    rows = {line.split()[0]: line.split("  ")[-1].strip() for line in listing.splitlines() if line.endswith(
        ("latest, resume", "best", "ok"))}
    assert rows == {"checkpoint_step_10.pt": "ok", "best_model.pt": "best", "checkpoint_step_20.pt": "latest, resume"}
    assert section(out, 4).endswith(f"$ ckptkit latest {run}\n{run / 'checkpoint_step_20.pt'}\n")
    assert "clean: no findings" in section(out, 6)
    assert (f"resuming {run / 'checkpoint_step_20.pt'} (epoch 2 INCOMPLETE: 9/11 batches (81.8%), "
            "global step 20/40) with the 'lm' trainer") in section(out, 7)
    assert "Result: identical (every tensor bit for bit, every other value equal)" in section(out, 8)
    assert out.rstrip().endswith(f"byte-identical to the uninterrupted run's.\nEverything is in {cwd / 'demo'}")
    assert (run / "final_model.pt").read_bytes() == (cwd / "demo" / "uninterrupted" / "final_model.pt").read_bytes()
    assert (run / "final_model.safetensors").is_file()


def test_demo_refuses_a_folder_that_is_not_empty_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["demo", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_demo_json_lists_every_step_with_its_exit_code(tmp_path: Path) -> None:
    import json

    proc = subprocess.run([sys.executable, "-m", "ckptkit", "demo", str(tmp_path / "d"), "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["identical"] is True and summary["ok"] is True
    assert [s["exit_code"] for s in summary["steps"]][:2] == [0, -9]
    assert summary["steps"][-1]["command"].startswith("ckptkit convert")
