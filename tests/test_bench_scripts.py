"""The benchmark scripts still run end to end (on a tiny checkpoint; no timing is judged here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, timed_label", [([], "ckptkit fix-epoch (backup kept):"),
                                                 (["--control"], "cp + sync again (--control):")])
def test_bench_fix_epoch_runs_and_checks_the_records(tmp_path: Path, flags: list[str], timed_label: str) -> None:
    proc = subprocess.run([sys.executable, "scripts/bench_fix_epoch.py", "--size-mb", "4", "--repeat", "1",
                           "--settle", "0", "--dir", str(tmp_path), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" median")[0].strip() for line in lines[1:4]] == [
        "durable copy (cp + sync):", timed_label, "ckptkit fix-epoch --no-backup:"]
    assert lines[4].startswith("ratio: ") and "(target <= 1.2x)" in lines[4]
    assert lines[-1] == "tensor records byte-identical before/after: yes (192 records, CRC32 of the bytes)"
    assert list(tmp_path.iterdir()) == []   # the benchmark leaves nothing behind


def test_bench_scale_measures_every_command_against_the_baselines_and_prints_the_slopes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "scripts/bench_scale.py", "--params", "20", "--shard-tensors", "100",
                           "--chunks", "20", "--siblings", "2", "--repeat", "1", "--no-judge", "--dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert ".pth of 80 tensor records:" in out
    for label in ("torch.load(mmap=True, weights_only=True)", "ckptkit inspect ", "ckptkit validate ",
                  "ckptkit validate (among siblings)", "ckptkit validate --deep", "ckptkit ls (folder of one)",
                  "ckptkit diff (3 tensors differ)", "ckptkit convert -> .safetensors",
                  "safe_open key listing (10 shards)", "ckptkit inspect (shards)", "ckptkit validate (shards)",
                  "DCP read_metadata", "ckptkit inspect (DCP)", "unpickling floor, bare C unpickler"):
        assert label in out, label
    assert out.count("  slope ") == 8 and "target <= 0.25x" in out and "RSS target <= 64 MiB" in out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint_step_100.pt", "checkpoint_step_200.pt",
                                                                    "checkpoint_step_300.pt"]
