"""inspect, validate --deep, diff and convert on the command line, on DCP folders whose items
are stored non-contiguous (single process, and two gloo ranks with strided chunks)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ckptkit.cli import main
from scripts.make_sharded_dcp_fixture import strided_values
from tests.run_builders import strided_dcp_state, write_dcp
from tests.tensor_trees import _bits

STRIDED_TWO_RANKS = Path(__file__).parent.parent / "fixtures" / "dcp_two_ranks_strided"


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*map(str, args)])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dcp(tmp_path_factory.mktemp("dcp") / "ckpt", strided_dcp_state())


def test_inspect_lists_each_strided_tensor_with_its_shape_and_dtype(folder: Path) -> None:
    code, out = run("inspect", folder, "--tensors", "--json")
    assert code == 0
    rows = {r["name"]: (r["dtype"], r["shape"]) for r in json.loads(out)["model"]["tensor_list"]}
    assert rows == {"w_t": ("float32", [4, 3]), "h_t": ("bfloat16", [4, 3]), "i_p": ("int64", [4, 2, 3]),
                    "m_t": ("bool", [3, 2]), "odd": ("float32", [2, 2]), "rows": ("float32", [4]),
                    "wide": ("float32", [4, 3]), "scalar": ("float32", []), "empty_t": ("float32", [3, 0])}


@pytest.mark.parametrize("which", ["single process", "two ranks"])
def test_validate_deep_is_clean(which: str, folder: Path) -> None:
    code, out = run("validate", folder if which == "single process" else STRIDED_TWO_RANKS, "--deep", "--json")
    assert code == 0, out
    assert json.loads(out)["findings"] == []


def test_convert_to_pth_gives_what_torch_load_of_torchs_own_export_gives(folder: Path, tmp_path: Path) -> None:
    code, out = run("convert", folder, tmp_path / "out.pth")
    assert code == 0, out
    dcp_to_torch_save(folder, tmp_path / "torch.pth")
    want = torch.load(tmp_path / "torch.pth", weights_only=True)
    got = torch.load(tmp_path / "out.pth", weights_only=True)
    assert sorted(got) == sorted(want) == sorted(strided_dcp_state())
    for name, value in want.items():
        assert got[name].dtype == value.dtype and torch.equal(_bits(got[name]), _bits(value)), name


def test_convert_of_two_ranks_assembles_strided_chunks_into_the_saved_tensors(tmp_path: Path) -> None:
    code, out = run("convert", STRIDED_TWO_RANKS, tmp_path / "out.pth")
    assert code == 0, out
    model = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    for name, value in strided_values().items():
        assert model[name].dtype == value.dtype and torch.equal(_bits(model[name]), _bits(value)), name


@pytest.mark.parametrize("which", ["single process", "two ranks"])
def test_diff_against_a_pth_of_the_same_state_shows_no_difference(which: str, folder: Path, tmp_path: Path) -> None:
    source = folder if which == "single process" else STRIDED_TWO_RANKS
    dcp_to_torch_save(source, tmp_path / "torch.pth")
    code, out = run("diff", source, tmp_path / "torch.pth")
    assert code == 0, out
    assert out.rstrip().endswith("Result: equal within tolerance")
    assert ", 0 changed" in out


def test_diff_names_the_one_transposed_tensor_whose_element_changed(folder: Path, tmp_path: Path) -> None:
    dcp_to_torch_save(folder, tmp_path / "torch.pth")
    state = torch.load(tmp_path / "torch.pth", weights_only=True)
    state["h_t"][2, 1] = -state["h_t"][2, 1]
    torch.save(state, tmp_path / "changed.pth")
    code, out = run("diff", folder, tmp_path / "changed.pth", "--json")
    assert code == 1
    changed = [t for t in json.loads(out)["tensors"] if t["differs"]]
    assert [(t["name"], t["changed_elements"]) for t in changed] == [("h_t", 1)]
