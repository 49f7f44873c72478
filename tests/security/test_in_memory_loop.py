"""The in-memory opcode loop (pickle_fastloop) must mean exactly what the framed loop means: the
same value, the same verdicts, the same error on damaged bytes, and the same limits."""
from __future__ import annotations

import gc
import io
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.core.checkpoint import StorageRef
from ckptkit.core.dtypes import BY_STORAGE_CLASS
from ckptkit.storage.pickle_fastloop import Memo
from ckptkit.storage.safe_pickle import PARTIAL_ATTR, SafeUnpickler, StorageType, safe_loads

ROOT = Path(__file__).resolve().parents[2]
# Real torch.save data.pkls (protocol 2): tensor rebuilds, persistent ids, OrderedDicts, memo
# gets and puts, a PEFT adapter and an accelerate training state (optimizer, RNG, numpy arrays).
FIXTURES = [ROOT / "tests/fixtures/real/hf_lora_bin/adapter_model.bin",
            ROOT / "tests/fixtures/real/save_pretrained_training_state/last_checkpoint/training_state.pth"]


def _data_pkl(path: Path = FIXTURES[0]) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _storage(pid: Any) -> StorageRef:
    _, stype, key, location, numel = pid
    dtype = stype.dtype if isinstance(stype, StorageType) else BY_STORAGE_CLASS["FloatStorage"]
    return StorageRef(str(key), dtype, int(numel), str(location))


def _outcome(data: bytes, in_memory: bool) -> tuple[str, str, str]:
    """(the error's type or "value", its text or the value's repr, the verdicts) through one of the
    loops; object addresses in reprs (`<... object at 0x7f...>`) differ between two decodings."""
    unpickler = SafeUnpickler(io.BytesIO(data), _storage, len(data), data if in_memory else None)
    try:
        kind, text = "value", repr(unpickler.load())
    except Exception as exc:   # every failure is compared, whatever its type
        kind, text = type(exc).__name__, str(exc)
    return kind, _ADDRESS.sub("0x?", text), _ADDRESS.sub("0x?", repr(unpickler.verdicts()))


_ADDRESS = re.compile(r"0x[0-9a-f]+")


@pytest.mark.parametrize("path", FIXTURES, ids=["adapter", "training_state"])
def test_a_real_torch_data_pkl_decodes_to_the_same_tree_through_both_loops(path: Path) -> None:
    data = _data_pkl(path)
    kind, text, verdicts = _outcome(data, in_memory=True)
    assert kind == "value" and "TensorRef" in text
    assert (kind, text, verdicts) == _outcome(data, in_memory=False)


@pytest.mark.parametrize("path", FIXTURES, ids=["adapter", "training_state"])
def test_a_data_pkl_cut_at_every_byte_fails_the_same_way_through_both_loops(path: Path) -> None:
    data = _data_pkl(path)
    for cut in range(0, len(data), 1 + len(data) // 800):   # every byte of the adapter's, ~800 cuts of the other
        fast = _outcome(data[:cut], in_memory=True)
        assert fast[0] != "value", cut
        assert fast == _outcome(data[:cut], in_memory=False), cut


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_data_pkl_with_flipped_bytes_means_the_same_through_both_loops(draw: st.DataObject) -> None:
    data = bytearray(_data_pkl(draw.draw(st.sampled_from(FIXTURES))))
    for _ in range(draw.draw(st.integers(1, 3))):
        data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    assert _outcome(bytes(data), in_memory=True) == _outcome(bytes(data), in_memory=False)


@pytest.mark.parametrize("protocol", range(6))
def test_plain_values_read_back_equal_at_every_protocol(protocol: int) -> None:
    shared = ["x" * 300, 2 ** 40]
    value = {"ints": [0, 255, 256, 65535, 65536, -1, -2 ** 31], "floats": (0.5, -1e300), "none": None,
             "flags": (True, False), "shared": (shared, shared), "bytes": b"ab", "one": (1,), "three": (1, 2, 3),
             "text": "\u00e9\U0001f600", "empty": ((), [], {}), "set": {1, 2}}
    result = safe_loads(pickle.dumps(value, protocol=protocol)).value
    assert result == value
    assert result["shared"][0] is result["shared"][1]


def test_a_memo_index_of_four_billion_costs_one_entry_not_a_list_of_four_billion() -> None:
    data = b"\x80\x02K\x07r" + struct.pack("<I", 4_000_000_000) + b"0j" + struct.pack("<I", 4_000_000_000) + b"."
    assert safe_loads(data).value == 7
    memo = Memo()
    memo[4_000_000_000] = "far"
    memo[0] = "near"
    assert (len(memo.dense), len(memo), memo[4_000_000_000], memo[0]) == (1, 2, "far", "near")


def test_a_get_of_an_index_never_put_names_the_index() -> None:
    with pytest.raises(pickle.UnpicklingError, match="Memo value not found at index 9"):
        safe_loads(b"\x80\x02K\x01q\x00h\x09.")


def test_the_cyclic_collector_runs_again_after_a_load_that_succeeds_or_fails() -> None:
    assert gc.isenabled()
    safe_loads(pickle.dumps({"a": [1, 2]}, protocol=2))
    assert gc.isenabled()
    with pytest.raises(EOFError) as failed:
        safe_loads(b"\x80\x02K\x01")
    assert gc.isenabled()
    assert getattr(failed.value, PARTIAL_ATTR) == []
