"""`ckptkit demo`, the README's main job: a real crash, resume, and a bitwise-equal result."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from ckptkit.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_crashes_resumes_and_proves_the_result_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "ckptkit", "demo", str(root)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    for command in ("$ python -m trainers.lm --config tiny --out", "--kill-at-micro-step 25",
                    "$ ckptkit ls", "$ ckptkit latest", "$ ckptkit inspect", "$ ckptkit validate",
                    "$ ckptkit resume", "$ ckptkit diff", "$ ckptkit convert"):
        assert command in out
    assert "byte-identical to the uninterrupted run's" in out
    assert "NOT byte-identical" not in out
    assert (root / "run" / "final_model.pt").read_bytes() == (root / "uninterrupted" / "final_model.pt").read_bytes()
    assert (root / "run" / "final_model.safetensors").is_file()


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
