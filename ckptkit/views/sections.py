"""Finding the parts of a training checkpoint in a decoded tree, whatever the layout calls them.

Key names are documented constants, searched in order; the first present wins and the key used
is recorded, so every message can name it.
"""
from __future__ import annotations

from typing import Any, TypeGuard

from ckptkit.core.checkpoint import HistoryEntry, TensorRef
from ckptkit.storage.safe_pickle import PickledObject

MODEL_KEYS = ("model_state_dict", "state_dict", "model", "module", "net", "network", "weights")
OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer", "optimizer_states", "optim", "opt")
SCHEDULER_KEYS = ("scheduler_state_dict", "scheduler", "lr_scheduler", "lr_schedulers", "sched")
SCALER_KEYS = ("scaler_state_dict", "scaler", "grad_scaler", "amp_scaler", "amp")
RNG_KEYS = ("rng_state", "rng_states", "random_state", "rng")
CONFIG_KEYS = ("config", "hyper_parameters", "hparams", "model_args", "args", "training_args", "cfg")
# Progress counters are reported through Progress, not as metrics.
COUNTER_KEYS = frozenset({"epoch", "global_step", "step", "iter_num", "iteration", "iter", "total_batches",
                          "steps_per_epoch", "max_steps", "micro_step"})


def flatten_state_dict(value: Any, prefix: str = "", strict: bool = False) -> dict[str, TensorRef] | None:
    """A model state dict as {dotted name: tensor}, or None when `value` is not one.

    Nested dicts of tensors flatten with '.'. Under a known model key, non-tensor leaves (e.g.
    `_extra_state`) are skipped; with `strict` (recognising a bare state dict at the top of a
    file) any non-tensor leaf means "not a state dict". At least one tensor is required.
    """
    if not isinstance(value, dict):
        return None
    if not prefix and set(map(type, value)) == {str} and set(map(type, value.values())) == {TensorRef}:
        return dict(value)   # already flat (safetensors, most state dicts): C-level checks and copy
    out: dict[str, TensorRef] = {}
    for k, v in value.items():
        name = f"{prefix}{k}"
        if isinstance(v, TensorRef):
            out[name] = v
        elif isinstance(v, dict):
            nested = flatten_state_dict(v, name + ".", strict)
            if nested is None:
                return None
            out.update(nested)
        elif strict:
            return None
    return out or None


def module_state_dict(value: Any) -> dict[str, TensorRef] | None:
    """The state dict of a whole pickled `torch.nn.Module` (`torch.save(model)`), named as
    `Module.state_dict()` names it: each module's `_parameters`, then its persistent `_buffers`,
    then its `_modules`, depth first. None when `value` is no pickled module or holds no tensor."""
    out: dict[str, TensorRef] = {}
    if not _collect_module(value, "", out):
        return None
    return out or None


def _collect_module(value: Any, prefix: str, out: dict[str, TensorRef]) -> bool:
    # A shared submodule is walked under each of its names, as state_dict() does; the unpickler's
    # limits (100 levels, 5,000,000 containers with shared parts counted where used) bound the walk.
    fields = value.fields() if isinstance(value, PickledObject) else None
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), dict) for k in ("_parameters", "_modules")):
        return False
    buffers = fields.get("_buffers")
    skip = fields.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset, list)) else ()
    for name, tensor in [*fields["_parameters"].items(),
                         *((k, v) for k, v in (buffers.items() if isinstance(buffers, dict) else ()) if k not in skip)]:
        if isinstance(tensor, TensorRef):
            out[f"{prefix}{name}"] = tensor
    for name, child in fields["_modules"].items():
        if child is not None and not _collect_module(child, f"{prefix}{name}.", out):
            return False
    return True


def is_optimizer_state(value: Any) -> TypeGuard[dict[str, Any]]:
    return (isinstance(value, dict) and isinstance(value.get("param_groups"), list)
            and isinstance(value.get("state"), dict))


