"""The validate verb: a checkpoint's own checks plus its run's findings, each file read once."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.formats.torch_zip import TorchZipFormat
from ckptkit.runs import scan_run
from ckptkit.validating import validate_path
from tests.run_builders import experiment_file, hf_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each .pt file's index was read during the test."""
    counted: Counter[str] = Counter()
    original = TorchZipFormat.read

    def read(self: TorchZipFormat, path: Path):   # noqa: ANN202 - returns what the reader returns
        counted[Path(path).name] += 1
        return original(self, path)

    monkeypatch.setattr(TorchZipFormat, "read", read)
    return counted


@pytest.fixture
def run_of_six(tmp_path: Path) -> Path:
    """Five periodic checkpoints (steps 100..500) and best_model.pt (step 200), run_experiment.py's run."""
    for step in (100, 200, 300, 400, 500):
        experiment_file(tmp_path / f"checkpoint_step_{step}.pt", step)
    experiment_file(tmp_path / "best_model.pt", 200)
    return tmp_path


def test_validating_a_periodic_checkpoint_reads_it_once_and_no_sibling(run_of_six: Path, reads: Counter[str]) -> None:
    report = validate_path(run_of_six / "checkpoint_step_300.pt")
    assert reads == Counter({"checkpoint_step_300.pt": 1})
    assert [f.code for f in report.findings] == ["completeness.missing-scheduler"] and "run" in report.checks_run


def test_validating_the_best_model_reads_every_sibling_once_and_finds_the_trap(run_of_six: Path,
                                                                              reads: Counter[str]) -> None:
    report = validate_path(run_of_six / "best_model.pt")
    assert reads == Counter({name: 1 for name in ["best_model.pt"] + [f"checkpoint_step_{s}.pt"
                                                                     for s in (100, 200, 300, 400, 500)]})
    assert [(f.code, f.where) for f in report.findings if f.code.startswith("run.")] == [
        ("run.best-not-latest", "best_model.pt")]
    assert "checkpoint_step_500.pt is further" in report.findings[0].message   # warnings before infos


def test_validate_no_run_reads_only_the_checkpoint_and_reports_no_run_finding(run_of_six: Path,
                                                                              reads: Counter[str]) -> None:
    result = CliRunner().invoke(main, ["validate", "--no-run", str(run_of_six / "best_model.pt")])
    assert result.exit_code == 0, result.output
    assert reads == Counter({"best_model.pt": 1})
    assert "run." not in result.output and "13 groups" in result.output


def test_deep_validation_reads_the_index_once_too(run_of_six: Path, reads: Counter[str]) -> None:
    report = validate_path(run_of_six / "checkpoint_step_500.pt", deep=True)
    assert reads == Counter({"checkpoint_step_500.pt": 1})
    assert [f.code for f in report.findings] == ["completeness.missing-scheduler"]
    assert report.checks_run[:2] == ["read", "run"]


@pytest.mark.parametrize("name", ["checkpoint-1000", "checkpoint-2000", "checkpoint-3000", "last-checkpoint"])
def test_run_findings_of_validate_equal_those_of_a_whole_scan_about_the_same_checkpoint(tmp_path: Path,
                                                                                       name: str) -> None:
    hf_checkpoint(tmp_path / "checkpoint-1000", 1000, 1.0)
    hf_checkpoint(tmp_path / "checkpoint-2000", 2000, 2.0)
    hf_checkpoint(tmp_path / "last-checkpoint", 1000, 1.0)                  # stale: behind checkpoint-2000
    broken = hf_checkpoint(tmp_path / "checkpoint-3000", 3000, 3.0, max_steps=4000, num_train_epochs=4)
    (broken / "optimizer.pt").write_bytes((broken / "optimizer.pt").read_bytes()[:500])   # the furthest: broken
    target = tmp_path / name
    whole = scan_run(tmp_path)
    expected = [(f.code, f.where) for f, about in zip(whole.findings, whole.subjects, strict=True) if target in about]
    found = [(f.code, f.where) for f in validate_path(target).findings if f.code.startswith("run.")]
    assert found == expected
    assert expected == {"checkpoint-1000": [], "checkpoint-2000": [],
                        "checkpoint-3000": [("run.latest-broken", "checkpoint-3000")],
                        "last-checkpoint": [("run.stale-latest", "last-checkpoint")]}[name]


def test_validation_does_not_import_the_runs_layer_above_it() -> None:
    code = ("import sys, ckptkit.validation; "
            "print(sorted(m for m in sys.modules if m.startswith('ckptkit.runs')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def test_ls_reads_each_checkpoint_index_once(run_of_six: Path, reads: Counter[str]) -> None:
    result = CliRunner().invoke(main, ["ls", str(run_of_six)])
    assert result.exit_code == 0, result.output   # best_model.pt behind the latest is information, not a problem
    assert reads == Counter({name: 1 for name in ["best_model.pt"] + [f"checkpoint_step_{s}.pt"
                                                                     for s in (100, 200, 300, 400, 500)]})
