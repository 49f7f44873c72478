"""Folder checkpoints written by the real libraries (tests/fixtures/real/) read as one Checkpoint."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from ckptkit.core.checkpoint import Severity
from ckptkit.formats import detect_format, open_checkpoint
from ckptkit.storage.safe_pickle import PickledObject
from tests.run_builders import hub_snapshot

REAL = Path(__file__).parent.parent / "fixtures" / "real"


@pytest.mark.parametrize("folder, fmt", [
    ("hf_full/checkpoint-4", "hf-trainer"), ("hf_full_bin/checkpoint-4", "hf-trainer"),
    ("hf_lora/checkpoint-8", "hf-trainer"), ("hf_lora_bin", "save-pretrained"),
    ("hf_sharded", "save-pretrained"), ("save_pretrained_training_state/last_checkpoint", "save-pretrained"),
    ("accelerate", "accelerate"), ("dcp", "dcp"),
])
def test_each_real_folder_is_recognised_by_its_marker_files(folder: str, fmt: str) -> None:
    assert detect_format(REAL / folder).name == fmt


def test_hf_full_checkpoint_maps_trainer_state_to_progress_with_gradient_accumulation() -> None:
    ckpt = open_checkpoint(REAL / "hf_full" / "checkpoint-8")
    p = ckpt.progress
    # global_step counts updates (5 per epoch with 9 micro-batches and accumulation 2); the float
    # epoch counts micro-batches: 1 + 6/9.
    assert (p.global_step, p.max_steps, p.steps_per_epoch) == (8, 10, 5)
    assert p.epoch_float == pytest.approx(1 + 6 / 9)
    assert (p.epochs_completed, p.step_in_epoch, p.epoch_complete) == (1, 3, False)
    assert p.training_finished is False
    assert p.describe() == "epoch 2 INCOMPLETE: 3/5 batches (60.0%), global step 8/10"


def test_hf_final_checkpoint_is_an_epoch_boundary_and_finished() -> None:
    p = open_checkpoint(REAL / "hf_full" / "checkpoint-10").progress
    assert (p.epochs_completed, p.step_in_epoch, p.epoch_complete, p.training_finished) == (2, 0, True, True)


def test_hf_full_checkpoint_sections_point_into_its_member_files() -> None:
    ckpt = open_checkpoint(REAL / "hf_full" / "checkpoint-8")
    assert ckpt.family == "full-model"
    assert len(ckpt.model) == 28 and ckpt.model["transformer.wte.weight"].shape == (64, 16)
    assert [len(g["params"]) for g in ckpt.optimizer["param_groups"]] == [10, 18]
    assert ckpt.scheduler["last_epoch"] == 8
    assert sorted(ckpt.rng) == ["cpu", "numpy", "python"]
    assert ckpt.sources == {"model": "model.safetensors", "optimizer": "optimizer.pt", "scheduler": "scheduler.pt",
                            "rng": "rng_state.pth", "config": "training_args.bin"}
    assert ckpt.tree["trainer_state.json"]["global_step"] == 8
    assert isinstance(ckpt.tree["training_args.bin"], PickledObject)
    assert ckpt.metrics["best_global_step"] == 8
    assert ckpt.extra["best_model_checkpoint"] == "hf_full/checkpoint-8"
    assert len(ckpt.histories["log_history"]) == 6


def test_training_args_fields_show_through_stubs_and_are_only_an_info_finding() -> None:
    ckpt = open_checkpoint(REAL / "hf_full" / "checkpoint-4")
    assert ckpt.config["gradient_accumulation_steps"] == 2
    assert ckpt.config["max_steps"] == -1
    assert ckpt.config["output_dir"] == "hf_full"
    assert [(f.code, f.severity.value, f.where) for f in ckpt.findings] == [
        ("folder.pickled-objects", "info", "checkpoint-4/training_args.bin")]


def test_hf_checkpoint_lists_every_member_file_with_its_role_and_size() -> None:
    ckpt = open_checkpoint(REAL / "hf_lora" / "checkpoint-4")
    members = {m.name: (m.role, m.format) for m in ckpt.members}
    assert members["adapter_model.safetensors"] == ("adapter weights", "safetensors")
    assert members["trainer_state.json"] == ("trainer state", "json")
    assert members["README.md"] == ("other", None)
    assert ckpt.size_bytes == sum(p.stat().st_size for p in (REAL / "hf_lora" / "checkpoint-4").iterdir())


def test_lora_checkpoint_reads_the_adapter_and_its_config() -> None:
    ckpt = open_checkpoint(REAL / "hf_lora" / "checkpoint-4")
    assert ckpt.family == "lora-adapter"
    assert ckpt.model["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 16)
    assert ckpt.extra["adapter_config"]["peft_type"] == "LORA"
    assert [g["params"] for g in ckpt.optimizer["param_groups"]] == [[0, 1, 2, 3], []]


def test_pytorch_model_bin_weights_read_like_safetensors_ones() -> None:
    bin_ckpt = open_checkpoint(REAL / "hf_full_bin" / "checkpoint-4")
    st_ckpt = open_checkpoint(REAL / "hf_full" / "checkpoint-4")
    assert bin_ckpt.sources["model"] == "pytorch_model.bin"
    assert {k: t.shape for k, t in bin_ckpt.model.items()} == {k: t.shape for k, t in st_ckpt.model.items()}


def test_sharded_index_assembles_the_model_from_every_shard() -> None:
    ckpt = open_checkpoint(REAL / "hf_sharded")
    assert ckpt.sources["model"] == "model.safetensors.index.json (2 shards)"
    assert sum(t.numel for t in ckpt.model.values()) == 8128
    # The weight map lives on as the model's keys; the tree keeps the index's other fields only.
    index = json.loads((REAL / "hf_sharded" / "model.safetensors.index.json").read_text())
    assert sorted(ckpt.model) == sorted(index["weight_map"])
    assert ckpt.tree["model.safetensors.index.json"] == {k: v for k, v in index.items() if k != "weight_map"}
    assert ckpt.config["model_type"] == "gpt2"
    assert not ckpt.progress.known


def test_seed_003_folder_takes_progress_from_training_state_pth() -> None:
    ckpt = open_checkpoint(REAL / "save_pretrained_training_state" / "last_checkpoint")
    p = ckpt.progress
    assert ckpt.family == "training-state"
    assert (p.epochs_completed, p.step_in_epoch, p.steps_per_epoch, p.epoch_complete) == (0, 4, 6, False)
    assert p.sources["step_in_epoch"] == "training_state.pth key 'step' = 4"
    assert ckpt.sources["optimizer"] == "training_state.pth: optimizer_state_dict"
    assert ckpt.metrics["best_val_f1"] == pytest.approx(0.0667)
    assert ckpt.config["architectures"] == ["RobertaForSequenceClassification"]


def test_accelerate_folder_takes_progress_from_the_registered_object() -> None:
    ckpt = open_checkpoint(REAL / "accelerate")
    p = ckpt.progress
    assert (p.global_step, p.epochs_completed) == (3, 0)
    assert p.sources["global_step"] == "custom_checkpoint_0.pkl key 'global_step' = 3"
    assert "random_states_0.pkl step = 6: micro-batches since the last epoch end" in p.notes
    assert ckpt.scheduler["last_epoch"] == 3 and ckpt.optimizer["param_groups"][0]["lr"] == 0.005
    assert sorted(ckpt.model) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_dcp_folder_lists_every_tensor_with_global_shape_dtype_and_chunks() -> None:
    ckpt = open_checkpoint(REAL / "dcp")
    assert len(ckpt.chunks) == 16
    [chunk] = ckpt.chunks["model.0.weight"]
    assert (chunk.offsets, chunk.sizes, chunk.file, chunk.length) == ((0, 0), (16, 8), "__0_0.distcp", 2089)
    assert ckpt.model["0.weight"].describe() == "float32[16, 8]"
    assert ckpt.tree["step"] == 3 and ckpt.tree["extra"] == {"note": "tiny"}
    assert ckpt.optimizer["param_groups"][0]["betas"] == (0.9, 0.999)
    assert ckpt.progress.global_step == 3
    assert ckpt.findings == []          # DCP's own dataclasses and PosixPath are expected there


def test_dcp_chunk_bytes_are_located_inside_the_distcp_items() -> None:
    ckpt = open_checkpoint(REAL / "dcp")
    [chunk] = ckpt.chunks["model.0.weight"]
    blob = (REAL / "dcp" / "__0_0.distcp").read_bytes()[chunk.byte_offset: chunk.byte_offset + chunk.length]
    expected = torch.load(io.BytesIO(blob), weights_only=True)
    assert torch.equal(ckpt.model["0.weight"].to_torch(), expected)
    assert ckpt.optimizer["state"]["0.weight"]["step"].scalar_value() == 3.0


TWO_RANKS = Path(__file__).parent.parent / "fixtures" / "dcp_two_ranks"   # scripts/make_sharded_dcp_fixture.py


def test_dcp_tensor_sharded_over_two_ranks_lists_one_chunk_per_rank_file() -> None:
    ckpt = open_checkpoint(TWO_RANKS)
    assert [(c.offsets, c.sizes, c.file) for c in ckpt.chunks["model.w"]] == [
        ((0, 0), (3, 4), "__0_0.distcp"), ((3, 0), (3, 4), "__1_0.distcp")]
    assert ckpt.model["w"].describe() == "float32[6, 4]"          # the global shape
    assert [(c.offsets, c.file) for c in ckpt.chunks["model.b"]] == [((0,), "__1_0.distcp")]
    assert sorted(m.name for m in ckpt.members) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert ckpt.progress.global_step == 7


def test_each_dcp_chunk_reads_its_own_part_of_the_global_tensor() -> None:
    ckpt = open_checkpoint(TWO_RANKS)
    top, bottom = (c.tensor.to_torch() for c in ckpt.chunks["model.w"])
    full = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    assert torch.equal(top, full[:3]) and torch.equal(bottom, full[3:])
    assert torch.equal(ckpt.model["b"].to_torch(), torch.arange(5, dtype=torch.float32))


def test_a_chunked_tensor_says_to_read_its_chunks_instead_of_pretending_to_be_whole() -> None:
    from ckptkit.core.errors import UnsupportedFeatureError

    ckpt = open_checkpoint(TWO_RANKS)
    with pytest.raises(UnsupportedFeatureError, match="'model.w' is stored in 2 chunks"):
        ckpt.model["w"].read_bytes()


def test_a_hub_snapshot_of_links_reads_as_the_folder_it_links_to(tmp_path: Path) -> None:
    snapshot = hub_snapshot(tmp_path / "models--org--tiny", REAL / "hf_sharded")
    linked, plain = open_checkpoint(snapshot), open_checkpoint(REAL / "hf_sharded")
    assert (linked.format, linked.sources["model"]) == (plain.format, "model.safetensors.index.json (2 shards)")
    assert {k: t.shape for k, t in linked.model.items()} == {k: t.shape for k, t in plain.model.items()}
    assert linked.size_bytes == plain.size_bytes and not linked.findings


def test_a_hub_snapshot_link_that_leads_nowhere_is_a_missing_shard(tmp_path: Path) -> None:
    snapshot = hub_snapshot(tmp_path / "models--org--tiny", REAL / "hf_sharded")
    (snapshot / "model-00002-of-00002.safetensors").resolve().unlink()     # its blob
    findings = [(f.code, f.severity) for f in open_checkpoint(snapshot).findings]
    assert ("folder.missing-shard", Severity.ERROR) in findings
