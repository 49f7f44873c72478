"""Optimizer state against itself, the model beside it, and the scheduler."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ckptkit.core.checkpoint import Severity
from tests.validation.helpers import codes, only, run, trained_state


def recsys(save: Any, state: dict[str, Any]) -> Path:
    return save({"model_state_dict": state["model_state_dict"],
                 "optimizer_state_dict": state["optimizer_state_dict"], "epoch": 3})


def test_a_parameter_listed_in_two_groups(save: Any, state: dict[str, Any]) -> None:
    opt = state["optimizer_state_dict"]
    opt["param_groups"].append({**opt["param_groups"][0], "params": [3]})
    finding = only(run(recsys(save, state)), "optimizer.param-in-two-groups")
    assert finding.where == "ckpt.pt: optimizer_state_dict.param_groups"
    assert "parameter 3 is listed in group 0 and again in group 1" in finding.message


def test_state_entries_outside_every_group(save: Any, state: dict[str, Any]) -> None:
    opt = state["optimizer_state_dict"]
    opt["state"][9] = dict(opt["state"][0])
    finding = only(run(recsys(save, state)), "optimizer.state-without-group")
    assert "state entries 9 belong to no param group (groups list 4 parameters, state has 5 entries)" \
        in finding.message


def test_optimizer_built_for_another_model(save: Any, state: dict[str, Any]) -> None:
    state["optimizer_state_dict"] = trained_state(hidden=32)["optimizer_state_dict"]
    finding = only(run(recsys(save, state)), "optimizer.param-set-mismatch")
    assert finding.severity is Severity.ERROR
    # Four entries for four parameters: the count fits, a shape does not ("expected at most 4, found 4" misled).
    assert finding.message.startswith("optimizer state built for a different set of trainable parameters: 4 entries "
                                      "for the 4 parameters of the model in this checkpoint, but optimizer entry 0 "
                                      "(id 0, group 0) has state of shape [32, 8], which no remaining parameter of "
                                      "the model in this checkpoint has. Resuming would fail")
    assert "expected at most" not in finding.message


def test_optimizer_for_a_trainable_subset_is_fine(save: Any, state: dict[str, Any]) -> None:
    """Fine-tuning with frozen layers: entries for the last layer only, in order."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 4)
    opt = torch.optim.AdamW(head.parameters())
    head(torch.randn(2, 16)).sum().backward()
    opt.step()
    state["optimizer_state_dict"] = opt.state_dict()
    assert "optimizer.param-set-mismatch" not in codes(run(recsys(save, state)))


def test_optimizer_groups_in_another_order_than_the_model(save: Any, state: dict[str, Any]) -> None:
    """HF Trainer puts weights in group 0 and biases in group 1: order differs, shapes still match."""
    opt = state["optimizer_state_dict"]
    group = opt["param_groups"][0]
    opt["param_groups"] = [{**group, "params": [0, 2]}, {**group, "weight_decay": 0.0, "params": [1, 3]}]
    assert "optimizer.param-set-mismatch" not in codes(run(recsys(save, state)))


def test_group_lr_disagreeing_with_the_scheduler(save: Any, state: dict[str, Any]) -> None:
    state["optimizer_state_dict"]["param_groups"][0]["lr"] = 0.5
    finding = only(run(save({**state, "epoch": 3, "recall_at_10": 0.3})), "optimizer.lr-scheduler-mismatch")
    assert "group 0 lr = 0.5 but the scheduler's _last_lr[0] = 0.001" in finding.message


def test_a_nan_learning_rate(save: Any, state: dict[str, Any]) -> None:
    state["optimizer_state_dict"]["param_groups"][0]["lr"] = float("nan")
    finding = only(run(recsys(save, state)), "optimizer.bad-lr")
    assert "expected a finite, non-negative learning rate, found nan" in finding.message


def test_a_consistent_optimizer_has_no_findings(save: Any, state: dict[str, Any]) -> None:
    report = run(save({**state, "epoch": 3, "recall_at_10": 0.3}))
    assert not [c for c in codes(report) if c.startswith("optimizer.")]


def test_a_parameter_whose_name_ends_like_a_buffer_is_still_a_parameter(save: Any) -> None:
    """GPT-2: 'h.0.attn.bias' is the causal-mask buffer, 'h.0.attn.c_attn.bias' a parameter."""
    torch.manual_seed(0)
    layer = torch.nn.ModuleDict({"c_attn": torch.nn.Linear(4, 12)})
    opt = torch.optim.AdamW(layer.parameters())
    layer["c_attn"](torch.randn(2, 4)).sum().backward()
    opt.step()
    model = {f"h.0.attn.{k}": v for k, v in layer.state_dict().items()}
    model["h.0.attn.bias"] = torch.ones(1, 1, 4, 4)
    report = run(save({"model_state_dict": model, "optimizer_state_dict": opt.state_dict(), "epoch": 1}))
    assert "optimizer.param-set-mismatch" not in codes(report)
