"""Invariants of repairs, over drawn checkpoints: idempotent, tensors untouched, read-back agrees."""
from __future__ import annotations

import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.families import FAMILIES, GENERIC, UnrepresentableProgress, family_named
from ckptkit.formats import open_checkpoint
from ckptkit.repair import fix_epoch, repair_checkpoint
from ckptkit.repair.changes import apply_changes, plan_sets

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool, torch.float64]
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def state_dicts(draw: Any) -> OrderedDict[str, torch.Tensor]:
    """Tensors of several dtypes, some of them views sharing one storage (tied weights, slices)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i in range(draw(st.integers(1, 5))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
        base = torch.randint(0, 255, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(i)).to(dtype)
        out[f"layer{i}.weight"] = base
        view = draw(st.sampled_from(["none", "same", "transpose", "slice"]))
        if view == "same":
            out[f"layer{i}.tied"] = base
        elif view == "transpose" and base.dim() == 2:
            out[f"layer{i}.t"] = base.t()
        elif view == "slice" and base.dim() >= 1 and base.shape[0] > 1:
            out[f"layer{i}.tail"] = base[1:]
    return out


def _records(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n.split("/data/", 1)[1]: zf.read(n) for n in zf.namelist() if "/data/" in n}


def _assert_same_tensors(loaded: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(original)
    for key, tensor in original.items():
        assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape
        assert torch.equal(loaded[key], tensor), key


@SETTINGS
@given(model=state_dicts(), stored=st.tuples(st.integers(1, 50), st.integers(0, 99)),
       target=st.tuples(st.integers(1, 50), st.integers(0, 99)), total=st.integers(100, 500))
def test_fix_epoch_is_idempotent_and_never_touches_a_tensor(model: Any, stored: Any, target: Any, total: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training_state.pth"
        torch.save({"epoch": stored[0], "step": stored[1], "total_batches": total, "best_val_f1": 0.5,
                    "model_state_dict": model}, path)
        records = _records(path)
        epoch, step = target[0], target[1] or None
        first = fix_epoch(path, epoch, step=step, keep_backup=False)
        after_first = path.read_bytes()
        second = fix_epoch(path, epoch, step=step, keep_backup=False)
        assert not second.written and second.plan.changes == []
        assert path.read_bytes() == after_first
        loaded = torch.load(path, weights_only=True)
        _assert_same_tensors(loaded["model_state_dict"], model)
        assert _records(path) == records
        progress = open_checkpoint(path).progress
        expected = (epoch, 0) if step is None else (epoch - 1, step)
        assert (progress.epochs_completed, progress.step_in_epoch) == expected
        assert first.written == (first.plan.changes != [])


@SETTINGS
@given(model=state_dicts(), prefix=st.sampled_from(["module.", "_orig_mod.", "module._orig_mod."]))
def test_stripping_prefixes_keeps_every_tensor_and_record_byte(model: Any, prefix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ddp.pth"
        torch.save({"model_state_dict": OrderedDict((prefix + k, v) for k, v in model.items()), "epoch": 1}, path)
        records = _records(path)
        repair_checkpoint(path, ["compat.module-prefix"], keep_backup=False)
        _assert_same_tensors(torch.load(path, weights_only=True)["model_state_dict"], model)
        assert _records(path) == records


class DrawnConfig:
    """A config class as trainers pickle them (instance __dict__ as BUILD state)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)


config_values = st.recursive(
    st.one_of(st.integers(-(2 ** 40), 2 ** 40), st.floats(allow_nan=False), st.text(max_size=8), st.booleans(),
              st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)


@SETTINGS
@given(model=state_dicts(), fields=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), config_values,
                                                   max_size=6))
def test_a_pickled_config_becomes_its_fields_and_every_tensor_stays(model: Any, fields: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best_model.pt"
        torch.save({"model_state_dict": model, "global_step": 5, "best_val_loss": 0.5,
                    "config": DrawnConfig(fields)}, path)
        records = _records(path)
        result = repair_checkpoint(path, ["security.pickled-class"], keep_backup=False)
        assert result.written
        loaded = torch.load(path, weights_only=True)
        assert loaded["config"] == fields
        _assert_same_tensors(loaded["model_state_dict"], model)
        assert _records(path) == records


TREES = {
    "recsys": {"model_state_dict": {}, "optimizer_state_dict": {}, "epoch": 4},
    "retrieval": {"epoch": 4, "model_state_dict": {}, "recall_at_10": 0.3, "train_losses": [1.0]},
    "experiment": {"global_step": 10, "epoch": 0, "best_val_loss": 0.4},
    "experiment-with-position": {"global_step": 10, "epoch": 0, "best_val_loss": 0.4,
                                 "data_position": {"epoch": 0, "batch_in_epoch": 3, "steps_per_epoch": 10**6,
                                                   "micro_step": 1}},
    "training-state": {"epoch": 2, "step": 5, "total_batches": 10**6, "best_val_f1": 0.1},
    "lightning": {"epoch": 1, "global_step": 6, "pytorch-lightning_version": "2.6.6", "loops": {"fit_loop": {
        "epoch_loop.batch_progress": {"current": {"processed": 3}, "is_last_batch": True}}}},
    "lightning-without-loops": {"epoch": 1, "global_step": 6, "pytorch-lightning_version": "2.6.6"},
    "timm": {"epoch": 3, "arch": "resnet50", "version": 2, "state_dict": {}},
    "timm-version-1": {"epoch": 3, "arch": "resnet50", "version": 1, "state_dict": {}},
    "vision-refs": {"model": {}, "optimizer": {}, "epoch": 3, "args": {"start_epoch": 0, "epochs": 90}},
    "ultralytics": {"epoch": 3, "model": None, "ema": None, "updates": 40, "train_args": {"epochs": 10**7}},
    "generic": {"epoch": 3, "weights": {}},
}


@pytest.mark.parametrize("layout", list(TREES))
@settings(max_examples=40, deadline=None)
@given(epochs=st.integers(0, 10**6), within=st.integers(0, 10**5))
def test_every_family_reads_back_exactly_what_its_record_function_stores(layout: str, epochs: int, within: int) -> None:
    import copy

    tree = copy.deepcopy(TREES[layout])
    family = next(f for f in [*FAMILIES, GENERIC] if f.matches(tree))
    assert family.record is not None
    try:
        values = family.record(tree, epochs, within)
    except UnrepresentableProgress:
        # only positions inside an epoch may be unrepresentable, and no epoch done where -1 means
        # a finished run (Ultralytics)
        assert within > 0 or (layout == "ultralytics" and epochs == 0)
        return
    apply_changes(tree, plan_sets("f", tree, values))
    progress = family.progress(tree, Path("f.pt"))
    assert (progress.epochs_completed, progress.step_in_epoch or 0) == (epochs, within)
    assert family_named(family.name) is family
