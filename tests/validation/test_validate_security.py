"""Security: pickled classes that torch.load(weights_only=True) refuses, and globals that run code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ckptkit.core.checkpoint import Severity
from tests.validation.helpers import codes, only, run


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
