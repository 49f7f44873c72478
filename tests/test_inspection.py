"""`inspect_checkpoint`: what a summary says about a checkpoint, and that it reads only the index."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.cli.inspect_command import render_inspection
from ckptkit.core.checkpoint import StorageRef, TensorRef
from ckptkit.core.dtypes import dtype_named
from ckptkit.inspection import GroupRow, HistoryRow, ModuleRow, _module_rows, _module_rows_by_runs, inspect_checkpoint
from ckptkit.views.keys import module_prefix_list
from scripts.make_seed_samples import write_samples
from tests.tensor_trees import layout_dicts


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("seeds"))


def test_experiment_checkpoint_summary_names_every_section(samples: dict[str, Path]) -> None:
    report = inspect_checkpoint(samples["checkpoint_step_500.pt"])
    assert (report.format, report.family, report.size_bytes) == ("torch-zip", "experiment",
                                                                 samples["checkpoint_step_500.pt"].stat().st_size)
    model = report.model
    assert (model.source, model.tensors, model.parameters, model.bytes, model.dtypes) == \
        ("model_state_dict", 4, 212, 848, {"float32": 4})
    assert model.modules == [ModuleRow("0", 2, 144, "float32"), ModuleRow("2", 2, 68, "float32")]
    assert [(t.name, t.shape) for t in model.tensor_list][:2] == [("0.weight", [16, 8]), ("0.bias", [16])]
    opt = report.optimizer
    assert (opt.source, opt.kind, opt.state_entries, opt.step) == ("optimizer_state_dict", "AdamW", 4, 2)
    assert opt.groups == [GroupRow(0, 4, 0.001, 0.01, (0.9, 0.999), None)]
    assert report.scheduler["last_epoch"] == 2 and report.scheduler["step_size"] == 10
    assert report.metrics == {"best_val_loss": 0.3961}
    assert report.histories == [HistoryRow("train_history", 5, 0.2, 0.2),
                                HistoryRow("val_history", 1, "dict (2 keys: step, val_loss)", None)]
    assert report.config == {"d_model": 32, "n_layers": 2, "batch_size": 4, "max_steps": 2000, "save_interval": 500}
    assert [f.code for f in report.findings] == ["security.pickled-class"]


def test_retrieval_histories_pick_the_best_in_the_right_direction(samples: dict[str, Path]) -> None:
    report = inspect_checkpoint(samples["retrieval"])
    rows = {h.name: h for h in report.histories}
    assert (rows["train_losses"].best, rows["train_losses"].last) == (0.4821, 0.4821)
    assert (rows["val_recalls"].best, rows["val_recalls"].length) == (0.3456, 10)
    assert report.metrics == {"loss": 0.4821, "recall_at_10": 0.3456}


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int | None]]:
    reads: list[tuple[str, int, int | None]] = []
    original = StorageRef.read_bytes

    def counting(self: StorageRef, start: int = 0, length: int | None = None) -> memoryview:
        reads.append((self.key, start, length))
        return original(self, start, length)
    monkeypatch.setattr(StorageRef, "read_bytes", counting)
    return reads


def test_inspect_reads_no_tensor_bytes_when_no_optimizer_step_is_a_tensor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.pt"
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 64)).sum().backward()
    opt.step()
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 3,
                "rng_state": torch.get_rng_state()}, path)
    reads = _count_reads(monkeypatch)
    monkeypatch.setattr(StorageRef, "byte_range", lambda self: pytest.fail("located a storage record"))
    report = inspect_checkpoint(path)
    render_inspection(report, show_tensors=True)
    json.dumps(report.to_json())
    assert reads == []
    assert report.optimizer.kind == "SGD (momentum)" and report.model.parameters == 64 * 64 + 64 + 64 * 8 + 8


def test_inspect_reads_only_the_first_optimizer_step_scalar(samples: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _count_reads(monkeypatch)
    report = inspect_checkpoint(samples["checkpoint_step_500.pt"])
    render_inspection(report, show_tensors=False)
    assert report.optimizer.step == 2
    assert len(reads) == 1 and reads[0][1:] == (0, 4)   # one float32 `step`, 4 bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_dicts())
def test_any_layout_dict_is_summarised_rendered_and_dumped_as_json(tree: dict[Any, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "odd.pt"
        torch.save(tree, path)
        report = inspect_checkpoint(path)
        text = render_inspection(report, show_tensors=True)
        data = json.loads(json.dumps(report.to_json()))
    assert data["family"] == report.family and report.family in text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["embed", "layers.0", "layers.1", "layers.10", "head", "x.y.z"]),
                          st.sampled_from(["weight", "bias", "a.b"]), st.integers(0, 50),
                          st.sampled_from(["float32", "float32", "bfloat16"])),
                min_size=1, max_size=30, unique_by=lambda row: (row[0], row[1])), st.booleans())
def test_module_rows_summed_by_running_totals_are_the_rows_summed_run_by_run(
        rows: list[tuple[str, str, int, str]], grouped: bool) -> None:
    """The short cut (each module's tensors together, one dtype) and the general grouping give
    the same rows, whatever the order and dtypes of the tensors."""
    if grouped:
        rows = sorted(rows, key=lambda row: row[0])
    f32 = dtype_named("float32")
    model = {f"{module}.{leaf}": TensorRef(dtype_named(dtype), (n,), (1,), StorageRef(module, f32, n, "cpu"))
             for module, leaf, n, dtype in rows}
    numels, dtype_names = [row[2] for row in rows], [row[3] for row in rows]
    rows_by_runs = _module_rows_by_runs(module_prefix_list(list(model)), numels, dtype_names)
    assert _module_rows(model, numels, dtype_names) == rows_by_runs
    assert sum(r.tensors for r in rows_by_runs) == len(rows) and sum(r.parameters for r in rows_by_runs) == sum(numels)


def test_the_modules_of_a_mixture_of_experts_are_summed_per_expert_layer() -> None:
    f32 = dtype_named("float32")
    model = {f"model.layers.{i}.experts.{j}.w": TensorRef(f32, (i + j + 1,), (1,), StorageRef("s", f32, 9, "cpu"))
             for i in range(3) for j in range(2)}
    assert _module_rows(model, [t.numel for t in model.values()], ["float32"] * 6) == [
        ModuleRow("model.layers.0", 2, 3, "float32"), ModuleRow("model.layers.1", 2, 5, "float32"),
        ModuleRow("model.layers.2", 2, 7, "float32")]
