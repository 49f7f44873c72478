"""Mixed precision (GradScaler state) and RNG state."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ckptkit.core.checkpoint import Severity
from tests.validation.helpers import codes, only, run

SCALER = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
          "_growth_tracker": 7}


def test_seed_001_amp_run_without_grad_scaler_state(samples: dict[str, Path]) -> None:
    finding = only(run(samples["retrieval"]), "precision.missing-scaler")
    assert finding.severity is Severity.WARNING
    assert ("training used fp16 AMP (the fashion recommender's train.sh and run_resume_training.sh "
            "pass --mixed-precision)") in finding.message
    assert "but no GradScaler state was saved" in finding.message


def test_seed_001_with_grad_scaler_state_is_fine(save: Any, state: dict[str, Any]) -> None:
    path = save({"epoch": 2, **state, "scaler_state_dict": SCALER, "recall_at_10": 0.3})
    assert not [c for c in codes(run(path)) if c.startswith("precision.")]


def test_config_saying_fp16_without_scaler(save: Any, state: dict[str, Any]) -> None:
    path = save({**state, "global_step": 2, "best_val_loss": 1.0, "config": {"fp16": True, "max_steps": 9}})
    assert "config fp16 = True" in only(run(path), "precision.missing-scaler").message


def test_a_seed_001_file_whose_config_says_fp32_or_bf16_needs_no_scaler(save: Any, state: dict[str, Any]) -> None:
    for precision in ("fp32", "bf16"):
        path = save({"epoch": 2, **state, "recall_at_10": 0.3, "config": {"precision": precision}})
        assert "precision.missing-scaler" not in codes(run(path)), precision


def test_a_seed_001_file_whose_config_says_fp16_without_scaler_is_warned(save: Any, state: dict[str, Any]) -> None:
    path = save({"epoch": 2, **state, "recall_at_10": 0.3, "config": {"precision": "fp16"}})
    assert "config precision = 'fp16'" in only(run(path), "precision.missing-scaler").message


def test_fp32_run_without_scaler_is_fine(samples: dict[str, Path]) -> None:
    assert "precision.missing-scaler" not in codes(run(samples["checkpoint_step_1000.pt"]))


def test_an_infinite_loss_scale(save: Any, state: dict[str, Any]) -> None:
    path = save({"epoch": 2, **state, "scaler_state_dict": {**SCALER, "scale": float("inf")}, "recall_at_10": 0.3})
    finding = only(run(path), "precision.bad-scale")
    assert finding.where == "ckpt.pt: scaler_state_dict.scale"
    assert "expected a finite, positive loss scale, found inf" in finding.message


def test_seed_003_mid_epoch_without_rng_is_not_exact(samples: dict[str, Path]) -> None:
    finding = only(run(samples["training_state.pth"]), "rng.mid-epoch-not-exact")
    assert finding.message.startswith("mid-epoch checkpoint (epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)) "
                                      "with no RNG state and no data-loader state: resume will not be exact")


def test_mid_epoch_with_rng_state_can_be_exact(save: Any, state: dict[str, Any]) -> None:
    path = save({"epoch": 1, "step": 5, "total_batches": 10, "best_val_f1": 0.1, **state,
                 "rng_state": {"cpu": torch.get_rng_state()}}, "training_state.pth")
    assert "rng.mid-epoch-not-exact" not in codes(run(path))


def test_a_cpu_rng_state_of_the_wrong_size(save: Any, state: dict[str, Any]) -> None:
    path = save({**state, "epoch": 1, "rng_state": {"cpu": torch.get_rng_state()[:100]}})
    finding = only(run(path), "rng.bad-size")
    assert finding.where == "ckpt.pt: rng_state.cpu"
    assert "expected a cpu generator state of 5056 bytes, found 100" in finding.message


def test_a_whole_cpu_rng_state(save: Any, state: dict[str, Any]) -> None:
    path = save({**state, "epoch": 1, "rng_state": {"cpu": torch.get_rng_state()}})
    assert "rng.bad-size" not in codes(run(path))
