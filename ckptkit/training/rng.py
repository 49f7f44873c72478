"""Capture and restore every random number generator a training step can touch.

States are stored only as types ``torch.load(weights_only=True)`` accepts: tensors, ints,
floats, None, strings, lists and dicts. Python's Mersenne Twister state (625 ints) and numpy's
(624 uint32 keys) become int64 tensors; torch's CPU and CUDA states already are byte tensors.

Layout of one rank's state::

    {"python": {"version": 3, "state": int64[625], "gauss": None | float},
     "numpy": {"kind": "MT19937", "keys": int64[624], "pos": int, "has_gauss": int,
               "cached_gaussian": float} | None,          # None when numpy is not installed
     "torch_cpu": uint8[...],
     "cuda": [uint8[...], ...]}                            # one per visible CUDA device

and of a checkpoint's ``rng_state``: ``{"world_size": W, "ranks": [state_rank0, ...]}``.
"""
from __future__ import annotations

import random
from typing import Any

import torch
import torch.distributed as dist

try:  # numpy is optional for ckptkit; a trainer that never imports it has no numpy state to keep
    import numpy as np
except ImportError:  # pragma: no cover - numpy ships with every torch install we test on
    np = None  # type: ignore[assignment]

RngState = dict[str, Any]


def capture_rng_state() -> RngState:
    """This process's generators, as plain weights-only-loadable values."""
    version, mt_state, gauss = random.getstate()
    state: RngState = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": _capture_numpy(),
        "torch_cpu": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: RngState) -> list[str]:
    """Put every generator back as captured; returns warnings for what could not be restored."""
    warnings: list[str] = []
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    torch.set_rng_state(state["torch_cpu"])
    if state.get("numpy") is not None:
        if np is None:
            warnings.append("the checkpoint has a numpy RNG state but numpy is not installed; not restored")
        else:
            _restore_numpy(state["numpy"])
    warnings.extend(_restore_cuda(list(state.get("cuda") or [])))
    return warnings


def capture_rng_states_all_ranks() -> dict[str, Any]:
    """``{"world_size": W, "ranks": [...]}``: every rank's state, gathered to every rank (collective)."""
    mine = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {"world_size": 1, "ranks": [mine]}
    gathered: list[Any] = [None] * dist.get_world_size()
    # Between our own ranks only: these objects never come from a file.
    dist.all_gather_object(gathered, _to_cpu(mine))
    return {"world_size": len(gathered), "ranks": gathered}


def restore_rng_states_all_ranks(rng_state: dict[str, Any], rank: int, world_size: int) -> list[str]:
    """Restore this rank's saved state; warns (resume not exact) if the world size changed."""
    ranks = rng_state["ranks"]
    warnings = []
    if len(ranks) != world_size:
        warnings.append(
            f"the checkpoint holds RNG states for {len(ranks)} rank(s) but this run has {world_size}: "
            f"rank {rank} takes rank {rank % len(ranks)}'s state; random streams (dropout) will differ "
            "from the original run"
        )
    return warnings + restore_rng_state(ranks[rank % len(ranks)])


def _capture_numpy() -> dict[str, Any] | None:
    if np is None:
        return None
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)   # legacy=True: ("MT19937", keys, pos, has_gauss, cached), never a dict
    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _restore_numpy(saved: dict[str, Any]) -> None:
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))


def _restore_cuda(states: list[torch.Tensor]) -> list[str]:
    if not states:
        return []
    if not torch.cuda.is_available():
        return ["the checkpoint has CUDA RNG states but CUDA is not available here; not restored"]
    count = torch.cuda.device_count()
    warnings = []
    if count != len(states):
        warnings.append(f"the checkpoint has CUDA RNG states for {len(states)} device(s), this machine has {count}")
    for device, state in enumerate(states[:count]):
        torch.cuda.set_rng_state(state, device)
    return warnings


def _to_cpu(state: RngState) -> RngState:
    return {**state, "cuda": [s.cpu() for s in state["cuda"]]}
