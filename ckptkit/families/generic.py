"""Any other dict with a model and training state: counters read by their usual names, at the top
level or one level down (``{"trainer": {"global_step", "epoch"}}``, torchtitan-style
``{"train_state": {"step"}}``, MMEngine's ``{"meta": {"epoch", "iter"}}``). What ``epoch`` means
is not known, so it is read as epochs completed and said so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Progress, TensorRef
from ckptkit.core.errors import CkptkitError
from ckptkit.families.base import CounterValues, Family, KeyPath, Tree, whole_epochs_only
from ckptkit.views import sections as S

# MMEngine's Runner stores iterations done as {"meta": {"epoch", "iter"}} (runner.py save_checkpoint).
STEP_KEYS = ("global_step", "iter_num", "iteration", "iter", "step")
# Sub-dicts that trainers use to group their counters.
NESTED = ("trainer", "train_state", "training_state", "state", "progress", "meta", "metadata")


def counter(value: Any) -> int | None:
    """An integer counter, stored as a number or (torchtitan's DCP train_state) a one-element
    integer tensor, whose few bytes are read (as inspect reads an optimizer's step)."""
    if isinstance(value, TensorRef):
        if value.numel != 1 or not value.dtype.name.startswith(("int", "uint")):
            return None
        try:
            return S.as_int(value.scalar_value())
        except (CkptkitError, OSError, ValueError):
            return None
    return S.as_int(value)


def _counter_home(tree: Tree) -> tuple[KeyPath, dict[str, Any]]:
    """Where the counters are: the top level, or the first known sub-dict holding one."""
    if any(S.as_int(tree.get(k)) is not None for k in (*STEP_KEYS, "epoch")):
        return (), tree
    for name in NESTED:
        sub = tree.get(name)
        if isinstance(sub, dict) and any(counter(sub.get(k)) is not None for k in (*STEP_KEYS, "epoch")):
            return (name,), sub
    return (), tree


def has_nested_counters(tree: Any) -> bool:
    """A tree whose counters sit one level down (it may otherwise look like a bare state dict)."""
    return isinstance(tree, dict) and _counter_home(tree)[0] != ()


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    prefix, home = _counter_home(tree)
    where = "".join(f"{k}." for k in prefix)
    for key in STEP_KEYS:
        if counter(home.get(key)) is not None:
            p.global_step = counter(home[key])
            p.sources["global_step"] = f"key '{where}{key}' = {p.global_step}"
            break
    if counter(home.get("epoch")) is not None:
        p.epochs_completed = counter(home["epoch"])
        p.sources["epochs_completed"] = (f"key '{where}epoch' = {p.epochs_completed} (meaning not known for this "
                                         "layout: taken as epochs completed)")
    return p


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    whole_epochs_only(step, "this layout's 'epoch' is read as epochs completed and no position inside "
                            "an epoch is stored")
    prefix, _ = _counter_home(tree)
    return {(*prefix, "epoch"): epochs}


def stored(tree: Tree) -> dict[str, Any]:
    prefix, home = _counter_home(tree)
    return {".".join((*prefix, k)): counter(home[k]) for k in (*STEP_KEYS, "epoch") if counter(home.get(k)) is not None}


GENERIC = Family("generic", "dict with a model and training state", lambda t: True, progress, record,
                 (("global_step", "global_step"),),
                 counter_keys=tuple((n, k) for n in NESTED for k in (*STEP_KEYS, "epoch"))
                 + tuple((k,) for k in (*STEP_KEYS, "epoch")))
