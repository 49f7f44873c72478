"""Invariants of diff, property-based: a checkpoint equals itself in every format, and a random
edit (one value, one key added or removed, one dtype, a wrapper prefix) is reported exactly."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ckptkit.diffing import CheckpointDiff, diff_paths
from ckptkit.diffing.report import CHANGED, ONLY_A, ONLY_B
from ckptkit.views.keys import KNOWN_PREFIXES, strip_known_prefix

FORMATS = ("torch-zip", "torch-legacy", "safetensors")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z]{1,5}(\.[a-z0-9]{1,3}){0,2}", fullmatch=True).filter(
    lambda n: strip_known_prefix(n) == n and not n.startswith(("model", "module")))


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    keys = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    out = {}
    for key in keys:
        shape = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        seed = draw(st.integers(0, 2**16))
        gen = torch.Generator().manual_seed(seed)
        if dtype == torch.bool:
            out[key] = torch.randint(0, 2, shape, generator=gen).bool()
        elif dtype.is_floating_point:
            out[key] = torch.randn(shape, generator=gen).to(dtype)
        else:
            out[key] = torch.randint(-100, 100, shape, generator=gen).to(dtype)
    return out


def save(state: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "torch-zip")
    return path


def diff_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], fmt: str) -> CheckpointDiff:
    with tempfile.TemporaryDirectory() as tmp:
        result = diff_paths(save(a, Path(tmp) / "a", fmt), save(b, Path(tmp) / "b", fmt))
    return result


@SETTINGS
@given(state=state_dicts(), fmt=st.sampled_from(FORMATS))
def test_a_checkpoint_written_twice_has_no_differences_in_any_format(state: dict[str, torch.Tensor],
                                                                      fmt: str) -> None:
    result = diff_states(state, {k: v.clone() for k, v in state.items()}, fmt)
    assert result.equal
    assert result.changes == [] and result.renamed == []
    assert len(result.tensors) == len(state)


@SETTINGS
@given(state=state_dicts(), fmt=st.sampled_from(FORMATS), data=st.data())
def test_one_changed_element_is_the_only_difference(state: dict[str, torch.Tensor], fmt: str,
                                                    data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(state)))
    edited = {k: v.clone() for k, v in state.items()}
    flat = edited[key].view(-1)
    index = data.draw(st.integers(0, flat.numel() - 1))
    flat[index] = (not flat[index].item()) if flat.dtype == torch.bool else (5 if flat[index].item() != 5 else 7)
    result = diff_states(state, edited, fmt)
    [changed] = result.differing_tensors
    assert (changed.name, changed.status) == (key, CHANGED)
    assert changed.values is not None and changed.values.changed_elements == 1
    assert result.changes == [] and result.difference_count == 1


@SETTINGS
@given(state=state_dicts(), fmt=st.sampled_from(FORMATS), data=st.data())
def test_an_added_or_removed_key_is_the_only_difference(state: dict[str, torch.Tensor], fmt: str,
                                                        data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="remove") and len(state) > 1:
        key = data.draw(st.sampled_from(sorted(state)))
        edited = {k: v for k, v in state.items() if k != key}
        expected = ONLY_A
    else:
        key = data.draw(names.filter(lambda n: n not in state))
        edited = {**state, key: torch.ones(2)}
        expected = ONLY_B
    result = diff_states(state, edited, fmt)
    assert [(t.name, t.status) for t in result.differing_tensors] == [(key, expected)]
    assert result.difference_count == 1


@SETTINGS
@given(state=state_dicts(), fmt=st.sampled_from(FORMATS), data=st.data())
def test_a_changed_dtype_is_reported_on_that_tensor_only(state: dict[str, torch.Tensor], fmt: str,
                                                         data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(state)))
    new_dtype = data.draw(st.sampled_from([d for d in DTYPES if d != state[key].dtype]))
    edited = {**state, key: state[key].to(new_dtype)}
    result = diff_states(state, edited, fmt)
    [changed] = result.differing_tensors
    assert changed.name == key and changed.dtype_changed
    assert (changed.dtype_a, changed.dtype_b) == (str(state[key].dtype)[6:], str(new_dtype)[6:])
    assert result.difference_count == 1


@SETTINGS
@given(state=state_dicts(), fmt=st.sampled_from(FORMATS), prefix=st.sampled_from(KNOWN_PREFIXES),
       data=st.data())
def test_keys_renamed_with_a_wrapper_prefix_are_renames_and_nothing_else(
        state: dict[str, torch.Tensor], fmt: str, prefix: str, data: st.DataObject) -> None:
    renamed = set(data.draw(st.lists(st.sampled_from(sorted(state)), min_size=1, unique=True)))
    edited = {(prefix + k if k in renamed else k): v for k, v in state.items()}
    result = diff_states(state, edited, fmt)
    assert sorted((r.a, r.b) for r in result.renamed) == sorted((k, prefix + k) for k in renamed)
    assert sorted(t.name for t in result.differing_tensors) == sorted(renamed)
    assert all(t.renamed and t.values is not None and t.values.identical_bytes for t in result.differing_tensors)
    assert result.changes == []
