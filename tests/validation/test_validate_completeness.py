"""Completeness: the parts a resume needs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Severity
from tests.validation.helpers import codes, only, run


def test_model_and_counters_without_optimizer_state(save: Any, state: dict[str, Any]) -> None:
    path = save({"epoch": 3, "model_state_dict": state["model_state_dict"], "recall_at_10": 0.3})
    finding = only(run(path), "completeness.missing-optimizer")
    assert finding.severity is Severity.WARNING
    assert "expected optimizer state beside the counters (epoch 3 complete), found none" in finding.message


def test_weights_only_file_is_information_not_a_problem(save: Any, state: dict[str, Any]) -> None:
    path = save({"model_state_dict": state["model_state_dict"], "loss": 0.5, "recall_at_10": 0.3})
    report = run(path)
    finding = only(report, "completeness.weights-only")
    assert finding.severity is Severity.INFO
    assert "resuming training from it would restart at epoch 0 with a fresh optimizer" in finding.message
    assert "completeness.missing-optimizer" not in codes(report)


def test_seed_001_without_scheduler_state_is_noted(save: Any, state: dict[str, Any]) -> None:
    del state["scheduler_state_dict"]
    path = save({"epoch": 10, **state, "recall_at_10": 0.3456}, "optimized_model_epoch_10_recall_0.3456.pt")
    finding = only(run(path), "completeness.missing-scheduler")
    assert "no scheduler state saved" in finding.message
    assert "restarts its schedule (warmup, decay) from the beginning" in finding.message


def test_seed_001_with_scheduler_state_is_complete(samples: dict[str, Path]) -> None:
    assert not [c for c in codes(run(samples["retrieval"])) if c.startswith("completeness.")]


def test_training_state_without_weights_beside_it(save: Any, state: dict[str, Any]) -> None:
    path = save({"epoch": 1, "step": 0, "total_batches": 10, "best_val_f1": 0.1,
                 "optimizer_state_dict": state["optimizer_state_dict"]}, "training_state.pth")
    finding = only(run(path), "completeness.missing-weights")
    assert finding.severity is Severity.ERROR
    assert "(model.safetensors or pytorch_model.bin in" in finding.message


def test_seed_003_training_state_with_weights_beside_it(samples: dict[str, Path]) -> None:
    assert "completeness.missing-weights" not in codes(run(samples["training_state.pth"]))


def test_optimizer_and_epoch_without_any_model(save: Any, state: dict[str, Any]) -> None:
    path = save({"optimizer_state_dict": state["optimizer_state_dict"], "epoch": 4, "iteration": 80})
    finding = only(run(path), "completeness.missing-model")
    assert "expected model weights (e.g. 'model_state_dict') beside the optimizer state" in finding.message
