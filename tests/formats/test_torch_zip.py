"""torch.save zip archives read back by ckptkit: structure, tensors, sharing, damage."""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, NotACheckpointError
from ckptkit.formats import detect_format, open_checkpoint
from ckptkit.inspection import inspect_checkpoint
from tests.tensor_trees import assert_same_tree, checkpoint_trees, save_and_read


@settings(max_examples=150, deadline=None)
@given(checkpoint_trees())
def test_any_tree_saved_as_zip_reads_back_with_same_structure_tensors_and_sharing(tree: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_and_read(tree, Path(tmp) / "tree.pt", legacy=False)
        assert ckpt.format == "torch-zip"
        assert_same_tree(tree, ckpt.tree)


def test_format_is_detected_from_content_whatever_the_file_is_called(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-recent.pth.final"
    torch.save({"w": torch.ones(2)}, path)
    assert detect_format(path).name == "torch-zip"


def test_newer_dtypes_on_untyped_storages_read_back_and_share_one_record(tmp_path: Path) -> None:
    words = torch.tensor([1, 2, 3, -4], dtype=torch.int32)
    tree = {"u16": words.view(torch.uint16)[1:5], "u32": words.view(torch.uint32),
            "u64": torch.tensor([7, 9]).view(torch.uint64),
            "f8": torch.tensor([0.5, 1.0, -2.0]).to(torch.float8_e4m3fn)}
    ckpt = save_and_read(tree, tmp_path / "v3.pt", legacy=False)
    u16, u32 = ckpt.tree["u16"], ckpt.tree["u32"]
    assert (u16.dtype.name, u16.shape, u16.storage_offset) == ("uint16", (4,), 1)
    assert u16.storage is u32.storage and u16.storage.nbytes == 16
    assert ckpt.tree["f8"].dtype.name == "float8_e4m3fn"
    assert not [f for f in ckpt.findings if f.code.startswith("security")]
    for key, original in tree.items():
        assert torch.equal(ckpt.tree[key].to_torch().view(torch.uint8), original.contiguous().view(torch.uint8))


def test_parameters_keep_requires_grad_and_are_marked_as_parameters(tmp_path: Path) -> None:
    tree = {"p": torch.nn.Parameter(torch.ones(2, 3)), "frozen": torch.nn.Parameter(torch.ones(1), requires_grad=False),
            "buf": torch.zeros(4)}
    ckpt = save_and_read(tree, tmp_path / "p.pt", legacy=False)
    p, frozen, buf = ckpt.tree["p"], ckpt.tree["frozen"], ckpt.tree["buf"]
    assert (p.is_parameter, p.requires_grad) == (True, True)
    assert (frozen.is_parameter, frozen.requires_grad) == (True, False)
    assert (buf.is_parameter, buf.requires_grad) == (False, False)


def test_byte_range_points_at_the_storage_bytes_inside_the_archive(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"w": weight}, path)
    storage = open_checkpoint(path).tree["w"].storage
    where = storage.byte_range()
    assert where.length == 48
    assert path.read_bytes()[where.offset: where.offset + 48] == weight.numpy().tobytes()
    assert storage.stored_nbytes == 48


def test_reading_records_storage_count_and_archive_prefix(tmp_path: Path) -> None:
    path = tmp_path / "best_model.pt"
    shared = torch.ones(4)
    torch.save({"a": shared, "b": shared[1:], "c": torch.zeros(2)}, path)
    ckpt = open_checkpoint(path)
    assert (ckpt.details.zip_prefix, ckpt.details.storage_records, ckpt.metadata) == ("best_model", 2, {})


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_archive_is_reported_as_truncated(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptCheckpointError) as err:
        open_checkpoint(path)
    assert str(err.value) == (f"{path}: zip archive is truncated or damaged (no end-of-central-directory "
                              "record): the save was probably interrupted")


def test_flipped_byte_in_data_pkl_is_caught_by_the_zip_checksum(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"epoch": 3, "w": torch.ones(2)}, path)
    info = zipfile.ZipFile(path).getinfo("model/data.pkl")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"model/data.pkl is damaged: Bad CRC-32"):
        open_checkpoint(path)


def test_zip_without_data_pkl_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(NotACheckpointError, match="not a torch.save checkpoint"):
        open_checkpoint(path)


