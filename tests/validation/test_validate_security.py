"""Security: pickled classes that torch.load(weights_only=True) refuses, and globals that run code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptkit.core.checkpoint import Severity
from tests.validation.helpers import codes, loads_weights_only, only, run


class RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo this must never run",))


class Scaled(torch.Tensor):
    """A tensor subclass, pickled by name."""


def test_seed_004_pickled_config_object(samples: dict[str, Path]) -> None:
    finding = only(run(samples["best_model.pt"]), "security.pickled-class")
    assert finding.severity is Severity.WARNING
    assert "ExperimentConfig: torch.load(weights_only=True) refuses it" in finding.message
    assert finding.fix.endswith("best_model.pt --fix security.pickled-class")


def test_a_plain_dict_config_has_no_security_finding(save: Any, state: dict[str, Any]) -> None:
    path = save({**state, "global_step": 5, "best_val_loss": 1.0, "config": {"max_steps": 10}})
    assert not [c for c in codes(run(path)) if c.startswith("security.")]


def test_a_global_that_would_run_code_is_an_error(save: Any) -> None:
    finding = only(run(save({"w": torch.ones(2), "evil": RunsCode()})), "security.dangerous-global")
    assert finding.severity is Severity.ERROR
    assert "would call posix.system('echo this must never run') when loaded with torch.load(weights_only=False); " \
           "ckptkit did not run it" in finding.message


def test_a_tensor_subclass_is_reported(save: Any) -> None:
    report = run(save({"w": torch.ones(2).as_subclass(Scaled)}))
    finding = only(report, "security.tensor-subclass")
    assert "pickled as subclass" in finding.message and "Scaled" in finding.message


def test_a_check_that_trips_over_damaged_values_becomes_one_error_finding(tmp_path, monkeypatch) -> None:
    import torch

    from ckptkit import validation

    def broken(ctx):
        yield from (p for p in 1.5)   # what a check meets when a float stands where a list belongs

    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, path)
    monkeypatch.delenv("CKPTKIT_DEBUG", raising=False)
    monkeypatch.setattr(validation, "CHECKS", [*validation.CHECKS, ("optimizer", broken)])
    report = validation.validate_path(path)
    malformed = [f for f in report.findings if f.code == "integrity.malformed"]
    assert len(malformed) == 1
    assert malformed[0].severity.value == "error"
    assert "the optimizer checks could not run" in malformed[0].message and "TypeError" in malformed[0].message


def test_torch_accepts_its_own_rebuilders_and_so_does_the_verdict() -> None:
    """weights_only_accepts agrees with torch's own allow-list on every name of that kind."""
    import torch._utils
    import torch._weights_only_unpickler as weights_only

    from ckptkit.storage.pickle_verdict import weights_only_accepts

    allowed = set(weights_only._get_allowed_globals())
    names = [("torch._utils", n) for n in dir(torch._utils) if n.startswith("_rebuild_")]
    names += [("torch", str(q).removeprefix("torch.")) for q in (torch.per_tensor_affine, torch.per_tensor_symmetric,
                                                                 torch.per_channel_affine, torch.per_channel_symmetric,
                                                                 torch.per_channel_affine_float_qparams)]
    names += [("torch.serialization", "_get_layout"), ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "load")]
    assert [(m, n) for m, n in names if weights_only_accepts(m, n) != (f"{m}.{n}" in allowed)] == []
    assert not weights_only_accepts("torch._utils", "_rebuild_xla_tensor")


def test_sparse_and_quantized_tensors_load_weights_only_and_get_no_pickled_class_warning(save: Any) -> None:
    sparse = save({"model_state_dict": {"s": torch.eye(3).to_sparse()}, "global_step": 1})
    quantized = save({"model_state_dict": {"q": torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)}})
    for path in (sparse, quantized):
        assert loads_weights_only(path)
        assert not [c for c in codes(run(path)) if c.startswith("security.")], path


def test_meta_tensors_hold_no_values_and_are_an_error(save: Any) -> None:
    model = torch.nn.Linear(3, 2)
    path = save({"model_state_dict": {k: v.to("meta") for k, v in model.state_dict().items()}, "epoch": 1})
    assert loads_weights_only(path)                                    # loads, but with nothing in it
    with pytest.raises(RuntimeError, match="meta"):
        model.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"])
    finding = only(run(path), "integrity.meta-tensors")
    assert finding.severity is Severity.ERROR
    assert finding.message.startswith("tensors were saved from the meta device: they have a shape but no values")
    assert "security.pickled-class" not in codes(run(path))
