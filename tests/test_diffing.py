"""diff as a library: model values, structure, optimizer, scheduler and metadata (ckptkit/diffing/)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ckptkit.diffing import DiffOptions, diff_paths
from ckptkit.diffing import values as V
from ckptkit.diffing.report import CHANGED, EQUAL, IDENTICAL, ONLY_A, ONLY_B, SHAPE_CHANGED
from ckptkit.formats import open_checkpoint
from ckptkit.views.sections import optimizer_param_names


def _training_state(seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    sched.step()
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict(), "epoch": 4}


def _save(state: Any, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_a_checkpoint_saved_twice_is_equal_with_every_tensor_identical(tmp_path: Path) -> None:
    a = _save(_training_state(), tmp_path / "a.pth")
    b = _save(_training_state(), tmp_path / "b.pth")
    result = diff_paths(a, b)
    assert result.equal and result.difference_count == 0
    assert {t.status for t in result.tensors} == {IDENTICAL}
    assert len([t for t in result.tensors if t.section == "model"]) == 4
    assert len([t for t in result.tensors if t.section == "optimizer"]) == 12


def test_one_changed_weight_is_reported_with_its_exact_statistics(tmp_path: Path) -> None:
    state = _training_state()
    a = _save(state, tmp_path / "a.pth")
    old = state["model_state_dict"]["2.weight"].clone()
    state["model_state_dict"]["2.weight"][1, 3] += 0.5
    b = _save(state, tmp_path / "b.pth")
    result = diff_paths(a, b, DiffOptions(sections=("model",)))
    [changed] = result.differing_tensors
    assert (changed.name, changed.status) == ("2.weight", CHANGED)
    assert changed.values is not None
    assert changed.values.changed_elements == 1 and changed.values.numel == 64
    delta = (state["model_state_dict"]["2.weight"].double() - old.double())
    assert changed.values.max_abs_diff == pytest.approx(delta.abs().max().item())
    assert changed.values.rel_l2_diff == pytest.approx((delta.norm() / old.double().norm()).item())
    assert [t.name for t in result.top] == ["2.weight"]
    assert [(g.group, g.differing) for g in result.groups] == [("0", 0), ("2", 1)]


def test_a_change_within_atol_counts_as_equal_but_not_identical(tmp_path: Path) -> None:
    state = _training_state()
    a = _save(state, tmp_path / "a.pth")
    state["model_state_dict"]["0.bias"][0] += 1e-4
    b = _save(state, tmp_path / "b.pth")
    assert not diff_paths(a, b, DiffOptions(sections=("model",))).equal
    result = diff_paths(a, b, DiffOptions(atol=1e-3, sections=("model",)))
    assert result.equal
    assert [t.status for t in result.tensors if t.name == "0.bias"] == [EQUAL]


def test_bf16_copy_reports_the_dtype_change_and_the_rounding_error(tmp_path: Path) -> None:
    weights = {"w": torch.randn(300, 7), "b": torch.tensor([1.0, 2.0, 3.0])}
    a = _save(weights, tmp_path / "a.pth")
    b = tmp_path / "b.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(b))
    result = diff_paths(a, b)
    by_name = {t.name: t for t in result.tensors}
    assert by_name["w"].dtype_changed and (by_name["w"].dtype_a, by_name["w"].dtype_b) == ("float32", "bfloat16")
    expected = (weights["w"] - weights["w"].to(torch.bfloat16).float()).abs().max().item()
    assert by_name["w"].values is not None and by_name["w"].values.max_abs_diff == pytest.approx(expected)
    # 1, 2, 3 are exact in bf16: values equal after upcasting, only the dtype changed.
    assert by_name["b"].status == EQUAL and by_name["b"].differs


def test_a_pth_and_its_safetensors_conversion_have_equal_models(tmp_path: Path) -> None:
    state = _training_state()
    a = _save(state, tmp_path / "a.pth")
    b = tmp_path / "model.safetensors"
    save_file(state["model_state_dict"], str(b))
    assert diff_paths(a, b, DiffOptions(sections=("model",))).equal
    whole = diff_paths(a, b)
    assert [(c.section, c.key, c.kind) for c in whole.changes if c.section != "meta"] == [
        ("optimizer", "(section)", ONLY_A), ("scheduler", "(section)", ONLY_A)]


def test_a_ddp_prefix_is_reported_as_renames_with_identical_values(tmp_path: Path) -> None:
    state = _training_state()["model_state_dict"]
    a = _save(state, tmp_path / "a.pth")
    b = _save({f"module.{k}": v for k, v in state.items()}, tmp_path / "b.pth")
    result = diff_paths(a, b)
    assert [(r.a, r.b) for r in result.renamed][:1] == [("0.weight", "module.0.weight")]
    assert len(result.renamed) == 4 and result.difference_count == 4
    assert all(t.status == IDENTICAL and t.renamed for t in result.tensors)


def test_keys_only_on_one_side_and_reshaped_tensors_are_listed(tmp_path: Path) -> None:
    a = _save({"x": torch.zeros(3), "gone": torch.ones(2), "r": torch.ones(2, 3)}, tmp_path / "a.pth")
    b = _save({"x": torch.zeros(3), "new": torch.ones(1), "r": torch.ones(3, 2)}, tmp_path / "b.pth")
    statuses = {t.name: t.status for t in diff_paths(a, b).tensors}
    assert statuses == {"x": IDENTICAL, "gone": ONLY_A, "new": ONLY_B, "r": SHAPE_CHANGED}


def test_optimizer_state_is_named_after_the_parameter_it_belongs_to(tmp_path: Path) -> None:
    state = _training_state()
    a = _save(state, tmp_path / "a.pth")
    state["optimizer_state_dict"]["state"][2]["exp_avg"][0, 0] += 1.0
    b = _save(state, tmp_path / "b.pth")
    [changed] = diff_paths(a, b).differing_tensors
    assert (changed.section, changed.name, changed.label) == ("optimizer", "state.2.exp_avg", "2.weight")


def test_param_names_skip_batchnorm_buffers_by_name(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    ckpt = open_checkpoint(_save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "bn.pt"))
    assert optimizer_param_names(ckpt.optimizer, ckpt.model) == {
        0: "0.weight", 1: "0.bias", 2: "1.weight", 3: "1.bias", 4: "2.weight", 5: "2.bias"}


def test_learning_rate_and_scheduler_changes_are_reported_once_each(tmp_path: Path) -> None:
    state = _training_state()
    a = _save(state, tmp_path / "a.pth")
    state["optimizer_state_dict"]["param_groups"][0]["lr"] = 5e-4
    state["scheduler_state_dict"]["last_epoch"] = 7
    state["epoch"] = 5
    b = _save(state, tmp_path / "b.pth")
    changes = {(c.section, c.key): (c.a, c.b) for c in diff_paths(a, b).changes}
    assert changes == {("meta", "learning_rates"): ([1e-3], [5e-4]), ("scheduler", "last_epoch"): (1, 7),
                       ("meta", "progress.epochs_completed"): (4, 5)}


def test_histories_report_their_lengths_and_where_they_diverge(tmp_path: Path) -> None:
    base = {"model_state_dict": {"w": torch.ones(2)}, "global_step": 10, "best_val_loss": 0.5}
    a = _save({**base, "train_history": [1.0, 0.9, 0.8]}, tmp_path / "a.pt")
    b = _save({**base, "train_history": [1.0, 0.7, 0.8, 0.6]}, tmp_path / "b.pt")
    [change] = diff_paths(a, b).changes
    assert change.key == "histories.train_history"
    assert change.note == ("length 3 -> 4, first differs at index 1 (0.9 vs 0.7); "
                           "1 of 3 shared entries differ")


def test_nan_in_the_same_place_is_equal_and_nan_against_a_number_is_infinitely_far(tmp_path: Path) -> None:
    a = _save({"w": torch.tensor([1.0, float("nan"), 3.0])}, tmp_path / "a.pth")
    b = _save({"w": torch.tensor([1.0, float("nan"), 3.0])}, tmp_path / "b.pth")
    c = _save({"w": torch.tensor([1.0, 2.0, float("nan")])}, tmp_path / "c.pth")
    assert diff_paths(a, b).equal
    [t] = diff_paths(a, c).tensors
    assert t.values is not None
    assert t.values.changed_elements == 2 and math.isinf(t.values.max_abs_diff)


def test_values_are_streamed_in_chunks_with_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    x = torch.randn(1000, 33)
    y = x.clone()
    y[::7, 5] += torch.linspace(0.1, 2.0, len(y[::7, 5]))
    a, b = _save({"x": x}, tmp_path / "a.pth"), _save({"x": y}, tmp_path / "b.pth")
    whole = diff_paths(a, b).tensors[0].values
    monkeypatch.setattr(V, "DECODE_CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr(V, "COMPARE_CHUNK_BYTES", 4096)
    chunked = diff_paths(a, b).tensors[0].values
    assert whole is not None and chunked is not None
    assert chunked.changed_elements == whole.changed_elements == len(y[::7, 5])
    assert chunked.max_abs_diff == pytest.approx(2.0, rel=1e-6)
    assert chunked.rel_l2_diff == pytest.approx(whole.rel_l2_diff)


def test_a_strided_view_is_compared_in_its_logical_element_order(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    a = _save({"t": base.t()}, tmp_path / "a.pth")           # saved as a transposed view
    b = _save({"t": base.t().contiguous()}, tmp_path / "b.pth")
    [t] = diff_paths(a, b).tensors
    assert t.status == EQUAL and t.values is not None and t.values.max_abs_diff == 0.0


REAL = Path(__file__).parent / "fixtures" / "real"


def test_real_hf_safetensors_and_its_pytorch_model_bin_twin_are_equal() -> None:
    result = diff_paths(REAL / "hf_full/checkpoint-4/model.safetensors",
                        REAL / "hf_full_bin/checkpoint-4/pytorch_model.bin")
    assert result.equal
    assert len(result.tensors) == 28 and {t.status for t in result.tensors} == {IDENTICAL}


def test_real_trainer_optimizer_from_step_4_to_8_moves_every_moment_and_step() -> None:
    result = diff_paths(REAL / "hf_full/checkpoint-4/optimizer.pt", REAL / "hf_full/checkpoint-8/optimizer.pt")
    steps = [(t.value_a, t.value_b) for t in result.tensors if t.name.endswith(".step")]
    assert steps == [(4.0, 8.0)] * 28
    assert len(result.differing_tensors) == 84
    assert [(c.key, c.a, c.b) for c in result.changes] == [
        ("learning_rates", [0.00075, 0.00075], [0.00025, 0.00025])]


def test_real_lightning_epoch_checkpoints_differ_in_progress_in_one_language() -> None:
    result = diff_paths(REAL / "lightning/epoch=0-step=3.ckpt", REAL / "lightning/epoch=1-step=6.ckpt")
    progress = {c.key: (c.a, c.b) for c in result.changes if c.key.startswith("progress.")}
    assert progress == {"progress.epochs_completed": (1, 2), "progress.global_step": (3, 6)}
    assert {t.section for t in result.differing_tensors} == {"model", "optimizer"}


def test_param_names_follow_each_group_for_decay_and_no_decay_splits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    decay = [p for n, p in model.named_parameters() if n in ("0.weight", "2.weight")]
    rest = [p for n, p in model.named_parameters() if n not in ("0.weight", "2.weight")]
    opt = torch.optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}])
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    ckpt = open_checkpoint(_save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "g.pt"))
    assert optimizer_param_names(ckpt.optimizer, ckpt.model) == {
        0: "0.weight", 1: "2.weight", 2: "0.bias", 3: "1.weight", 4: "1.bias", 5: "2.bias"}


def test_param_names_are_not_guessed_from_alphabetically_sorted_keys() -> None:
    ckpt = open_checkpoint(REAL / "hf_full/checkpoint-4/optimizer.pt")
    model = open_checkpoint(REAL / "hf_full/checkpoint-4/model.safetensors").model
    assert list(model) == sorted(model)
    assert optimizer_param_names(ckpt.optimizer, model) == {}


def test_int64_values_beyond_float64_precision_still_count_as_changed(tmp_path: Path) -> None:
    big = 2**60
    a = _save({"ids": torch.tensor([big, 7])}, tmp_path / "a.pt")
    b = _save({"ids": torch.tensor([big + 1, 7])}, tmp_path / "b.pt")
    [t] = diff_paths(a, b).tensors
    assert t.status == CHANGED and t.values is not None and t.values.changed_elements == 1


def test_a_step_stored_as_a_number_against_a_tensor_compares_the_values(tmp_path: Path) -> None:
    a = _save({"epoch": 1, "counters": {"step": 4.0}}, tmp_path / "a.pt")
    b = _save({"epoch": 1, "counters": {"step": torch.tensor(4.0)}}, tmp_path / "b.pt")
    [change] = diff_paths(a, b).changes
    assert (change.key, change.a, change.b, change.note) == ("extra.counters.step", 4.0, 4.0, "stored as a tensor in B")


def test_real_hf_trainer_folders_step_4_to_8_report_progress_scheduler_and_history() -> None:
    result = diff_paths(REAL / "hf_full/checkpoint-4", REAL / "hf_full/checkpoint-8")
    changes = {c.key: (c.a, c.b) for c in result.changes}
    assert changes["progress.global_step"] == (4, 8)
    assert changes["last_epoch"] == (4, 8)
    assert changes["learning_rates"] == ([0.00075, 0.00075], [0.00025, 0.00025])
    assert [c.note for c in result.changes if c.key == "histories.log_history"] == [
        "length 3 -> 6, the shorter is the start of the longer"]
    assert len([t for t in result.differing_tensors if t.section == "model"]) == 28


def test_real_hf_folder_against_its_pytorch_model_bin_has_equal_models() -> None:
    folder_vs_bin = diff_paths(REAL / "hf_full/checkpoint-4", REAL / "hf_full_bin/checkpoint-4/pytorch_model.bin",
                               DiffOptions(sections=("model",)))
    assert folder_vs_bin.equal and len(folder_vs_bin.tensors) == 28
    assert diff_paths(REAL / "hf_full/checkpoint-4", REAL / "hf_full_bin/checkpoint-4").equal


@pytest.mark.parametrize("fixture", ["hf_full/checkpoint-4", "hf_lora/checkpoint-8", "hf_sharded", "hf_lora_bin",
                                     "accelerate", "dcp", "save_pretrained_training_state/last_checkpoint",
                                     "lightning/last.ckpt"])
def test_every_real_checkpoint_equals_itself(fixture: str) -> None:
    result = diff_paths(REAL / fixture, REAL / fixture)
    assert result.equal and result.changes == []
    assert result.tensors and all(t.status == IDENTICAL for t in result.tensors)


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from([0, 1, 7, 8, 9, V._SMALL_CHUNK - 1, V._SMALL_CHUNK, V._SMALL_CHUNK + 1,
                             V._SMALL_CHUNK + 13, 3 * V._SMALL_CHUNK]),
       where=st.floats(0, 1, exclude_max=True), flip=st.booleans())
def test_chunks_small_and_large_are_equal_exactly_when_every_byte_is(size: int, where: float, flip: bool) -> None:
    """Chunks up to _SMALL_CHUNK are compared as bytes, larger ones eight bytes at a time with
    numpy plus a tail: a single flipped bit anywhere, tail included, makes them differ."""
    a = bytes((i * 37 + 11) % 256 for i in range(size))
    b = bytearray(a)
    if flip and size:
        b[int(where * size)] ^= 0x10
    assert V._chunk_equal(memoryview(a), memoryview(bytes(b))) is (not (flip and size))
    if size:
        assert V._chunk_equal(memoryview(a), memoryview(a[:-1])) is False


def test_a_slice_of_a_larger_storage_is_compared_on_its_own_bytes_only(tmp_path: Path) -> None:
    """A small contiguous tensor that starts inside its storage (base[2:6]): bytes of the storage
    outside its span may differ, a byte inside it may not."""
    base = torch.arange(8.0)
    other = base.clone()
    other[7] = 99.0                                   # outside the slice's span
    a = _save({"s": base[2:6], "keep": base}, tmp_path / "a.pth")
    b = _save({"s": other[2:6], "keep": other}, tmp_path / "b.pth")
    result = diff_paths(a, b)
    by_key = {t.name: t for t in result.tensors}
    assert by_key["s"].status == IDENTICAL and by_key["keep"].status == CHANGED
    inside = base.clone()
    inside[3] = -1.0                                  # inside the slice's span
    c = _save({"s": inside[2:6], "keep": inside}, tmp_path / "c.pth")
    changed = {t.name: t for t in diff_paths(a, c).tensors}["s"]
    assert changed.status == CHANGED and changed.values is not None and changed.values.changed_elements == 1


def test_an_optimizer_keyed_by_parameter_name_is_compared_by_position_with_one_keyed_by_index(tmp_path: Path) -> None:
    """FSDP's and get_optimizer_state_dict's form names the parameters; Optimizer.state_dict()
    numbers them. The same state was 4 only-in-A and 4 only-in-B entries; torch's own
    load_state_dict matches the two by position, and so does the diff now."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": get_optimizer_state_dict(model, opt)}, tmp_path / "a.pt")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "b.pt")
    for first, second, named in (("a.pt", "b.pt", "A"), ("b.pt", "a.pt", "B")):
        report = diff_paths(tmp_path / first, tmp_path / second, DiffOptions())
        optimizer = [t for t in report.tensors if t.section == "optimizer"]
        assert len(optimizer) == 12 and {t.status for t in optimizer} == {IDENTICAL}
        assert [(c.key, c.note.split(" keys")[0]) for c in report.changes] == [("param_groups.params", named)]
        labels = {t.label for t in optimizer if t.name.endswith("exp_avg")}
        assert labels == {"0.weight", "0.bias", "1.weight", "1.bias"}
