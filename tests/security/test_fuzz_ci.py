"""The fuzz campaign's short CI profile: every read command on 24 mutants of the fixtures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_ci_fuzz_profile_finds_no_traceback_hang_memory_blowup_or_code_execution() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_readers.py"), "--profile", "ci",
                           "--seed", "5", "--json"], capture_output=True, text=True, env=env, timeout=900)
    report = json.loads(proc.stdout)
    assert report["mutants"] == 24 and report["runs"] >= 48
    assert (report["tracebacks"], report["hangs"], report["over_limit_memory"], report["code_executions"]) == \
        (0, 0, 0, 0), report["failures"]
    assert report["clean_exits"] == report["runs"] and proc.returncode == 0
