"""`ckptkit diff A B` through the CLI: output, --json, --only, --top, tolerances, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from ckptkit.cli import main
from scripts.make_seed_samples import write_samples


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("samples"))


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["diff", *map(str, args)])
    return result.exit_code, result.output


def test_the_final_copy_differs_only_in_being_marked_finished(samples: dict[str, Path]) -> None:
    code, out = run(samples["checkpoint-recent.pth"], samples["checkpoint-recent.pth.final"])
    assert code == 1   # the .final suffix marks training finished: a progress difference
    assert "progress.training_finished" in out and out.rstrip().endswith("Result: 1 difference (1 other change)")


def test_the_same_checkpoint_twice_exits_0_and_says_equal(samples: dict[str, Path]) -> None:
    code, out = run(samples["checkpoint-recent.pth"], samples["checkpoint-recent.pth"])
    assert code == 0
    assert "4 tensors paired: 4 identical, 0 equal within tolerance, 0 changed" in out
    assert out.rstrip().endswith("Result: identical (every tensor bit for bit, every other value equal)")


def test_step_500_against_step_1000_lists_the_counter_and_history_changes(samples: dict[str, Path]) -> None:
    code, out = run(samples["checkpoint_step_500.pt"], samples["checkpoint_step_1000.pt"])
    assert code == 1
    assert "progress.global_step" in out and "1,000" in out
    assert "length 5 -> 10, the shorter is the start of the longer" in " ".join(out.split())
    assert out.rstrip().endswith("Result: 3 differences (3 other changes)")


def test_a_pth_against_its_safetensors_model_is_equal_with_only_model(samples: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    state = torch.load(samples["checkpoint-recent.pth"], weights_only=True)["model_state_dict"]
    save_file(state, str(model))
    assert run(samples["checkpoint-recent.pth"], model, "--only", "model")[0] == 0
    code, out = run(samples["checkpoint-recent.pth"], model)
    assert code == 1 and "no optimizer state in B" in out


def test_json_names_the_changed_tensor_and_its_statistics(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"enc.w": torch.zeros(4, 4), "dec.w": torch.ones(3)}, a)
    torch.save({"enc.w": torch.zeros(4, 4), "dec.w": torch.tensor([1.0, 1.5, 1.0])}, b)
    code, out = run(a, b, "--json")
    data = json.loads(out)
    assert code == 1 and data["equal"] is False and data["differences"] == 1
    assert data["top"] == ["dec.w"]
    [dec] = [t for t in data["tensors"] if t["name"] == "dec.w"]
    assert (dec["status"], dec["max_abs_diff"], dec["changed_elements"], dec["numel"]) == ("changed", 0.5, 1, 3)
    assert [(g["group"], g["differing"]) for g in data["groups"]] == [("enc", 0), ("dec", 1)]


def test_atol_makes_a_small_change_equal(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.tensor([1.0, 2.0])}, a)
    torch.save({"w": torch.tensor([1.0, 2.001])}, b)
    assert run(a, b)[0] == 1
    code, out = run(a, b, "--atol", "0.01")
    assert code == 0 and "1 equal within tolerance" in out
    assert out.rstrip().endswith("Result: equal within tolerance")   # not "identical": bytes differ
    assert run(a, b, "--rtol", "0.001")[0] == 0


def test_top_limits_the_most_changed_list(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({f"l{i}": torch.ones(2) for i in range(5)}, a)
    torch.save({f"l{i}": torch.full((2,), float(i + 1)) for i in range(5)}, b)
    data = json.loads(run(a, b, "--top", "2", "--json")[1])
    assert data["top"] == ["l4", "l3"]   # relative L2 = 4 and 3; l0 is unchanged
    assert len(json.loads(run(a, b, "--json")[1])["top"]) == 4


def test_a_missing_file_exits_2_with_one_line_naming_it(tmp_path: Path, samples: dict[str, Path]) -> None:
    code, out = run(samples["legacy"], tmp_path / "nope.pt")
    assert code == 2
    assert out.strip() == f"ckptkit: error: {tmp_path / 'nope.pt'}: no such file or folder"


def test_a_truncated_file_exits_2(tmp_path: Path, samples: dict[str, Path]) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(samples["checkpoint-recent.pth"].read_bytes()[:500])
    code, out = run(samples["checkpoint-recent.pth"], broken)
    assert code == 2 and str(broken) in out and "truncated" in out


def test_an_unknown_section_is_a_usage_error(samples: dict[str, Path]) -> None:
    code, out = run(samples["legacy"], samples["legacy"], "--only", "weights")
    assert code == 2 and "'weights' is not one of" in out


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_side_whose_pickle_would_run_code_is_named_even_when_the_tensors_are_equal(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    clean, evil = tmp_path / "clean.pt", tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 4}, clean)
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 4, "hook": _RunsCode(marker)}, evil)
    code, out = run(clean, evil, "--only", "model")
    assert not marker.exists()
    assert code == 0   # the weights are equal; the danger is reported beside the verdict
    assert "  B error security.dangerous-global: evil.pt" in out and "the pickle would call posix.system(" in out
    assert "  A error" not in out
    code, out = run(clean, evil, "--only", "model", "--json")
    sides = json.loads(out)
    assert sides["a"]["security"] == [] and [f["code"] for f in sides["b"]["security"]] == ["security.dangerous-global"]
