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
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ckptkit.checkpoint import Severity
from ckptkit.errors import CkptkitError
from ckptkit.validation import validate_path
from tests.validation.helpers import trained_state, zip_member_range

FORMATS = ("torch-zip", "torch-legacy", "safetensors", "pickle")
_serial = itertools.count()
# CKPTKIT_PROPERTY_EXAMPLES=500 for a thorough local run; the default keeps the suite fast.
PROPERTY = settings(max_examples=int(os.environ.get("CKPTKIT_PROPERTY_EXAMPLES", "25")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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
