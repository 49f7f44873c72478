"""`ckptkit validate` on the command line: exit codes, --fail-on, --json, errors, progress."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner

from ckptkit.cli import main


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["validate", *args])


def test_clean_checkpoint_exits_0_and_says_clean(save: Any) -> None:
    result = invoke(str(save({"w": torch.ones(3)})), "--deep")
    assert result.exit_code == 0, result.output
    assert "clean: no findings" in result.output


def test_error_findings_exit_1_with_code_message_and_fix(save: Any, tmp_path: Path) -> None:
    path = save({"model_state_dict": {"module.fc.weight": torch.ones(2, 2)},
                 "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 0]}]}})
    result = invoke(str(path))
    assert result.exit_code == 1
    assert "optimizer.param-in-two-groups" in result.output
    assert "-> fix: ckptkit repair" in result.output      # compat.module-prefix's repair


def test_fail_on_sets_the_threshold(samples: dict[str, Path]) -> None:
    path = str(samples["retrieval"])      # a warning (no GradScaler) and an info (epoch+1)
    assert invoke(path).exit_code == 0
    assert invoke(path, "--fail-on", "warning").exit_code == 1
    assert invoke(path, "--fail-on", "info").exit_code == 1


def test_json_has_the_same_findings(samples: dict[str, Path]) -> None:
    result = invoke(str(samples["training_state.pth"]), "--json", "--deep")
    report = json.loads(result.output)
    assert report["deep"] is True and report["family"] == "training-state"
    found = {f["code"]: f for f in report["findings"]}
    assert found["counters.incomplete-epoch"]["where"] == "training_state.pth: step"
    assert found["counters.incomplete-epoch"]["fix"].endswith("--epoch 1 --complete")
    assert report["worst"] == "warning"


def test_unusable_input_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:300])
    result = invoke(str(path))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"ckptkit: error: {path}: zip archive is truncated or damaged (no end-of-central-directory record): "
        "the save was probably interrupted"]


def test_against_a_missing_reference_exits_2(save: Any, tmp_path: Path) -> None:
    result = invoke(str(save({"w": torch.ones(1)})), "--against", str(tmp_path / "nope.pt"))
    assert result.exit_code == 2
    assert "nope.pt: no such file or folder" in result.output


def test_no_progress_bar_when_not_a_terminal(save: Any) -> None:
    result = invoke(str(save({"w": torch.ones(3)})), "--deep")
    assert "deep check" not in result.output


def test_deep_draws_a_progress_bar_on_a_terminal_and_not_with_json(save: Any) -> None:
    import os
    import subprocess
    import sys

    path = str(save({"w": torch.ones(1000)}))
    root = Path(__file__).parent.parent.parent

    def stderr_on_a_terminal(*args: str) -> str:
        master, slave = os.openpty()
        proc = subprocess.run([sys.executable, "-m", "ckptkit", "validate", *args], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=slave, timeout=120)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:        # the terminal closed: everything is read
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        assert proc.returncode == 0
        return b"".join(chunks).decode(errors="replace")

    assert "deep check" in stderr_on_a_terminal(path, "--deep")
    assert "deep check" not in stderr_on_a_terminal(path, "--deep", "--json")


def test_validate_without_deep_imports_neither_torch_nor_numpy(samples: dict[str, Path]) -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom ckptkit.cli import main\n"
            "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "print('MODULES', 'torch' in sys.modules, 'numpy' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(samples["training_state.pth"])], capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent.parent, timeout=120)
    assert proc.stdout.splitlines()[-1] == "MODULES False False"
