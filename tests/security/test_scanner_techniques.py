"""Techniques from the public test material of picklescan, fickling and modelscan that ckptkit's
verdict missed when measured on their files (scripts/scanner_samples_report.py). Each sample is
written here from the technique's description; each test would fail without the rule it names."""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.core.errors import CkptkitError
from ckptkit.formats import open_checkpoint


def _dangerous(path: Path) -> list[str]:
    return [f.message for f in open_checkpoint(path).findings if f.code == "security.dangerous-global"]


def test_build_on_a_module_overwrites_its_attributes_and_is_dangerous(tmp_path: Path) -> None:
    """BUILD on a module sets its attributes for the whole process: here torch._utils's
    _rebuild_tensor becomes 'builtins', then 'eval', and a later STACK_GLOBAL of the two
    resolves builtins.eval. pickle.load does not fail there (the old verdict said it would)."""
    sm = b"\x8c"   # SHORT_BINUNICODE
    data = (b"\x80\x04" + sm + b"\x0ctorch._utils\x94" + sm + b"\x0f_rebuild_tensor\x94"
            + b"h\x00h\x01\x93" + b"0"                              # resolve it once (memo 0, 1)
            + sm + b"\x05torch" + sm + b"\x06_utils\x93\x94"        # the module torch._utils (memo 2)
            + b"}h\x01" + sm + b"\x08builtins" + b"sb0"             # BUILD: _rebuild_tensor = 'builtins'
            + b"h\x00h\x01\x93" + b"h\x02}h\x01" + sm + b"\x04evalsb0"
            + b"h\x00h\x01\x93\x93" + sm + b"\x0bprint('hi')\x85R.")
    path = tmp_path / "state.pkl"
    path.write_bytes(data)
    with pytest.raises(CkptkitError) as caught:
        open_checkpoint(path)
    assert "would call setattr(torch._utils, '_rebuild_tensor', 'builtins')" in str(caught.value)
    assert "do not load it" in str(caught.value)


def test_a_network_client_class_is_dangerous_not_a_pickled_class(tmp_path: Path) -> None:
    path = tmp_path / "model.pickle"
    path.write_bytes(b"\x80\x04\x8c\x0eaiohttp.client\x8c\x0dClientSession\x93)R.")
    assert any("would call aiohttp.client.ClientSession()" in m for m in _dangerous(path))


def test_a_payload_in_a_second_pickle_behind_a_harmless_one_is_named(tmp_path: Path, ) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps(["a", "b"]) + b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R.")
    messages = _dangerous(path)
    assert len(messages) == 1
    assert "would call os.system('id') (in pickle #2 of the file, which a loader that reads on runs)" in messages[0]
    clean = tmp_path / "clean.pkl"
    clean.write_bytes(pickle.dumps(["a", "b"]) + pickle.dumps({"epoch": 3}))
    assert _dangerous(clean) == []


def _zip_with(member: str, data: bytes, flag_bits: int = 0, local_name: bytes | None = None,
              bad_crc: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(member, data)
    raw = bytearray(buf.getvalue())
    if flag_bits:
        struct.pack_into("<H", raw, 6, flag_bits)                            # local header
        struct.pack_into("<H", raw, raw.find(b"PK\x01\x02") + 8, flag_bits)  # central directory
    if local_name is not None:
        raw[30:30 + len(local_name)] = local_name
    if bad_crc:
        central = raw.find(b"PK\x01\x02")
        struct.pack_into("<I", raw, 14, 0x12345678)
        struct.pack_into("<I", raw, central + 16, 0x12345678)
    return bytes(raw)


PAYLOAD = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x0bprint('hi')\x85R."


@pytest.mark.parametrize("damage", [
    {"flag_bits": 0x1}, {"flag_bits": 0x20}, {"flag_bits": 0x40},
    {"local_name": b"datap.kl"}, {"bad_crc": True},
], ids=["encrypted-flag", "patched-data-flag", "strong-encryption-flag", "local-name-differs", "bad-crc"])
def test_a_zip_member_zipfile_refuses_but_torch_reads_is_examined(tmp_path: Path, damage: dict) -> None:
    """Python's zipfile refuses these; PyTorch's reader (miniz built without CRC checks) does
    not look at the flags, the local name or the CRC, and runs the pickle."""
    path = tmp_path / "model.zip"
    path.write_bytes(_zip_with("data.pkl", PAYLOAD, **damage))
    before = path.read_bytes()
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "zip member data.pkl is damaged" in result.output
    assert "would call builtins.eval(\"print('hi')\")" in result.output
    assert path.read_bytes() == before


def _frame_divergence(payload: bytes) -> bytes:
    """A FRAME of 2 bytes ends inside a BINBYTES length. The C unpickler (torch.load's) refills its
    buffer past the frame and drops the byte left in it, so it reads a 1-byte BINBYTES and then
    runs `payload`; a linear reading sees a 256-byte BINBYTES that swallows the payload."""
    body = b"\x00X" + payload + b"0."
    rest = b"\x01\x00\x00" + body + b"N" * (256 - len(body)) + b"."
    return b"\x80\x04\x95" + struct.pack("<Q", 2) + b"B\x00" + rest


def test_a_pickle_whose_frames_torchs_c_unpickler_reads_differently_is_named(tmp_path: Path) -> None:
    data = _frame_divergence(b"cos\nsystem\nVecho pwned\n\x85R")

    class Recorder(pickle.Unpickler):   # the premise: the C unpickler resolves os.system here
        names: list[str] = []

        def find_class(self, module: str, name: str) -> object:
            self.names.append(f"{module}.{name}")
            return lambda *args: None
    Recorder(io.BytesIO(data)).load()
    assert Recorder.names == ["os.system"]
    path = tmp_path / "state.pkl"
    path.write_bytes(data)
    messages = _dangerous(path)
    assert len(messages) == 1 and "would call os.system (torch.load's C unpickler reaches it" in messages[0]


def test_framed_pickles_that_read_alike_stay_clean(tmp_path: Path) -> None:
    for protocol in (4, 5):
        path = tmp_path / f"state{protocol}.pkl"
        path.write_bytes(pickle.dumps({"epoch": 3, "lr": [0.1] * 5000, "name": "x" * 70_000}, protocol=protocol))
        ckpt = open_checkpoint(path)
        assert [f.code for f in ckpt.findings if f.code.startswith("security.")] == []


def test_a_protocol_0_global_followed_by_garbage_is_a_damaged_pickle_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(b"cbuiltins\n__import__\nS'os'\x85Rp0\n0.")
    with pytest.raises(CkptkitError) as caught:
        open_checkpoint(path)
    text = str(caught.value)
    assert "pickle is damaged: the STRING opcode argument must be quoted" in text
    assert "before that point it would load builtins.__import__" in text


def test_text_that_starts_with_c_is_not_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"concerning the weather\nhello\n")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2 and "not a checkpoint ckptkit knows (a text file" in result.output
