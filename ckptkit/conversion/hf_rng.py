"""The RNG state of a `--to hf` folder, laid out so that transformers' Trainer restores it.

What Trainer reads on resume (transformers 5.23, `Trainer._load_rng_state`): `rng_state.pth`
when its world size is 1, else `rng_state_{process_index}.pth` (a missing file is only logged),
loaded with `torch.load(weights_only=True)`; then, unconditionally,
`random.setstate(s["python"])` (a `(version, tuple of 625 ints, gauss)` tuple),
`np.random.set_state(s["numpy"])` (`("MT19937", keys, pos, has_gauss, cached_gaussian)`) and
`torch.random.set_rng_state(s["cpu"])` (a uint8 tensor): a file lacking one of them stops the
resume with an exception. With CUDA, `s["cuda"]` goes to `set_rng_state` (one tensor) or, when
distributed, `set_rng_state_all` (a list); failures there are logged, not raised. Trainer never
reads `training_args.bin` (it only writes it).

Sources mapped: ckptkit's trainers (`ckptkit.training.rng`: `{"world_size", "ranks"}`),
Trainer's own files (kept as they are), accelerate's `random_states_{i}.pkl`. Every value is
the saved one (the torch states byte for byte); numpy's keys become a plain list of ints, which
`np.random.set_state` accepts, so every file loads with plain `torch.load(weights_only=True)`.
Anything else is left out and named: a Trainer then resumes with fresh generators.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ckptkit.conversion.plan import not_rewritable, with_plain_arrays
from ckptkit.core.checkpoint import TensorRef
from ckptkit.formats.hf_trainer import RNG_FILE

ACCELERATE_FILE = re.compile(r"random_states_(\d+)\.pkl$")
TRAINER_KEYS = ("python", "numpy", "cpu")   # what _load_rng_state reads whatever the hardware
# accelerate's per-device keys (all from get_rng_state_all) -> Trainer's
ACCELERATE_DEVICES = (("torch_cuda_manual_seed", "cuda"), ("torch_mlu_manual_seed", "mlu"),
                      ("torch_musa_manual_seed", "musa"), ("torch_hpu_manual_seed", "hpu"))
TRAINING_ARGS_NOTE = ("training_args.bin not written: it is a pickled TrainingArguments object and ckptkit "
                      "writes no pickled classes; transformers' Trainer never reads it on resume (it keeps "
                      "the TrainingArguments it was built with)")


class Unmappable(ValueError):
    """An RNG state that Trainer could not restore; the message says why."""


@dataclass
class HFRngFiles:
    files: list[tuple[str, Any]] = field(default_factory=list)   # (member file name, tree)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def hf_rng_files(rng: Any, source: str) -> HFRngFiles:
    """`rng` (a checkpoint's RNG section, read from `source`) as Trainer's member files."""
    out = HFRngFiles()
    try:
        for name, state in _per_rank_states(rng, out.notes):
            state = with_plain_arrays(state)
            why = not_rewritable(state) or _missing_keys(state)
            if why:
                raise Unmappable(f"{name}: {why}")
            out.files.append((name, state))
    except Unmappable as exc:
        out.files.clear()
        out.dropped.append(f"rng ({source}): {exc}; no rng_state file written, so a Trainer resumed from "
                           "the folder keeps its fresh generators")
    return out


def _per_rank_states(rng: Any, notes: list[str]) -> list[tuple[str, Any]]:
    if not isinstance(rng, dict) or not rng:
        raise Unmappable(f"a {type(rng).__name__}, not a layout Trainer reads")
    if isinstance(rng.get("ranks"), list) and "world_size" in rng:
        ranks = rng["ranks"]
        distributed = len(ranks) > 1
        return [(_file_name(i, len(ranks)), from_ckptkit(s, i, distributed, notes)) for i, s in enumerate(ranks)]
    if all(isinstance(k, str) and RNG_FILE.fullmatch(k) for k in rng):     # Trainer's own, by file
        return sorted(rng.items(), key=lambda item: _rank_of(item[0]))
    if any(k in rng for k in TRAINER_KEYS):                                 # Trainer's own rng_state.pth
        return [("rng_state.pth", rng)]
    if all(isinstance(k, str) and ACCELERATE_FILE.fullmatch(k) for k in rng):
        names = sorted(rng, key=lambda n: int(ACCELERATE_FILE.fullmatch(n).group(1)))  # type: ignore[union-attr]
        return [(_file_name(i, len(names)), from_accelerate(rng[n], n, len(names) > 1, notes))
                for i, n in enumerate(names)]
    raise Unmappable(f"keys {', '.join(map(str, list(rng)[:6]))} are not a layout ckptkit can map to "
                     "Trainer's (ckptkit's trainers, Trainer's rng_state*.pth, accelerate's random_states_*.pkl)")


def from_ckptkit(state: Any, rank: int, distributed: bool, notes: list[str]) -> dict[str, Any]:
    """One rank of `ckptkit.training.rng`'s layout as Trainer's dict, values unchanged."""
    if not isinstance(state, dict) or not isinstance(state.get("python"), dict):
        raise Unmappable(f"rank {rank}'s state is not ckptkit.training.rng's layout")
    if state.get("numpy") is None:
        raise Unmappable(f"rank {rank} has no numpy state (numpy was not installed when it was saved) and "
                         "Trainer's _load_rng_state requires one")
    py, np_state, cpu = state["python"], state["numpy"], state.get("torch_cpu")
    if not (isinstance(cpu, TensorRef) and cpu.dtype.name == "uint8"):
        raise Unmappable(f"rank {rank}'s torch_cpu is not a uint8 tensor")
    out: dict[str, Any] = {
        "python": (int(py["version"]), tuple(_ints(py["state"], 625, f"rank {rank}'s python state")), py["gauss"]),
        "numpy": (str(np_state["kind"]), _ints(np_state["keys"], 624, f"rank {rank}'s numpy keys"),
                  int(np_state["pos"]), int(np_state["has_gauss"]), float(np_state["cached_gaussian"])),
        "cpu": cpu,
    }
    _put_device_states(out, "cuda", list(state.get("cuda") or []), distributed, rank, notes)
    return out


def from_accelerate(state: Any, name: str, distributed: bool, notes: list[str]) -> dict[str, Any]:
    """accelerate's `random_states_{i}.pkl` dict as Trainer's, values unchanged."""
    if not isinstance(state, dict) or not all(k in state for k in ("random_state", "numpy_random_seed",
                                                                     "torch_manual_seed")):
        raise Unmappable(f"{name} lacks accelerate's random_state / numpy_random_seed / torch_manual_seed")
    out: dict[str, Any] = {"python": state["random_state"], "numpy": state["numpy_random_seed"],
                           "cpu": state["torch_manual_seed"]}
    for key, device in ACCELERATE_DEVICES:
        if key in state:
            _put_device_states(out, device, list(state[key] or []), distributed, name, notes)
    if "xm_seed" in state:
        out["xla"] = state["xm_seed"]
    known = {"step", "random_state", "numpy_random_seed", "torch_manual_seed", "xm_seed",
             *(k for k, _ in ACCELERATE_DEVICES)}
    rest = [str(k) for k in state if k not in known]
    if rest:
        notes.append(f"rng ({name}): {', '.join(rest)} not written: Trainer restores no such generator")
    if "step" in state:
        notes.append(f"rng ({name}): accelerate's step counter ({state['step']}) is not an RNG state; "
                     "not written")
    return out


def _put_device_states(out: dict[str, Any], device: str, states: list[Any], distributed: bool,
                       rank: int | str, notes: list[str]) -> None:
    """Distributed, Trainer restores every device (set_rng_state_all); otherwise the current one."""
    if not states:
        return
    if distributed:
        out[device] = states
        return
    out[device] = states[0]
    if len(states) > 1:
        notes.append(f"rng ({rank}): {len(states)} {device} device states saved; a single-process Trainer "
                     f"restores one, so only device 0's is written")


def _ints(value: Any, count: int, what: str) -> list[int]:
    if isinstance(value, TensorRef):
        if value.dtype.is_floating:
            raise Unmappable(f"{what} is a {value.dtype.name} tensor, not integers")
        items = value.to_torch().reshape(-1).tolist()
    elif isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        items = list(value)
    else:
        raise Unmappable(f"{what} is a {type(value).__name__}, not a list of integers")
    if len(items) != count:
        raise Unmappable(f"{what} holds {len(items)} values, not {count}")
    return [int(v) for v in items]


def _missing_keys(state: Any) -> str | None:
    missing = [k for k in TRAINER_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        return (f"no {', '.join(missing)} entry, and Trainer's _load_rng_state reads all of "
                f"{', '.join(TRAINER_KEYS)} (a file without them would stop the resume)")
    return None


def _file_name(index: int, world_size: int) -> str:
    return "rng_state.pth" if world_size == 1 else f"rng_state_{index}.pth"


def _rank_of(name: str) -> int:
    match = RNG_FILE.fullmatch(name)
    return int(match.group(1)[1:]) if match and match.group(1) else -1
