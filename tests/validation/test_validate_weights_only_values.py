"""Plain values torch's weights-only unpickler refuses (frozenset, range, slice: builtins torch
does not allow) and the ones it allows (Counter, set, complex, bytes...). torch.load's default is
weights_only=True since PyTorch 2.6, so a file holding one stops a plain resume with "Weights
only load failed". ckptkit decoded them as data and said nothing; and it warned about a Counter,
which torch loads. Each verdict here is held to torch.load itself.
"""
from __future__ import annotations

import collections
from typing import Any

import pytest
import torch

from ckptkit.core.checkpoint import Severity
from ckptkit.core.dtypes import BY_NAME, BY_STORAGE_CLASS
from ckptkit.storage.pickle_known import KNOWN
from ckptkit.storage.pickle_verdict import weights_only_accepts
from tests.validation.helpers import codes, loads_weights_only, only, run

VALUES: dict[str, Any] = {
    "frozenset": frozenset({1, 2}), "range": range(3), "slice": slice(1, 4, 2), "set": {1, 2},
    "complex": 1 + 2j, "bytes": b"ab", "bytearray": bytearray(b"ab"), "Counter": collections.Counter("aab"),
    "OrderedDict": collections.OrderedDict(a=1), "torch.Size": torch.Size([3, 4]), "dtype": torch.bfloat16,
    "device": torch.device("cpu"),
}


@pytest.mark.parametrize("what", list(VALUES))
def test_a_finding_exactly_when_torch_load_refuses_the_value(save: Any, what: str) -> None:
    path = save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 1, "value": VALUES[what]})
    found = [c for c in codes(run(path)) if c.startswith(("compat.", "security."))]
    refused = not loads_weights_only(path)
    assert refused == (what in ("frozenset", "range", "slice"))
    assert found == (["compat.weights-only-values"] if refused else [])


def test_the_finding_names_the_globals_and_the_safe_globals_way_out(save: Any) -> None:
    path = save({"model_state_dict": {"w": torch.ones(2)}, "epoch": 1, "cfg": {"ids": frozenset({1}), "r": range(2)}})
    finding = only(run(path), "compat.weights-only-values")
    assert finding.severity is Severity.WARNING
    assert finding.message.startswith("the pickle holds values torch.load(weights_only=True) refuses "
                                      "(builtins.frozenset, builtins.range): since PyTorch 2.6")
    assert finding.fix == ("load it inside torch.serialization.safe_globals([frozenset, range]), or save lists "
                           "and tuples instead")
    with torch.serialization.safe_globals([frozenset, range]):
        assert torch.load(path, weights_only=True)["cfg"]["r"] == range(2)


def test_weights_only_accepts_agrees_with_torch_on_every_name_ckptkit_decodes() -> None:
    import torch._weights_only_unpickler as weights_only

    allowed = set(weights_only._get_allowed_globals())
    names = [k for k in KNOWN if not k[0].startswith("numpy")]
    names += [("torch", n) for n in (*BY_NAME, *BY_STORAGE_CLASS)] + [("collections", "Counter")]
    assert [(m, n) for m, n in names if weights_only_accepts(m, n) != (f"{m}.{n}" in allowed)] == []
