"""`--deep` checks small records many at a time: each finding must still land on its own tensor.

The batched pass (ckptkit/validation/deep_scan.py) reduces a whole window of records per numpy
call and the zip headers of every member at once (zip_headers.py); these tests put the one bad
record first, last, between other dtypes, behind a shared storage or a zero-size tensor, and
across window boundaries, where a batching mistake would blame a neighbour or miss it.
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.validation import deep_scan
from tests.validation.helpers import flip_bit, run, zip_member_range

NAN, INF = float("nan"), float("inf")


def many(n: int = 40, dtype: torch.dtype = torch.float32, size: int = 6) -> dict[str, torch.Tensor]:
    return {f"layer{i}.weight": torch.full((size,), 0.5, dtype=dtype) for i in range(n)}


def deep_findings(path: Path) -> list[tuple[str, str, str]]:
    return [(f.code, f.where, f.message) for f in run(path, deep=True).findings if f.code.startswith("deep.")]


def test_nan_in_the_first_and_the_last_tensor_of_a_batch_is_blamed_on_each(save: Any) -> None:
    model = many()
    model["layer0.weight"][0] = NAN
    model["layer39.weight"][5] = -INF
    found = deep_findings(save({"model_state_dict": model}))
    assert [(code, where) for code, where, _ in found] == [
        ("deep.non-finite", "ckpt.pt: model_state_dict.layer0.weight"),
        ("deep.non-finite", "ckpt.pt: model_state_dict.layer39.weight")]
    assert "found 1 NaN and 0 Inf among 6 values" in found[0][2]
    assert "found 0 NaN and 1 Inf among 6 values" in found[1][2]


def test_one_bad_tensor_among_mixed_dtypes_is_the_only_one_reported(save: Any) -> None:
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.bool]
    model = {f"t{i}": torch.ones(5, dtype=dtypes[i % len(dtypes)]) for i in range(24)}
    model["t13"][2] = INF                       # a bfloat16 between float32 and float16 neighbours
    model["t23"].view(torch.uint8)[4] = 2       # a bool that is neither 0 nor 1, last of all
    model["t10"][0] = -(2 ** 62)                # int64 values are never value-checked
    found = deep_findings(save({"model_state_dict": model}))
    assert [(code, where) for code, where, _ in found] == [("deep.non-finite", "ckpt.pt: model_state_dict.t13"),
                                                           ("deep.impossible-value", "ckpt.pt: model_state_dict.t23")]
    assert "found 0 NaN and 1 Inf among 5 values" in found[0][2]
    assert "found 1 other bytes" in found[1][2]


def test_a_shared_storage_is_reported_once_under_its_first_name(save: Any) -> None:
    model = many(10)
    shared = torch.ones(8)
    shared[7] = NAN
    model["embed.weight"], model["head.weight"] = shared, shared          # tied weights
    found = deep_findings(save({"model_state_dict": model}))
    assert len(found) == 1
    code, where, message = found[0]
    assert (code, where) == ("deep.non-finite", "ckpt.pt: model_state_dict.embed.weight")
    assert "(storage shared by 2 tensors), found 1 NaN and 0 Inf among 8 values" in message


def test_zero_size_tensors_beside_a_bad_one_are_not_blamed(save: Any) -> None:
    bad = torch.ones(3)
    bad[0] = NAN
    model = {"a.empty": torch.ones(0), "b.bad": bad, "c.empty": torch.ones(0), "d.good": torch.ones(3)}
    found = deep_findings(save({"model_state_dict": model}))
    assert [(code, where) for code, where, _ in found] == [("deep.non-finite", "ckpt.pt: model_state_dict.b.bad")]


def test_a_negative_second_moment_is_found_beside_negative_first_moments(save: Any,
                                                                          state: dict[str, Any]) -> None:
    moments = state["optimizer_state_dict"]["state"]
    for entry in moments.values():
        entry["exp_avg"].fill_(-1.0)             # first moments are signed: never a finding
    last = max(moments)
    moments[last]["exp_avg_sq"].view(-1)[-1] = -0.125
    found = deep_findings(save({**state, "epoch": 1}))
    assert [(code, where) for code, where, _ in found] == [
        ("deep.negative-second-moment", f"ckpt.pt: optimizer_state_dict.state.{last}.exp_avg_sq")]
    assert "found 1 negative values (min -0.125)" in found[0][2]


def test_a_bad_crc_in_one_member_among_many_names_that_tensor(save: Any, tmp_path: Path) -> None:
    src = save({"model_state_dict": many(60)})
    offset, length = zip_member_range(src, "/data/37")
    bad = flip_bit(src, tmp_path / "flipped.pt", offset + length - 1, bit=6)
    found = deep_findings(bad)
    assert [(code, where) for code, where, _ in found] == [("deep.crc-mismatch",
                                                            "flipped.pt: model_state_dict.layer37.weight")]
    assert "zip member archive/data/37: CRC-32 expected" in found[0][2] or "/data/37: CRC-32" in found[0][2]


def test_a_damaged_header_of_one_member_among_many_is_named(save: Any, tmp_path: Path) -> None:
    src = save({"model_state_dict": many(60)})
    offset, _ = zip_member_range(src, "/data/21")
    data = src.read_bytes()
    header = data.rfind(b"PK\x03\x04", 0, offset)
    padding = header + 30 + struct.unpack("<H", data[header + 26: header + 28])[0] + 4   # first 'Z'
    bad = flip_bit(src, tmp_path / "padding.pt", padding, bit=0)
    found = deep_findings(bad)
    assert len(found) == 1
    assert found[0][0] == "deep.zip-header-mismatch"
    assert "member archive/data/21:" in found[0][2] or "/data/21: the local header's extra field" in found[0][2]
    assert "extra field" in found[0][2]


@pytest.mark.parametrize("window", [deep_scan.WINDOW_BYTES, 256, 64])
def test_records_across_window_boundaries_keep_their_findings(save: Any, tmp_path: Path, window: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows smaller than a record (it is then streamed alone) or holding a few records."""
    monkeypatch.setattr(deep_scan, "WINDOW_BYTES", window)
    model = many(30, size=20)
    model["layer0.weight"][0] = NAN
    model["layer15.weight"][19] = INF
    model["layer29.weight"][10] = NAN
    src = save({"model_state_dict": model})
    offset, length = zip_member_range(src, "/data/7")
    bad = flip_bit(src, tmp_path / "w.pt", offset, bit=1)
    found = deep_findings(bad)
    assert [(code, where.split(": ")[1]) for code, where, _ in found] == [
        ("deep.non-finite", "model_state_dict.layer0.weight"),
        ("deep.crc-mismatch", "model_state_dict.layer7.weight"),
        ("deep.non-finite", "model_state_dict.layer15.weight"),
        ("deep.non-finite", "model_state_dict.layer29.weight")]


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(0, 12), st.sampled_from(range(len(_DTYPES)))), min_size=1, max_size=25),
       bad=st.sets(st.integers(0, 24), max_size=5), last=st.booleans())
