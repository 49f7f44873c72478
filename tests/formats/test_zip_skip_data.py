"""torch.save under `torch.serialization.skip_data()` (torch's documented way to write a
checkpoint's skeleton and fill its tensor bytes in a later pass): every storage record says CRC 0
and holds zeros until then, while data.pkl and the other records carry real CRC-32s. ckptkit
called a filled file "disk, copy or transfer corruption" (one `deep.crc-mismatch` error per
tensor), said nothing about a file whose bytes were never written (torch.load returns zeros), and
`convert` / `fix-epoch` carried the CRC 0s into the files they wrote.

The files here are filled as torch itself lets a program find where each storage's bytes go:
`torch.load` under `FakeTensorMode` gives every storage its `_checkpoint_offset`.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from ckptkit.cli import main
from ckptkit.formats import open_checkpoint
from ckptkit.formats.zip_directory import skip_data_archive, storage_crcs_recorded
from tests.formats.rewrites import assert_rewrites_write_real_crcs, tensors_of


def _trained() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 3,
            "scheduler": {"last_epoch": 3}}


_flat = tensors_of


def _skeleton(path: Path, saved: dict[str, Any]) -> None:
    with torch.serialization.skip_data():
        torch.save(saved, path)


def _fill(path: Path, saved: dict[str, Any], keys: set[str] | None = None) -> None:
    """Write the bytes of `keys` (default: every tensor) where torch.load says they go."""
    with FakeTensorMode():
        fake = _flat(torch.load(path, weights_only=True))
    real = _flat(saved)
    with open(path, "r+b") as f:
        for key, tensor in real.items():
            if keys is None or key in keys:
                f.seek(fake[key].untyped_storage()._checkpoint_offset)
                f.write(tensor.contiguous().numpy().tobytes())


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _codes(path: Path, *flags: str) -> list[tuple[str, str]]:
    code, out = _cli("validate", "--json", "--no-run", *flags, path)
    assert code in (0, 1), out
    return [(f["code"], f["severity"]) for f in json.loads(out)["findings"]]


def _findings(path: Path, *flags: str) -> dict[str, dict[str, Any]]:
    code, out = _cli("validate", "--json", "--no-run", *flags, path)
    return {f["code"]: f for f in json.loads(out)["findings"]}


def test_the_archive_torch_writes_has_crc_0_for_its_storages_only(tmp_path: Path) -> None:
    _skeleton(tmp_path / "x.pt", _trained())
    with zipfile.ZipFile(tmp_path / "x.pt") as zf:
        infos = {i.filename: i for i in zf.infolist()}
    storages = {n: i.CRC for n, i in infos.items() if "/data/" in n and "/.data/" not in n}
    assert len(storages) == 16 and set(storages.values()) == {0}
    assert infos["x/data.pkl"].CRC != 0
    assert skip_data_archive(infos) and not storage_crcs_recorded(infos)
    assert all(not t.any() for t in _flat(torch.load(tmp_path / "x.pt", weights_only=True)).values())


def test_a_filled_skip_data_file_reads_as_torch_loads_it_and_is_no_corruption(tmp_path: Path) -> None:
    saved = _trained()
    _skeleton(tmp_path / "x.pt", saved)
    _fill(tmp_path / "x.pt", saved)
    loaded = _flat(torch.load(tmp_path / "x.pt", weights_only=True))
    assert all(torch.equal(loaded[k], v) for k, v in _flat(saved).items())
    assert bytes(open_checkpoint(tmp_path / "x.pt").model["0.weight"].read_bytes()) == \
        saved["model_state_dict"]["0.weight"].numpy().tobytes()
    assert _codes(tmp_path / "x.pt") == [("integrity.skip-data", "info")]
    assert _codes(tmp_path / "x.pt", "--deep") == [("deep.crc-not-recorded", "info")]
    code, out = _cli("validate", "--deep", "--no-run", tmp_path / "x.pt")
    assert code == 0 and "crc-mismatch" not in out and "skip_data()" in out
    code, out = _cli("inspect", tmp_path / "x.pt")
    assert code == 0 and "tensor_bytes: 'left to a later pass (torch.serialization.skip_data)" in out


def test_a_skeleton_never_filled_is_an_error_with_deep(tmp_path: Path) -> None:
    _skeleton(tmp_path / "x.pt", _trained())
    assert _codes(tmp_path / "x.pt") == [("integrity.skip-data", "info")]
    assert _codes(tmp_path / "x.pt", "--deep") == [("deep.bytes-never-written", "error")]
    finding = _findings(tmp_path / "x.pt", "--deep")["deep.bytes-never-written"]
    assert "all 16 storage records hold only zeros" in finding["message"]
    code, _ = _cli("validate", "--deep", "--no-run", tmp_path / "x.pt")
    assert code == 1


def test_the_records_a_fill_left_out_are_named(tmp_path: Path) -> None:
    saved = _trained()
    _skeleton(tmp_path / "x.pt", saved)
    _fill(tmp_path / "x.pt", saved, {"model_state_dict.0.weight", "model_state_dict.0.bias"})
    found = _findings(tmp_path / "x.pt", "--deep")
    assert {(c, f["severity"]) for c, f in found.items()} == {("deep.crc-not-recorded", "info"),
                                                            ("deep.zero-records", "info")}
    assert found["deep.zero-records"]["message"].startswith(
        "14 of the 16 storage records hold only zeros ('model_state_dict.1.weight', 'model_state_dict.1.bias', "
        "'optimizer_state_dict.state.0.step' and 11 more)")


def test_a_storage_crc_zeroed_among_real_ones_is_still_damage(tmp_path: Path) -> None:
    """A plain save: one storage record whose directory CRC reads 0 is a changed byte, not skip_data."""
    torch.save(_trained(), tmp_path / "x.pt")
    raw = bytearray((tmp_path / "x.pt").read_bytes())
    name = b"x/data/1"
    central = raw.find(b"PK\x01\x02")      # the central entries, in order, until x/data/1's
    while int.from_bytes(raw[central + 28: central + 30], "little") != len(name) or \
            raw[central + 46: central + 46 + len(name)] != name:
        central = raw.find(b"PK\x01\x02", central + 1)
    raw[central + 16: central + 20] = b"\0\0\0\0"
    (tmp_path / "x.pt").write_bytes(bytes(raw))
    with zipfile.ZipFile(tmp_path / "x.pt") as zf:
        assert not skip_data_archive({i.filename: i for i in zf.infolist()})
    assert ("integrity.skip-data", "info") not in _codes(tmp_path / "x.pt")
    assert {c for c, s in _codes(tmp_path / "x.pt", "--deep") if s == "error"} & {"deep.crc-mismatch",
                                                                                    "deep.zip-header-mismatch"}


def test_a_file_written_without_any_crc_is_no_skip_data(tmp_path: Path) -> None:
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(_trained(), tmp_path / "x.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(tmp_path / "x.pt") as zf:
        assert not skip_data_archive({i.filename: i for i in zf.infolist()})
    assert _codes(tmp_path / "x.pt", "--deep") == [("deep.crc-not-recorded", "info")]


def test_conversions_and_repairs_of_a_filled_file_write_real_crcs(tmp_path: Path) -> None:
    saved = _trained()
    _skeleton(tmp_path / "x.pt", saved)
    _fill(tmp_path / "x.pt", saved)
    assert_rewrites_write_real_crcs(tmp_path / "x.pt", saved)
    assert _codes(tmp_path / "x.pt.bak") == [("integrity.skip-data", "info")]    # the original, as it was


@settings(max_examples=25, deadline=None)
@given(filled=st.sets(st.integers(0, 9)))
def test_deep_names_exactly_the_records_no_pass_wrote(tmp_path_factory: Any, filled: set[int]) -> None:
    """Whatever subset a fill pass wrote: an error when it wrote none, else the records it left
    are counted and no tensor is called damaged (every tensor here is non-zero)."""
    path = tmp_path_factory.mktemp("skip") / "x.pt"
    torch.manual_seed(1)
    saved = {"model": {f"w{i}": torch.randn(3) + 10 for i in range(10)}, "epoch": 1}
    _skeleton(path, saved)
    _fill(path, saved, {f"model.w{i}" for i in filled})
    found = _findings(path, "--deep")
    assert not {c for c in found if c == "deep.crc-mismatch"}
    if not filled:
        assert found["deep.bytes-never-written"]["severity"] == "error"
        assert "deep.zero-records" not in found
    elif len(filled) == 10:
        assert "deep.zero-records" not in found and "deep.bytes-never-written" not in found
        assert found["deep.crc-not-recorded"]["severity"] == "info"
    else:
        left = sorted(set(range(10)) - filled)
        assert found["deep.zero-records"]["message"].startswith(f"{len(left)} of the 10 storage records")
        shown = ", ".join(f"'model.w{i}'" for i in left[:3])
        assert shown in found["deep.zero-records"]["message"]


FIXTURE = Path(__file__).parents[1] / "fixtures" / "real" / "skip_data"


def test_the_fixture_files_get_their_verdicts() -> None:
    """tests/fixtures/real/skip_data (scripts/make_real_fixtures.py): the skeleton as torch.save
    leaves it, and the same file filled in place; ckptkit reads the bytes torch.load returns."""
    skeleton = torch.load(FIXTURE / "skeleton.pt", weights_only=True)
    filled = torch.load(FIXTURE / "filled.pt", weights_only=True)
    assert not skeleton["model"]["0.weight"].any() and filled["model"]["0.weight"].all()
    ckpt = open_checkpoint(FIXTURE / "filled.pt")
    assert torch.equal(ckpt.model["0.weight"].to_torch(), filled["model"]["0.weight"])
    assert ("deep.bytes-never-written", "error") in _codes(FIXTURE / "skeleton.pt", "--deep")
    assert ("deep.crc-not-recorded", "info") in _codes(FIXTURE / "filled.pt", "--deep")
    for name in ("skeleton.pt", "filled.pt"):
        assert not [c for c, s in _codes(FIXTURE / name) if s in ("error", "warning")]
