"""DCP items stored non-contiguous: ckptkit reads their values as torch.distributed.checkpoint does.

DCP's FileSystemWriter torch.save's each tensor item as it is (a transposed weight keeps its
strides; only views over a larger storage are cloned first), so a chunk's layout is known only
from its item's own pickle. The references are torch's own DCP load (`dcp_to_torch_save`) and
the values that were saved, compared bit for bit.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ckptkit.conversion import ConvertOptions, convert_checkpoint
from ckptkit.core.checkpoint import TensorRef
from ckptkit.core.errors import UnsupportedFeatureError
from ckptkit.diffing import CheckpointDiff, diff_paths
from ckptkit.formats import open_checkpoint
from ckptkit.storage.tensor_bytes import tensor_chunks
from ckptkit.validating import validate_path
from scripts.make_sharded_dcp_fixture import strided_values
from tests.run_builders import strided_dcp_state as strided_state
from tests.run_builders import write_dcp
from tests.tensor_trees import _bits, _view, tensor_pools

STRIDED_TWO_RANKS = Path(__file__).parent.parent / "fixtures" / "dcp_two_ranks_strided"   # make_sharded_dcp_fixture.py


@pytest.fixture(scope="module")
def strided_dcp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dcp(tmp_path_factory.mktemp("dcp") / "ckpt", strided_state())


@pytest.fixture(scope="module")
def torch_reads(strided_dcp: Path) -> dict[str, torch.Tensor]:
    out = strided_dcp.parent / "torch.pth"
    dcp_to_torch_save(strided_dcp, out)
    return torch.load(out, weights_only=True)


def assert_bit_equal(got: torch.Tensor, want: torch.Tensor, where: str) -> None:
    assert (got.dtype, tuple(got.shape)) == (want.dtype, tuple(want.shape)), where
    assert torch.equal(_bits(got), _bits(want)), f"{where}: values differ bit for bit"


def assert_paired_and_exactly_equal(report: CheckpointDiff, names: dict[str, torch.Tensor]) -> None:
    """Every tensor paired by name and equal element for element (strided ones are decoded, so
    they count as "equal", not "identical bytes")."""
    assert report.equal, [t.to_json() for t in report.differing_tensors] + [c.to_json() for c in report.changes]
    paired = {t.name.removeprefix("model."): t for t in report.tensors}
    assert sorted(paired) == sorted(names)
    assert all(t.values is not None and t.values.changed_elements == t.values.max_abs_diff == 0
               for t in paired.values())


def test_each_item_keeps_the_strides_and_storage_offset_it_was_saved_with(strided_dcp: Path) -> None:
    model = open_checkpoint(strided_dcp).model
    layouts = {name: (t.describe(), t.stride, t.storage_offset) for name, t in model.items()}
    assert layouts == {
        "w_t": ("float32[4, 3]", (1, 4), 0), "h_t": ("bfloat16[4, 3]", (1, 4), 0),
        "i_p": ("int64[4, 2, 3]", (1, 12, 4), 0), "m_t": ("bool[3, 2]", (1, 3), 0),
        "odd": ("float32[2, 2]", (0, 1), 2), "rows": ("float32[4]", (1,), 0), "wide": ("float32[4, 3]", (3, 1), 0),
        "scalar": ("float32[]", (), 0), "empty_t": ("float32[3, 0]", (1, 3), 0)}


def test_every_value_reader_gives_what_torchs_own_dcp_load_gives(strided_dcp: Path,
                                                                  torch_reads: dict[str, torch.Tensor]) -> None:
    model = open_checkpoint(strided_dcp).model
    assert sorted(model) == sorted(torch_reads)
    for name, t in model.items():
        want = torch_reads[name]
        assert_bit_equal(t.to_torch(), want, name)
        assert b"".join(tensor_chunks(t)) == _bits(want).numpy().tobytes(), name   # writers' byte stream
        assert_bit_equal(want, strided_state()[name], name)                          # torch read what was saved


def test_opening_reads_only_the_metadata_and_an_items_layout_is_read_when_first_asked_for(strided_dcp: Path) -> None:
    ckpt = open_checkpoint(strided_dcp)
    [chunk] = ckpt.chunks["w_t"]
    assert "stride" not in vars(chunk.tensor) and "storage" not in vars(chunk.tensor)
    assert chunk.tensor.is_contiguous() is False
    assert vars(chunk.tensor)["stride"] == (1, 4)
    assert chunk.tensor.storage.key == "w_t@[0, 0]"   # each chunk's storage keeps a name of its own


def test_deep_validation_reads_every_strided_item_and_finds_nothing(strided_dcp: Path) -> None:
    report = validate_path(strided_dcp, deep=True)
    assert [(f.code, f.message) for f in report.findings] == []


def test_conversion_to_pth_and_safetensors_writes_torchs_values(strided_dcp: Path, tmp_path: Path,
                                                                 torch_reads: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import load_file

    convert_checkpoint(strided_dcp, tmp_path / "out.pth", ConvertOptions())
    convert_checkpoint(strided_dcp, tmp_path / "out.safetensors", ConvertOptions())
    for written in (torch.load(tmp_path / "out.pth", weights_only=True), load_file(str(tmp_path / "out.safetensors"))):
        assert sorted(written) == sorted(torch_reads)
        for name, want in torch_reads.items():
            assert_bit_equal(written[name], want, name)


def test_a_diff_against_a_pth_of_the_same_state_finds_no_difference(strided_dcp: Path, tmp_path: Path) -> None:
    torch.save({k: v.contiguous() for k, v in strided_state().items()}, tmp_path / "same.pth")
    report = diff_paths(strided_dcp, tmp_path / "same.pth")
    assert_paired_and_exactly_equal(report, strided_state())


def test_a_changed_element_of_a_transposed_item_is_found_by_diff(strided_dcp: Path, tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in strided_state().items()}
    state["w_t"][0, 1] += 1                 # element (1, 0) of the stored row-major base
    torch.save(state, tmp_path / "changed.pth")
    report = diff_paths(strided_dcp, tmp_path / "changed.pth")
    [changed] = report.differing_tensors
    assert (changed.name, changed.values.changed_elements, changed.values.max_abs_diff) == ("w_t", 1, 1.0)


def test_two_ranks_strided_chunks_assemble_into_the_global_tensors(tmp_path: Path) -> None:
    ckpt = open_checkpoint(STRIDED_TWO_RANKS)
    assert [(c.offsets, c.sizes, c.file, c.tensor.stride) for c in ckpt.chunks["model.w_t"]] == [
        ((0, 0), (4, 3), "__0_0.distcp", (1, 4)), ((0, 3), (4, 3), "__1_0.distcp", (1, 4))]
    expected = strided_values()
    for name, chunks in ckpt.chunks.items():
        whole = expected[name.removeprefix("model.")]
        for c in chunks:
            part = whole[tuple(slice(o, o + n) for o, n in zip(c.offsets, c.sizes, strict=True))]
            assert_bit_equal(c.tensor.to_torch(), part, f"{name} chunk at {c.offsets}")
    dcp_to_torch_save(STRIDED_TWO_RANKS, tmp_path / "torch.pth")
    torch_model = torch.load(tmp_path / "torch.pth", weights_only=True)["model"]
    convert_checkpoint(STRIDED_TWO_RANKS, tmp_path / "out.pth", ConvertOptions())
    written = torch.load(tmp_path / "out.pth", weights_only=True)
    assert written["step"] == 9 and sorted(written["model"]) == sorted(expected)
    for name, want in expected.items():
        assert_bit_equal(torch_model[name], want, name)
        assert_bit_equal(written["model"][name], want, name)


def test_two_ranks_strided_validate_deep_clean_and_diff_equal_to_torchs_own_export(tmp_path: Path) -> None:
    assert validate_path(STRIDED_TWO_RANKS, deep=True).findings == []
    dcp_to_torch_save(STRIDED_TWO_RANKS, tmp_path / "torch.pth")
    report = diff_paths(STRIDED_TWO_RANKS, tmp_path / "torch.pth")
    assert_paired_and_exactly_equal(report, strided_values())


def test_safetensors_serialization_reads_each_tensor_from_the_appended_safetensors_file(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat

    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.arange(4) * 7, "step": 5}
    writer = FileSystemWriter(str(tmp_path / "st"), serialization_format=SerializationFormat.SAFETENSORS)
    dcp.save(state, storage_writer=writer)
    ckpt = open_checkpoint(tmp_path / "st")
    assert ckpt.tree["step"] == 5
    assert_bit_equal(ckpt.tree["a"].to_torch(), state["a"], "a")
    assert_bit_equal(ckpt.tree["b"].to_torch(), state["b"], "b")


def test_an_item_compressed_by_a_dcp_extension_is_refused_by_name_when_its_values_are_asked_for(tmp_path: Path) -> None:
    folder = write_dcp(tmp_path / "z", {"w": torch.ones(2, 2), "n": 3})
    meta = pickle.loads((folder / ".metadata").read_bytes())   # test-made file: torch's own classes
    for info in meta.storage_data.values():
        info.transform_descriptors = ["stream.zstd/1"]
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    ckpt = open_checkpoint(folder)
    with pytest.raises(UnsupportedFeatureError, match=r"item 'w' was saved through DCP stream extensions "
                                                      r"\['stream.zstd/1'\]"):
        ckpt.tree["w"].to_torch()
    assert [(f.code, "stream.zstd/1" in f.message) for f in ckpt.findings] == [("dcp.unreadable-item", True)]


@st.composite
def strided_states(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """Views of random small tensors: permuted (any order of dimensions), then maybe sliced."""
    state: dict[str, torch.Tensor] = {}
    for i, base in enumerate(draw(tensor_pools())):
        order = draw(st.permutations(range(base.dim())))
        how = draw(st.sampled_from(["whole", "step-slice", "offset-slice", "transpose"]))
        view = _view(base.permute(tuple(order)), how)
        state[f"t{i}"] = view
    return state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=strided_states())
def test_any_permuted_or_sliced_tensor_reads_back_bit_equal_through_dcp(
        state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = write_dcp(tmp_path_factory.mktemp("h") / "ckpt", state)
    read = open_checkpoint(folder).tree
    for name, original in state.items():
        assert isinstance(read[name], TensorRef)
        assert_bit_equal(read[name].to_torch(), original, name)
        assert b"".join(tensor_chunks(read[name])) == _bits(original).numpy().tobytes(), name