def _rezip_with_pickle(src: Path, dst: Path, pickle_bytes: bytes) -> None:
    """Copy an archive, replacing data.pkl and recomputing its checksum, as a buggy writer could."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = pickle_bytes if info.filename.endswith("/data.pkl") else zin.read(info)
            zout.writestr(info.filename, data)


_SOURCE = {"model_state_dict": {"w": torch.ones(2, 3), "b": torch.zeros(3)}, "epoch": 4,
           "optimizer_state_dict": {"state": {0: {"step": torch.tensor(3.0)}},
                                    "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)), min_size=1, max_size=3))
def test_flipped_bytes_in_a_checksummed_data_pkl_give_a_reading_or_one_ckptkit_error(
        flips: list[tuple[int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src.pt", Path(tmp) / "dst.pt"
        torch.save(_SOURCE, src)
        pickle_bytes = bytearray(zipfile.ZipFile(src).read("src/data.pkl"))
        for at, mask in flips:
            pickle_bytes[at % len(pickle_bytes)] ^= mask
        _rezip_with_pickle(src, dst, bytes(pickle_bytes))
        try:
            report = inspect_checkpoint(dst)
        except CkptkitError as exc:
            assert str(exc).startswith(f"{dst}: ") and "\n" not in str(exc)
        else:
            json.dumps(report.to_json())


def test_newer_dtypes_written_back_load_in_torch_with_their_dtype_and_sharing(tmp_path: Path) -> None:
    from ckptkit.formats.torch_zip import write_torch_zip

    words = torch.tensor([1, 2, 3, -4], dtype=torch.int32)
    tree = {"u16": words.view(torch.uint16)[1:5], "u32": words.view(torch.uint32),
            "f8": torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn), "f": torch.ones(2)}
    src, out = tmp_path / "src.pt", tmp_path / "out.pt"
    torch.save(tree, src)
    with open(out, "wb") as f:
        write_torch_zip(f, open_checkpoint(src).tree)
    back = torch.load(out, weights_only=True)
    for key, original in tree.items():
        assert back[key].dtype == original.dtype
        assert torch.equal(back[key].view(torch.uint8), original.contiguous().view(torch.uint8))
    assert back["u16"].untyped_storage().data_ptr() == back["u32"].untyped_storage().data_ptr()


@pytest.mark.parametrize("member", ["version", ".format_version", "byteorder", "data/0", ".data/serialization_id",
                                    ".storage_alignment"])
def test_a_missing_member_is_an_error_exactly_when_torch_load_refuses_the_archive(tmp_path: Path, member: str) -> None:
    """torch's reader requires `version` and each storage record; the others it does without.
    ckptkit called an archive without `version` clean, though torch.load stops on it."""
    import json
    import zipfile

    from click.testing import CliRunner

    from ckptkit.cli import main

    torch.save({"w": torch.arange(4.0)}, tmp_path / "base.pt")
    with zipfile.ZipFile(tmp_path / "base.pt") as src, zipfile.ZipFile(tmp_path / "x.pt", "w") as out:
        for name in src.namelist():
            if name != f"base/{member}":
                out.writestr(name, src.read(name))
    try:
        torch.load(tmp_path / "x.pt", weights_only=True)
        refused = False
    except RuntimeError:
        refused = True
    assert refused == (member in ("version", "data/0"))
    result = CliRunner().invoke(main, ["validate", "--json", str(tmp_path / "x.pt")])
    errors = result.exit_code == 2 or any(f["severity"] == "error" for f in json.loads(result.output)["findings"])
    assert errors == refused, result.output


def test_a_torchscript_archive_is_named_not_called_a_damaged_or_pickled_checkpoint(tmp_path: Path) -> None:
    """torch.jit.save writes the torch zip layout plus constants.pkl and code/: ckptkit once warned of a
    pickled class and offered to 'repair' it."""
    from click.testing import CliRunner

    from ckptkit.cli import main

    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), tmp_path / "model.pt")
    with pytest.raises(RuntimeError, match="TorchScript"):
        torch.load(tmp_path / "model.pt", weights_only=True)
    for command in ("inspect", "validate"):
        result = CliRunner().invoke(main, [command, str(tmp_path / "model.pt")])
        assert result.exit_code == 2
        assert result.output.strip() == (f"ckptkit: error: {tmp_path / 'model.pt'}: a TorchScript archive "
                                         "(torch.jit.save): a compiled model with its code, loaded with "
                                         "torch.jit.load, not a torch.save checkpoint; torch.load(weights_only=True) "
                                         "refuses it, and ckptkit does not read it")

def test_a_torch_export_archive_is_named(tmp_path: Path) -> None:
    """torch.export.save writes a zip of weights, JSON and an `archive_format` record saying pt2, with
    no data.pkl: ckptkit said only 'a zip archive, but not a torch.save checkpoint'."""
    from click.testing import CliRunner

    from ckptkit.cli import main

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), tmp_path / "model.pt2")
    assert set(torch.export.load(tmp_path / "model.pt2").state_dict) == {"0.weight", "0.bias"}
    before = (tmp_path / "model.pt2").read_bytes()
    for command in ("inspect", "validate", "convert"):
        args = [command, str(tmp_path / "model.pt2")] + ([str(tmp_path / "x.pt")] if command == "convert" else [])
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert result.output.strip() == (f"ckptkit: error: {tmp_path / 'model.pt2'}: a torch.export program archive "
                                         "(torch.export.save, .pt2): a traced program with its weights, loaded with "
                                         "torch.export.load, not a torch.save checkpoint; ckptkit does not read it "
                                         "(its state dict: torch.export.load(path).state_dict)")
    assert (tmp_path / "model.pt2").read_bytes() == before and not (tmp_path / "x.pt").exists()