def first_present(tree: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if key in tree:
            return key, tree[key]
    return None, None


def unwrap_single(value: Any) -> Any:
    """Lightning keeps optimizer/scheduler states in lists; a list of one is that one."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def config_fields(value: Any) -> Any:
    """A config as a plain value: a pickled dataclass/Namespace shows its fields."""
    if isinstance(value, PickledObject):
        return {k: config_fields(v) for k, v in value.fields().items()}
    if isinstance(value, dict):
        return {str(k): config_fields(v) for k, v in value.items()}
    return value


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_history(value: Any) -> TypeGuard[list[HistoryEntry]]:
    """A list of numbers or of per-step dicts: a loss curve, a metric history, a log."""
    return isinstance(value, list) and all(is_number(v) or isinstance(v, dict) for v in value)


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, TensorRef):
        return None
    return None


# Buffers a state dict holds between parameters; they are never handed to an optimizer.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "position_ids",
                   "inv_freq", "attn.bias", "attn.masked_bias", "_float_tensor")


def optimizer_param_order(opt: dict[str, Any]) -> list[Any]:
    """The optimizer's parameter indices in the order of its param groups (= model order)."""
    order: list[Any] = []
    for group in opt.get("param_groups") or []:
        if isinstance(group, dict):
            order.extend(group.get("params") or [])
    return order


def optimizer_param_names(opt: Any, model: dict[str, TensorRef]) -> dict[Any, str]:
    """{optimizer state index: model key}, matched by order and shape; {} when that is not sound.

    Optimizers number parameters group after group, each group in `model.parameters()` order,
    which is the state dict's order minus buffers. Within each group, a parameter with state
    takes the next unused floating, non-buffer model tensor of its state's shape; one without
    state the next unused one. Nothing is named when a parameter with state finds no tensor,
    or when the model's keys are sorted: safetensors files (and state dicts rebuilt from them)
    store keys alphabetically, which loses the parameter order ("layers.10" before "layers.2").
    """
    if not is_optimizer_state(opt) or not model or list(model) == sorted(model):
        return {}
    state = opt["state"] if isinstance(opt["state"], dict) else {}
    candidates = [(k, t) for k, t in model.items() if t.dtype.is_floating and not k.endswith(BUFFER_SUFFIXES)]
    used: set[str] = set()
    names: dict[Any, str] = {}
    for group in opt.get("param_groups") or []:
        pos = 0
        for index in (group.get("params") or []) if isinstance(group, dict) else []:
            shape = _state_shape(state.get(index))
            while pos < len(candidates) and (candidates[pos][0] in used or
                                             (shape is not None and candidates[pos][1].shape != shape)):
                pos += 1
            if pos >= len(candidates):
                if shape is not None:
                    return {}
                break
            names[index] = candidates[pos][0]
            used.add(candidates[pos][0])
            pos += 1
    return names


def _state_shape(entry: Any) -> tuple[int, ...] | None:
    """The parameter's shape as its state's moment tensors have it (not the scalar `step`)."""
    for value in state_buffers(entry).values():
        if isinstance(value, TensorRef) and (value.numel != 1 or value.shape):
            return tuple(value.shape)
    return None


# bitsandbytes optimizers (HF Trainer's paged_adamw_32bit, adamw_bnb_8bit...) keep their buffers
# as state1 (first moment), state2 (second moment), and for 8-bit state qmap1/absmax1...; since
# bitsandbytes 0.48 its state_dict() nests them under this key (so that FSDP does not gather
# them), before that they sat beside `step`.
BNB_NESTED_STATE = "__bnb_optimizer_quant_state__"


def state_buffers(entry: Any) -> dict[Any, Any]:
    """One parameter's optimizer state by name ({} when it is not a dict), with bitsandbytes'
    nested buffers lifted beside `step`, as its load_state_dict puts them back."""
    if not isinstance(entry, dict):
        return {}
    nested = entry.get(BNB_NESTED_STATE)
    if isinstance(nested, dict):
        return {**{k: v for k, v in entry.items() if k != BNB_NESTED_STATE}, **nested}
    return entry