def test_non_finite_findings_name_exactly_the_tensors_that_hold_them(tmp_path_factory: pytest.TempPathFactory,
                                                                    sizes: list[tuple[int, int]], bad: set[int],
                                                                    last: bool) -> None:
    model = {f"p{i}": torch.ones(n, dtype=_DTYPES[d]) for i, (n, d) in enumerate(sizes)}
    expected = []
    for i, (n, _) in enumerate(sizes):
        if i in bad and n:
            model[f"p{i}"][n - 1 if last else 0] = NAN
            expected.append(f"model_state_dict.p{i}")
    path = tmp_path_factory.mktemp("prop") / "ckpt.pt"
    torch.save({"model_state_dict": model}, path)
    found = deep_findings(path)
    assert [where.split(": ")[1] for _, where, _ in found] == expected
    assert all("found 1 NaN and 0 Inf" in message for _, _, message in found)


def _planned(path: Path, one_at_a_time: bool) -> tuple[list[Any], list[Any]]:
    """--deep's plan of `path` as comparable values; `one_at_a_time`: every storage located by
    its own reader (no storage claimed from the all-members pass)."""
    from ckptkit.formats import open_checkpoint
    from ckptkit.validation import ValidationContext, deep

    with pytest.MonkeyPatch.context() as patch:
        if one_at_a_time:
            patch.setattr(deep, "archive_storages", lambda storages: [])
        records, claimed, problems = deep._plan(ValidationContext(open_checkpoint(path), deep=True))
    records += [block.record(i) for block in claimed for i in range(len(block))]
    return ([(str(r.path), r.offset, r.length, r.member, r.crc, r.tensors, r.values_checked, r.non_negative,
              r.storage is None) for r in records],
            [(f.code, f.where, f.message) for f in problems])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), ties=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=3),
       optimizer=st.booleans(), extra=st.booleans(), damage=st.one_of(st.none(), st.tuples(st.integers(0, 11),
                                                                                            st.integers(0, 29))))
def test_storages_claimed_all_at_once_are_planned_as_when_located_one_by_one(
        tmp_path_factory: pytest.TempPathFactory, n: int,
        ties: list[tuple[int, int]], optimizer: bool, extra: bool, damage: tuple[int, int] | None) -> None:
    """Same records (range, member, CRC, tensors in order, which values are checked) and the same
    findings, for tied weights, views, optimizer moments, a non-model tensor and a damaged header."""
    model: dict[str, torch.Tensor] = {f"layer{i}.weight": torch.full((3 + i,), float(i)) for i in range(n)}
    for a, b in ties:
        if a < n and b < n and a != b:
            model[f"layer{b}.weight"] = model[f"layer{a}.weight"]            # tied: one storage
    base = torch.arange(8.0)
    model["view.weight"] = base[2:6]                                        # a view into another storage
    model["full.weight"] = base
    tree: dict[str, Any] = {"model_state_dict": model}
    if optimizer:
        tree["optimizer_state_dict"] = {"state": {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2),
                                                      "exp_avg_sq": torch.ones(2)} for i in range(n)},
                                        "param_groups": [{"lr": 0.1, "params": list(range(n))}]}
    if extra:
        tree["best_score"] = torch.tensor(float("inf"))                     # CRC-checked only
    path = tmp_path_factory.mktemp("plan") / "ckpt.pt"
    torch.save(tree, path)
    if damage is not None:
        member, byte = damage
        names = [name for name in zipfile.ZipFile(path).namelist() if "/data/" in name]
        with zipfile.ZipFile(path) as zf:
            header = zf.getinfo(names[member % len(names)]).header_offset
        flip_bit(path, path, header + byte, bit=3)
    claimed, one_by_one = _planned(path, False), _planned(path, True)
    # The same records and findings (the scan puts the records in file order).
    assert sorted(claimed[0], key=repr) == sorted(one_by_one[0], key=repr) and claimed[1] == one_by_one[1]
