"""Properties: damaged checkpoints never pass silently, never crash, never hang.

For every format ckptkit reads: any truncation is unusable input (CkptkitError, exit 2) or an
error finding; any bit flip anywhere gives a report or a CkptkitError, never another exception.
With --deep, a flip inside a torch zip's tensor data is never "clean" (the CRC sees it).
safetensors and legacy files carry no checksum: there a flip is caught only when it makes a
value impossible (see the README's deep-check section), so only "no crash" is asserted.
"""
from __future__ import annotations

import itertools
import os
import pickle
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ckptkit.core.checkpoint import Severity
from ckptkit.core.errors import CkptkitError
from ckptkit.validation import validate_path
from tests.validation.helpers import trained_state, zip_member_range

FORMATS = ("torch-zip", "torch-legacy", "safetensors", "pickle")
_serial = itertools.count()
# CKPTKIT_PROPERTY_EXAMPLES=500 for a thorough local run; the default keeps the suite fast.
PROPERTY = settings(max_examples=int(os.environ.get("CKPTKIT_PROPERTY_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """One small valid checkpoint per format, as bytes."""
    folder = tmp_path_factory.mktemp("valid")
    state = {**trained_state(in_features=4, hidden=4), "epoch": 2, "recall_at_10": 0.25}
    torch.save(state, folder / "zip.pt")
    torch.save(state, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in state["model_state_dict"].items()}, str(folder / "m.safetensors"))
    (folder / "p.pkl").write_bytes(pickle.dumps({"epoch": 3, "loss": 0.5, "history": [1.0, 0.7]}, protocol=4))
    names = {"torch-zip": "zip.pt", "torch-legacy": "legacy.pt", "safetensors": "m.safetensors", "pickle": "p.pkl"}
    return {fmt: (folder / name).read_bytes() for fmt, name in names.items()}


@contextmanager
def no_hang(seconds: int = 30) -> Iterator[None]:
    def fail(*_: object) -> None:
        raise AssertionError(f"validation did not finish within {seconds} s")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(folder: Path, data: bytes, deep: bool) -> str:
    """'unusable', 'error' (an error finding), or 'passed' (nothing at error level)."""
    path = folder / f"damaged{next(_serial)}.pt"      # a fresh path: maps are cached per path
    path.write_bytes(data)
    with no_hang():
        try:
            report = validate_path(path, deep=deep, siblings=False)
        except CkptkitError:
            return "unusable"
    return "error" if report.fails(Severity.ERROR) else "passed"


@pytest.mark.parametrize("fmt", FORMATS)
@PROPERTY
@given(cut=st.floats(0, 1, exclude_max=True), deep=st.booleans())
def test_any_truncation_is_unusable_or_an_error(valid: dict[str, bytes], tmp_path: Path, fmt: str,
                                                cut: float, deep: bool) -> None:
    data = valid[fmt]
    assert outcome(tmp_path, data[: int(cut * len(data))], deep) in ("unusable", "error")


@pytest.mark.parametrize("fmt", FORMATS)
@PROPERTY
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), deep=st.booleans())
def test_any_bit_flip_gives_a_report_or_one_error_never_a_crash(valid: dict[str, bytes], tmp_path: Path,
                                                                fmt: str, where: float, bit: int,
                                                                deep: bool) -> None:
    data = bytearray(valid[fmt])
    data[int(where * len(data))] ^= 1 << bit
    assert outcome(tmp_path, bytes(data), deep) in ("unusable", "error", "passed")


@PROPERTY
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_deep_never_passes_a_flip_inside_zip_tensor_data(valid: dict[str, bytes], tmp_path: Path,
                                                         where: float, bit: int) -> None:
    original = tmp_path / "original.pt"
    original.write_bytes(valid["torch-zip"])
    offset, length = zip_member_range(original, "/data/3")     # the second layer's weight
    data = bytearray(valid["torch-zip"])
    data[offset + int(where * length)] ^= 1 << bit
    assert outcome(tmp_path, bytes(data), deep=True) in ("unusable", "error")


@PROPERTY
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_deep_never_passes_a_flip_anywhere_in_a_zip_member(valid: dict[str, bytes], tmp_path: Path,
                                                           where: float, bit: int) -> None:
    """data.pkl, version records and every storage: each member has its CRC."""
    data = bytearray(valid["torch-zip"])
    start, end = _members_span(tmp_path, valid["torch-zip"])
    data[start + int(where * (end - start))] ^= 1 << bit
    assert outcome(tmp_path, bytes(data), deep=True) in ("unusable", "error")


def _members_span(folder: Path, data: bytes) -> tuple[int, int]:
    """From the first byte of member data to the start of the central directory."""
    import zipfile

    path = folder / "span.pt"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    first, _ = zip_member_range(path, infos[0].filename)
    last, length = zip_member_range(path, infos[-1].filename)
    return first, last + length


REAL = Path(__file__).parent.parent / "fixtures" / "real"
FOLDERS = ("hf_full/checkpoint-8", "hf_lora/checkpoint-8", "hf_sharded", "dcp", "accelerate",
           "save_pretrained_training_state/last_checkpoint")
NOT_CHECKPOINT_DATA = {"README.md"}     # peft's model card: nothing reads it on resume


def folder_outcome(tmp_path: Path, src: str, pick: float, damage: Callable[[bytes], bytes], deep: bool) -> str:
    source = REAL / src
    members = sorted(p.name for p in source.iterdir() if p.is_file() and p.name not in NOT_CHECKPOINT_DATA)
    member = members[int(pick * len(members))]
    target = tmp_path / f"f{next(_serial)}" / source.name
    shutil.copytree(source, target)
    original = (target / member).read_bytes()
    damaged = damage(original)
    # Dropping a JSON file's trailing newline changes nothing anybody reads.
    assume(not (member.endswith(".json") and original.startswith(damaged) and not original[len(damaged):].strip()))
    (target / member).write_bytes(damaged)
    with no_hang():
        try:
            report = validate_path(target, deep=deep, siblings=False)
        except CkptkitError:
            return "unusable"
    return "error" if report.fails(Severity.ERROR) else "passed"


@pytest.mark.parametrize("src", FOLDERS)
@PROPERTY
@given(pick=st.floats(0, 1, exclude_max=True), cut=st.floats(0, 1, exclude_max=True), deep=st.booleans())
def test_any_truncated_member_of_a_folder_is_unusable_or_an_error(tmp_path: Path, src: str, pick: float,
                                                                 cut: float, deep: bool) -> None:
    assert folder_outcome(tmp_path, src, pick, lambda b: b[: int(cut * len(b))], deep) in ("unusable", "error")


@pytest.mark.parametrize("src", FOLDERS)
@PROPERTY
@given(pick=st.floats(0, 1, exclude_max=True), where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7), deep=st.booleans())
def test_any_bit_flip_in_a_folder_member_never_crashes(tmp_path: Path, src: str, pick: float, where: float,
                                                       bit: int, deep: bool) -> None:
    def flip(data: bytes) -> bytes:
        out = bytearray(data)
        out[int(where * len(out))] ^= 1 << bit
        return bytes(out)
    assert folder_outcome(tmp_path, src, pick, flip, deep) in ("unusable", "error", "passed")


def test_a_damaged_memo_index_does_not_exhaust_memory(tmp_path: Path) -> None:
    """One flipped bit in a LONG_BINPUT index made the C unpickler zero-fill a memo of 2**31
    entries (16 GiB): the process was killed. The restricted unpickler keeps its memo in a dict."""
    import subprocess
    import sys

    path = tmp_path / "memo.pkl"
    path.write_bytes(b"\x80\x02}r\xff\xff\xff\x7fX\x05\x00\x00\x00epochK\x03s.")   # {'epoch': 3}, memo 2**31-1
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from ckptkit.formats import open_checkpoint; print(open_checkpoint(sys.argv[1]).tree)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'epoch': 3}"
