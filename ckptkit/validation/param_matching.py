"""Pairing an optimizer's state entries with a model's parameters.

An optimizer `state_dict()` knows its parameters only by index (the order of
`model.parameters()` at construction time, group after group). The model state dict lists
parameters in the same order, mixed with buffers. So the one honest way to name an optimizer
entry is by order and shape; these helpers do that pairing once, for the optimizer checks and
for `--against`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

from ckptkit.core.checkpoint import TensorRef
from ckptkit.views.sections import state_buffers

# Buffers that live in a state dict but are never handed to an optimizer.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "position_ids",
                   "inv_freq", "attn.bias", "attn.masked_bias", "_float_tensor")
_BUFFER_NAMES = frozenset(BUFFER_SUFFIXES)
_DOTTED_BUFFER_SUFFIXES = tuple("." + s for s in BUFFER_SUFFIXES)
MOMENT_KEYS = ("exp_avg", "momentum_buffer", "square_avg", "sum", "exp_avg_sq", "state1")    # state1: bitsandbytes


class OptimizerParam(NamedTuple):
    """(A tuple: a mixture-of-experts optimizer lists 20,000 of them, and a frozen dataclass
    costs several times as much to make.)"""

    index: Any                       # the id the optimizer stored (int, or a name for named optimizers)
    group: int
    shape: tuple[int, ...] | None    # from its state tensors; None when it has no state yet


def optimizer_params(opt: dict[str, Any]) -> list[OptimizerParam]:
    """The optimizer's parameters in construction order, with the shape its state implies."""
    state = opt.get("state")
    if not isinstance(state, dict):
        state = {}
    out: list[OptimizerParam] = []
    for g, group in enumerate(opt.get("param_groups") or []):
        if not isinstance(group, dict):
            continue
        params = group.get("params")
        for index in params if isinstance(params, (list, tuple)) else []:
            shape = state_shape(state.get(index)) if isinstance(index, (int, str)) else None
            out.append(OptimizerParam(index, g, shape))
    return out


def state_shape(entry: Any) -> tuple[int, ...] | None:
    buffers = state_buffers(entry)
    for key in MOMENT_KEYS:
        t = buffers.get(key)
        if isinstance(t, TensorRef):
            return t.shape
    return None


def model_parameters(model: dict[str, TensorRef]) -> list[tuple[str, TensorRef]]:
    """Entries of a model state dict that can be parameters: floating, and not a known buffer."""
    return [(name, t) for name, t in model.items() if t.dtype.is_floating and not is_buffer_name(name)]


def is_buffer_name(name: str) -> bool:
    """Whole trailing name components only: GPT-2's mask buffer is 'attn.bias', its c_attn.bias is a parameter."""
    # One C call per name: a model of 100,000 tensors asks this 100,000 times.
    return name in _BUFFER_NAMES or name.endswith(_DOTTED_BUFFER_SUFFIXES)


@dataclass
class Pairing:
    """How an optimizer's parameters line up with a model's.

    Matching is by shape as a multiset, not by position: trainers group parameters (HF puts
    weights with decay in group 0 and biases/norms in group 1), so the optimizer's order is the
    model's order only within a group. Tied weights appear twice in a state dict but once in
    the optimizer; frozen parameters not at all.
    """

    optimizer_count: int
    model_count: int
    unmatched: tuple[int, OptimizerParam] | None     # first optimizer entry no parameter can own

    @property
    def agrees(self) -> bool:
        return self.unmatched is None and self.optimizer_count <= self.model_count

    @property
    def exact(self) -> bool:
        return self.agrees and self.optimizer_count == self.model_count


def pair(params: list[OptimizerParam], model: dict[str, TensorRef]) -> Pairing:
    """How the optimizer's parameters (`optimizer_params`) line up with the model's."""
    parameters = model_parameters(model)
    available = Counter(t.shape for _, t in parameters)
    unmatched = None
    for i, p in enumerate(params):
        if p.shape is None:
            continue
        if available[p.shape] > 0:
            available[p.shape] -= 1
        elif unmatched is None:
            unmatched = (i, p)
    return Pairing(len(params), len(parameters), unmatched)


def describe_shape(shape: tuple[int, ...] | None) -> str:
    return "no state" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
