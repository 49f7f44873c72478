"""The restricted unpickler: no global from the file is resolved, no code from it runs."""
from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from ckptkit.storage.safe_pickle import GlobalRef, NumpyArray, PickledObject, TorchDtypeValue, safe_loads


@dataclasses.dataclass
class TrainConfig:
    lr: float = 3e-4
    layers: int = 4
    name: str = "run-7"
    betas: tuple[float, float] = (0.9, 0.95)


class Slotted:
    __slots__ = ("alpha", "beta")

    def __init__(self) -> None:
        self.alpha, self.beta = 1, "two"


class Registry(dict):  # type: ignore[type-arg]
    pass


def _protocol0_call(module: str, name: str, arg: str) -> bytes:
    """A pickle that calls module.name(arg) when loaded for real (spelled as an attacker would)."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def _reduce_pickle(func: object, *args: object) -> bytes:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return func, args
    return pickle.dumps(Payload(), protocol=2)


def _attacks(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Pickles that would create `marker` if unpickled for real, with the global each names."""
    command = f"touch {marker}"
    return {
        "os.system": (_protocol0_call("os", "system", command), "os.system"),
        "posix.system": (_reduce_pickle(os.system, command), "posix.system"),
        "builtins.eval": (_reduce_pickle(eval, f"__import__('os').system({command!r})"), "builtins.eval"),
        "builtins.exec": (_reduce_pickle(exec, f"import os; os.system({command!r})"), "builtins.exec"),
        "subprocess.Popen": (_reduce_pickle(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        "builtins.__import__": (_protocol0_call("builtins", "__import__", "os"), "builtins.__import__"),
        "builtins.open": (_protocol0_call("builtins", "open", str(marker)), "builtins.open"),
    }


ATTACKS = list(_attacks(Path("m")))


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_pickle_that_would_run_code_is_read_as_an_inert_blocked_call(tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "MARKER"
    data, qualified = _attacks(marker)[attack]
    result = safe_loads(data)
    assert not marker.exists()
    module, _, name = qualified.rpartition(".")
    [dangerous] = result.dangerous
    assert (dangerous.module, dangerous.name, dangerous.kind) == (module, name, "dangerous")
    assert dangerous.call.startswith(f"{qualified}(")
    assert isinstance(result.value, PickledObject) and result.value.is_dangerous
    assert result.value.qualified_name == qualified
    assert repr(result.value) == f"<blocked call {dangerous.call}>"


def test_a_pickled_dataclass_config_shows_its_fields_through_the_stub() -> None:
    result = safe_loads(pickle.dumps({"config": TrainConfig()}, protocol=2))
    config = result.value["config"]
    assert isinstance(config, PickledObject)
    assert config.qualified_name == f"{__name__}.TrainConfig"
    assert config.fields() == {"lr": 3e-4, "layers": 4, "name": "run-7", "betas": (0.9, 0.95)}
    assert result.classes == [GlobalRef(__name__, "TrainConfig", "class")] and result.dangerous == []


def test_protocol_0_objects_become_stubs_with_their_fields() -> None:
    result = safe_loads(pickle.dumps(TrainConfig(lr=0.1), protocol=0))
    assert result.value.fields()["lr"] == 0.1
    assert {g.qualified_name for g in result.globals} == {"copyreg._reconstructor", f"{__name__}.TrainConfig",
                                                        "builtins.object"}
    assert result.dangerous == []


def test_slots_namespaces_and_dict_subclasses_keep_their_state() -> None:
    value = safe_loads(pickle.dumps([Slotted(), argparse.Namespace(epochs=3, lr=0.5),
                                     Registry(a=1, b=2)], protocol=2)).value
    assert value[0].fields() == {"alpha": 1, "beta": "two"}
    assert value[1].fields() == {"epochs": 3, "lr": 0.5}
    assert value[1].qualified_name == "argparse.Namespace"
    assert value[2].fields() == {"a": 1, "b": 2}


def test_a_class_from_a_module_that_is_not_installed_is_stubbed_without_importing() -> None:
    data = b"\x80\x02cno_such_package.models\nNet\n)\x81}X\x05\x00\x00\x00depthK\x03sb."
    result = safe_loads(data)
    assert result.value.qualified_name == "no_such_package.models.Net"
    assert result.value.fields() == {"depth": 3}
    assert "no_such_package" not in sys.modules


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_scalars_become_numbers_and_arrays_become_descriptors(protocol: int) -> None:
    rng_state = np.random.RandomState(0).get_state()
    data = pickle.dumps({"loss": np.float64(0.25), "acc": np.float32(0.5), "step": np.int64(7),
                         "flag": np.bool_(True), "hist": np.arange(6, dtype=np.int16).reshape(2, 3),
                         "np_rng": rng_state}, protocol=protocol)
    value = safe_loads(data).value
    assert (value["loss"], value["acc"], value["step"], value["flag"]) == (0.25, 0.5, 7, True)
    assert type(value["step"]) is int and type(value["loss"]) is float
    hist = value["hist"]
    assert isinstance(hist, NumpyArray) and (hist.dtype, hist.shape) == ("<i2", (2, 3))
    assert hist.data == np.arange(6, dtype=np.int16).tobytes()
    kind, keys, pos, has_gauss, cached = value["np_rng"]
    assert (kind, pos, has_gauss, cached) == ("MT19937", 624, 0, 0.0)
    assert (keys.dtype, keys.shape, keys.data) == ("<u4", (624,), rng_state[1].tobytes())


def test_reading_numpy_values_does_not_import_numpy(tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps({"loss": np.float64(0.25), "rng": np.random.RandomState(0).get_state()}))
    code = ("import sys; from ckptkit.storage.safe_pickle import safe_loads; "
            f"v = safe_loads(open({str(path)!r}, 'rb').read()).value; "
            "print(v['loss'], v['rng'][1], 'numpy' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0.25", "ndarray", "<u4[624]", "False", "False"]


def test_harmless_containers_and_torch_dtypes_come_back_as_values() -> None:
    data = b"\x80\x02ctorch\nbfloat16\nq\x00."
    assert safe_loads(data).value == TorchDtypeValue("bfloat16")
    value = safe_loads(pickle.dumps({"od": OrderedDict(a=1), "s": {1, 2}, "fs": frozenset({3}),
                                     "sl": slice(1, 5), "c": 1 + 2j, "b": b"\x00\xff"}, protocol=2)).value
    assert value == {"od": OrderedDict(a=1), "s": {1, 2}, "fs": frozenset({3}), "sl": slice(1, 5),
                     "c": 1 + 2j, "b": b"\x00\xff"}
    assert type(value["od"]) is OrderedDict


def test_codecs_encode_refuses_anything_but_text_encodings() -> None:
    data = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R."
    with pytest.raises(pickle.UnpicklingError, match="_codecs.encode with encoding 'base64'"):
        safe_loads(data)


@pytest.mark.parametrize("data, what", [
    (b"\x80\x02c__builtin__\nbytes\nJ\x00\xe4\x0bT\x85R.", "bytes() of 1,410,065,408 items"),
    (b"\x80\x02c__builtin__\nlist\nc__builtin__\nrange\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85R\x85R.",
     "list() of 1,000,000,000,000 items"),
])
def test_harmless_builtins_refuse_sizes_meant_to_exhaust_memory(data: bytes, what: str) -> None:
    with pytest.raises(pickle.UnpicklingError, match=re.escape(what)):
        safe_loads(data)
