"""`torch.save(..., pickle_protocol=N)`: torch writes protocol 2 by default, and its weights-only
unpickler (plain `torch.load` since PyTorch 2.6) reads only protocol 2's opcodes. ckptkit read a
legacy file of any other protocol as a plain pickle holding nothing but torch's magic number
(validate: clean, inspect: "no model state found"), failed on a framed legacy pickle ("damaged:
UnsupportedOperation: seek"), and never said that plain `torch.load` stops on protocols 1, 3
(with bytes), 4 and 5. Each verdict here is held to torch.load itself, both ways.
"""
from __future__ import annotations

import inspect
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.core.errors import UnsupportedFeatureError
from ckptkit.formats import open_checkpoint
from ckptkit.storage.pickle_verdict import WEIGHTS_ONLY_OPCODES
from ckptkit.storage.safe_pickle import safe_loads
from tests.validation.helpers import codes, only, run, trained_state

CODE = "compat.weights-only-pickle"


def torch_refusal(path: Path) -> str | None:
    """torch.load(weights_only=True)'s 'Unsupported operand N' (or its first line for another
    refusal, a global it does not allow), or None when it loads the file."""
    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported operand \d+", str(exc))
        return found.group(0) if found else str(exc).splitlines()[0]
    return None


def test_the_opcode_list_is_torchs_own() -> None:
    import torch._weights_only_unpickler as unpickler
    source = inspect.getsource(unpickler.Unpickler.load)
    names = set(re.findall(r"key\[0\] == ([A-Z_0-9]+)\[0\]", source))
    for group in re.findall(r"key\[0\] in \[(.*?)\]:", source):
        names |= set(re.findall(r"([A-Z_0-9]+)\[0\]", group))
    assert {getattr(pickle, n)[0] for n in names} == WEIGHTS_ONLY_OPCODES


def state() -> dict[str, Any]:
    return {**trained_state(steps=1), "epoch": 3}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("with_bytes", [False, True], ids=["", "bytes"])
def test_every_protocol_is_read_as_torch_reads_it(save: Any, zipped: bool, protocol: int, with_bytes: bool) -> None:
    obj = {**state(), **({"note": b"\x00raw"} if with_bytes else {})}
    path = save(obj, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    ckpt = open_checkpoint(path)
    assert ckpt.format == ("torch-zip" if zipped else "torch-legacy")
    loaded = torch.load(path, weights_only=False)
    assert set(ckpt.model) == set(loaded["model_state_dict"])
    assert ckpt.tree["epoch"] == 3
    assert ckpt.tree.get("note") == loaded.get("note")
    refusal = torch_refusal(path)
    assert (refusal is not None) == (protocol in (1, 4, 5) or (protocol == 3 and with_bytes))
    report = run(path)
    if refusal is None:
        assert CODE not in codes(report)
    else:
        finding = only(report, CODE)
        assert finding.severity.value == "warning"
        assert f"'Weights only load failed ... {refusal}'" in finding.message


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_the_fix_command_writes_a_file_plain_torch_load_reads(save: Any, zipped: bool) -> None:
    path = save({**state(), "note": b"raw"}, pickle_protocol=4, _use_new_zipfile_serialization=zipped)
    finding = only(run(path), CODE)
    assert "pickle protocol 4 or 5" in finding.message
    command = shlex.split(finding.fix.split(" (")[0])
    assert command[:2] == ["ckptkit", "convert"] and Path(command[2]) == path
    done = subprocess.run([sys.executable, "-m", "ckptkit", *command[1:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    original, fixed = torch.load(path, weights_only=False), torch.load(command[3])     # weights_only=True
    assert fixed.keys() == original.keys() and fixed["note"] == b"raw" and fixed["epoch"] == 3
    for key, value in original["optimizer_state_dict"]["state"][0].items():
        assert torch.equal(fixed["optimizer_state_dict"]["state"][0][key], value)
    assert CODE not in codes(run(Path(command[3])))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_protocol_0_which_no_torch_loads_is_one_clear_error(save: Any, zipped: bool) -> None:
    path = save(state(), pickle_protocol=0, _use_new_zipfile_serialization=zipped)
    with pytest.raises(AssertionError, match="saved_id must be a tuple"):
        torch.load(path, weights_only=False)
    with pytest.raises(UnsupportedFeatureError) as caught:
        open_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: the pickle names its storages in text (pickle protocol 0")
    assert "\n" not in str(caught.value) and "damaged" not in str(caught.value)
    done = subprocess.run([sys.executable, "-m", "ckptkit", "validate", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "torch.load cannot read either" in done.stderr


def test_a_folder_member_nothing_loads_with_weights_only_is_no_finding(tmp_path: Path) -> None:
    """An HF Trainer folder: optimizer.pt is loaded with weights_only=True and counts;
    training_args.bin is not read back on resume."""
    import shutil
    fixture = Path(__file__).parents[1] / "fixtures/real/hf_full/checkpoint-8"
    folder = shutil.copytree(fixture, tmp_path / "checkpoint-8")
    for name in ("optimizer.pt", "training_args.bin"):
        obj = torch.load(folder / name, weights_only=False)
        torch.save(obj, folder / name, pickle_protocol=4)
    finding = only(run(folder), CODE)
    assert finding.where.endswith("optimizer.pt")


plain = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
                     | st.binary(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
                     | st.tuples(inner, inner), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=plain, protocol=st.integers(1, 5), zipped=st.booleans())
def test_a_finding_exactly_when_torch_load_stops(save: Any, value: Any, protocol: int, zipped: bool) -> None:
    path = save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 1, "value": value},
                pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    refusal = torch_refusal(path)
    found = codes(run(path)) & {CODE, "compat.weights-only-values"}
    # b"" in protocol 2 is builtins.bytes(), a global torch refuses: the values finding says so.
    # torch names the first thing it stops at; ckptkit every one.
    assert bool(found) == (refusal is not None)
    if refusal is not None and refusal.startswith("Unsupported operand"):
        assert CODE in found
    assert open_checkpoint(path).tree["value"] == torch.load(path, weights_only=False)["value"]


def test_the_unpickler_names_the_opcodes_in_the_order_they_run() -> None:
    assert safe_loads(pickle.dumps({"a": b"x"}, protocol=2)).torch_refuses == ()
    assert safe_loads(pickle.dumps({"a": b"x"}, protocol=3)).torch_refuses == ("SHORT_BINBYTES",)
    framed = safe_loads(pickle.dumps({"a": [1]}, protocol=4))
    assert framed.torch_refuses[:3] == ("FRAME", "MEMOIZE", "SHORT_BINUNICODE")
    # noted once per pickle, however often they run
    assert safe_loads(pickle.dumps([b"x"] * 50 + [b"y"], protocol=3)).torch_refuses == ("SHORT_BINBYTES",)
