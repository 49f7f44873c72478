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
