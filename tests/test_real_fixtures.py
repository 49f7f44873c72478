"""Facts about the checkpoints the real libraries wrote (tests/fixtures/real/), pinned.

ckptkit's readers rely on these facts; docs/formats-real.md explains them. The fixtures come from
scripts/make_real_fixtures.py. These tests use only the stdlib and torch.load(weights_only=True):
transformers, peft, lightning and accelerate are not installed in CI.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from scripts.describe_real_fixtures import StubUnpickler, distcp_items, pickle_globals

REAL = Path(__file__).parent / "fixtures" / "real"
HF_CHECKPOINT_STEPS = (4, 8, 10)
TORCH_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage"),
                        ("collections", "OrderedDict")}
NUMPY_RNG_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch", "ByteStorage"), ("collections", "OrderedDict"),
}


def data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        [member] = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        return archive.read(member)


def globals_of(path: Path) -> set[tuple[str, str]]:
    return set(pickle_globals(data_pkl(path))[1])


def safetensors_keys(path: Path) -> list[str]:
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    return [key for key in header if key != "__metadata__"]


def trainer_state(family: str, step: int) -> dict[str, Any]:
    return json.loads((REAL / family / f"checkpoint-{step}" / "trainer_state.json").read_text())


def test_the_fixtures_stay_under_four_megabytes() -> None:
    total = sum(p.stat().st_size for p in REAL.rglob("*") if p.is_file())
    assert total < 4 * 1024 * 1024


@pytest.mark.parametrize("family", ["hf_full", "hf_lora"])
def test_trainer_wrote_one_checkpoint_folder_per_save_step_and_one_at_the_end(family: str) -> None:
    folders = sorted(p.name for p in (REAL / family).iterdir())
    assert folders == ["checkpoint-10", "checkpoint-4", "checkpoint-8"]


@pytest.mark.parametrize("step", HF_CHECKPOINT_STEPS)
def test_a_full_fine_tune_checkpoint_holds_these_files(step: int) -> None:
    names = {p.name for p in (REAL / "hf_full" / f"checkpoint-{step}").iterdir()}
    assert names == {
        "config.json", "generation_config.json", "model.safetensors", "optimizer.pt", "rng_state.pth",
        "scheduler.pt", "trainer_state.json", "training_args.bin",
    }


@pytest.mark.parametrize("step", HF_CHECKPOINT_STEPS)
def test_a_lora_checkpoint_holds_the_adapter_but_no_model_config(step: int) -> None:
    names = {p.name for p in (REAL / "hf_lora" / f"checkpoint-{step}").iterdir()}
    assert names == {
        "README.md", "adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth",
        "scheduler.pt", "trainer_state.json", "training_args.bin",
    }


@pytest.mark.parametrize("family", ["hf_full", "hf_lora"])
@pytest.mark.parametrize("step", HF_CHECKPOINT_STEPS)
def test_trainer_state_global_step_equals_the_folder_suffix(family: str, step: int) -> None:
    state = trainer_state(family, step)
    assert state["global_step"] == step
    assert state["max_steps"] == 10
    assert state["num_train_epochs"] == 2
    assert all(entry["step"] <= step for entry in state["log_history"])


@pytest.mark.parametrize(("step", "epoch"), [(4, 8 / 9), (8, 1 + 6 / 9), (10, 2.0)])
def test_trainer_state_epoch_counts_micro_batches_not_optimizer_steps(step: int, epoch: float) -> None:
    # 9 micro-batches per epoch, accumulation 2 -> 5 optimizer steps per epoch; yet at step 4 the
    # epoch is 8/9 (micro-batches seen), not 4/5.
    state = trainer_state("hf_full", step)
    assert isinstance(state["epoch"], float)
    assert state["epoch"] == pytest.approx(epoch)


def test_trainer_state_names_the_best_checkpoint_by_its_output_dir_path() -> None:
    state = trainer_state("hf_full", 4)
    assert state["best_model_checkpoint"] == "hf_full/checkpoint-4"
    assert state["best_global_step"] == 4
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [4]
    assert state["best_metric"] == next(e["eval_loss"] for e in state["log_history"] if "eval_loss" in e)


def test_the_full_model_safetensors_leaves_out_the_tied_lm_head() -> None:
    keys = safetensors_keys(REAL / "hf_full" / "checkpoint-4" / "model.safetensors")
    assert len(keys) == 28
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys


def test_optimizer_state_is_keyed_by_parameter_index_and_covers_both_param_groups() -> None:
    optimizer = torch.load(REAL / "hf_full" / "checkpoint-8" / "optimizer.pt", weights_only=True)
    decay, no_decay = optimizer["param_groups"]
    assert sorted(optimizer["state"]) == list(range(28)) == sorted(decay["params"] + no_decay["params"])
    assert optimizer["state"][0]["step"].item() == 8.0
    assert optimizer["state"][0]["exp_avg"].shape == (64, 16)
    assert decay["initial_lr"] == 1e-3 and decay["lr"] == pytest.approx(2.5e-4)


def test_scheduler_last_epoch_counts_optimizer_steps() -> None:
    scheduler = torch.load(REAL / "hf_full" / "checkpoint-8" / "scheduler.pt", weights_only=True)
    assert scheduler["last_epoch"] == 8 and scheduler["_step_count"] == 9
    assert scheduler["_last_lr"] == [pytest.approx(2.5e-4)] * 2
    assert scheduler["lr_lambdas"] == [{}, {}]


def test_rng_state_needs_numpy_globals_that_plain_weights_only_refuses() -> None:
    path = REAL / "hf_full" / "checkpoint-4" / "rng_state.pth"
    assert globals_of(path) == NUMPY_RNG_GLOBALS
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_training_args_bin_is_a_pickled_training_arguments_object() -> None:
    path = REAL / "hf_full" / "checkpoint-4" / "training_args.bin"
    assert globals_of(path) == {
        ("transformers.training_args", "TrainingArguments"), ("transformers.training_args", "OptimizerNames"),
        ("transformers.trainer_utils", "SchedulerType"), ("transformers.trainer_utils", "IntervalStrategy"),
        ("transformers.trainer_utils", "SaveStrategy"), ("transformers.trainer_utils", "HubStrategy"),
        ("transformers.trainer_pt_utils", "AcceleratorConfig"), ("accelerate.state", "PartialState"),
        ("accelerate.utils.dataclasses", "DistributedType"), ("torch", "device"),
    }
    args = StubUnpickler(io.BytesIO(data_pkl(path))).load()
    assert type(args).__name__ == "TrainingArguments"
    assert args.state["gradient_accumulation_steps"] == 2 and args.state["output_dir"] == "hf_full"
    assert args.state["lr_scheduler_type"].args == ("linear",)


def test_lora_adapter_keys_start_with_base_model_model() -> None:
    keys = safetensors_keys(REAL / "hf_lora" / "checkpoint-4" / "adapter_model.safetensors")
    assert keys == [
        f"base_model.model.transformer.h.{layer}.attn.c_attn.lora_{ab}.weight" for layer in (0, 1) for ab in "AB"
    ]
    config = json.loads((REAL / "hf_lora" / "checkpoint-4" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["target_modules"]) == ("LORA", 4, ["c_attn"])


def test_lora_optimizer_holds_only_the_adapter_parameters() -> None:
    optimizer = torch.load(REAL / "hf_lora" / "checkpoint-8" / "optimizer.pt", weights_only=True)
    assert [group["params"] for group in optimizer["param_groups"]] == [[0, 1, 2, 3], []]
    assert optimizer["state"][1]["exp_avg"].shape == (48, 4)


def test_a_bin_lora_adapter_is_a_plain_state_dict_with_the_same_keys() -> None:
    path = REAL / "hf_lora_bin" / "adapter_model.bin"
    adapter = torch.load(path, weights_only=True)
    assert list(adapter) == safetensors_keys(REAL / "hf_lora" / "checkpoint-4" / "adapter_model.safetensors")
    assert globals_of(path) == TORCH_TENSOR_GLOBALS


def test_a_pytorch_model_bin_checkpoint_holds_the_same_tensors_as_model_safetensors() -> None:
    weights = torch.load(REAL / "hf_full_bin" / "checkpoint-4" / "pytorch_model.bin", weights_only=True)
    assert sorted(weights) == sorted(safetensors_keys(REAL / "hf_full" / "checkpoint-4" / "model.safetensors"))


def test_the_sharded_index_maps_every_key_to_an_existing_shard() -> None:
    folder = REAL / "hf_sharded"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert sorted(k for shard in shards for k in safetensors_keys(folder / shard)) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == 4 * index["metadata"]["total_parameters"]


def test_accelerate_save_state_writes_these_files_all_as_torch_zips_but_the_model() -> None:
    folder = REAL / "accelerate"
    names = {p.name for p in folder.iterdir()}
    assert names == {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                     "custom_checkpoint_0.pkl"}
    for name in names - {"model.safetensors"}:
        assert zipfile.is_zipfile(folder / name), name
    assert globals_of(folder / "random_states_0.pkl") == NUMPY_RNG_GLOBALS


def test_accelerate_counters_are_optimizer_steps_except_the_rng_step() -> None:
    folder = REAL / "accelerate"
    assert torch.load(folder / "custom_checkpoint_0.pkl", weights_only=True) == {"epoch": 0, "global_step": 3}
    assert torch.load(folder / "optimizer.bin", weights_only=True)["state"][0]["step"].item() == 3.0
    assert torch.load(folder / "scheduler.bin", weights_only=True)["last_epoch"] == 3
    rng = StubUnpickler(io.BytesIO(data_pkl(folder / "random_states_0.pkl"))).load()
    assert rng["step"] == 6  # accelerator.step: micro-batches, reset at the end of the dataloader


@pytest.mark.parametrize(
    ("name", "epoch", "global_step", "batches_processed"),
    [
        ("epoch=0-step=3.ckpt", 0, 3, 3),
        ("epoch=1-step=6.ckpt", 1, 6, 3),
        ("last.ckpt", 1, 6, 3),
        ("mid_epoch/epoch=0-step=2.ckpt", 0, 2, 2),
        ("mid_epoch/epoch=1-step=4.ckpt", 1, 4, 1),
    ],
)
def test_lightning_ckpt_counters_match_the_file_name(
        name: str, epoch: int, global_step: int, batches_processed: int) -> None:
    ckpt = torch.load(REAL / "lightning" / name, weights_only=True)
    assert list(ckpt) == [
        "epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
        "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters",
    ]
    assert (ckpt["epoch"], ckpt["global_step"]) == (epoch, global_step)
    batch_progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert batch_progress["processed"] == batches_processed
    assert list(ckpt["state_dict"]) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


def test_lightning_epoch_end_checkpoint_has_not_yet_marked_its_epoch_completed() -> None:
    ckpt = torch.load(REAL / "lightning" / "epoch=0-step=3.ckpt", weights_only=True)
    progress = ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert progress == {"ready": 1, "started": 1, "processed": 1, "completed": 0}
    assert ckpt["hyper_parameters"] == {"hidden": 8, "lr": 0.05}
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 1


# (a sharded checkpoint is a *.ckpt folder: its meta.pt holds the counters)
LIGHTNING_CKPTS = sorted(p if p.is_file() else p / "meta.pt" for p in REAL.glob("lightning*/**/*.ckpt"))


def _fit_loop_counter(fit: dict[str, Any], key: str, *path: str) -> int:
    value = fit[key]
    for name in path:
        value = value[name]
    return value


@pytest.mark.parametrize("path", LIGHTNING_CKPTS, ids=lambda p: str(p.relative_to(REAL)))
def test_lightning_writes_global_step_and_epoch_from_its_loops_counters(path: Path) -> None:
    # trainer.global_step is the automatic (or, under manual optimization, the manual) optimizer-step
    # counter; trainer.current_epoch is epoch_progress.current.completed. Accumulation changes neither.
    ckpt = torch.load(path, weights_only=True)
    fit = ckpt["loops"]["fit_loop"]
    automatic = _fit_loop_counter(fit, "epoch_loop.automatic_optimization.optim_progress", "optimizer", "step",
                                  "total", "completed")
    manual = _fit_loop_counter(fit, "epoch_loop.manual_optimization.optim_step_progress", "total", "completed")
    assert ckpt["global_step"] == (manual if "lightning_manual" in path.parts else automatic)
    assert 0 in (automatic, manual)
    assert ckpt["epoch"] == fit["epoch_progress"]["current"]["completed"]


@pytest.mark.parametrize(
    ("name", "optimizer_steps", "batches"),
    [("lightning_accum/every_step/epoch=0-step=2.ckpt", 2, 4),      # windows of 2 batches
     ("lightning_accum/epoch=0-step=3.ckpt", 3, 5),                 # the epoch's odd last batch steps alone
     ("lightning_accum/every_step/epoch=1-step=5.ckpt", 5, 9),
     ("lightning_manual/every_step/epoch=1-step=3.ckpt", 3, 7)],    # the 5th batch's gradients carried over
)
def test_lightning_step_counters_under_accumulation_and_manual_optimization(
        name: str, optimizer_steps: int, batches: int) -> None:
    ckpt = torch.load(REAL / name, weights_only=True)
    fit = ckpt["loops"]["fit_loop"]
    assert ckpt["global_step"] == optimizer_steps
    assert fit["epoch_loop.batch_progress"]["total"]["processed"] == batches


def test_lightning_ckpt_needs_only_tensor_globals() -> None:
    assert globals_of(REAL / "lightning" / "last.ckpt") == TORCH_TENSOR_GLOBALS


def test_dcp_metadata_is_a_protocol_4_pickle_of_dcp_dataclasses() -> None:
    protocol, found, _ = pickle_globals((REAL / "dcp" / ".metadata").read_bytes())
    dcp = "torch.distributed.checkpoint.metadata"
    assert protocol == 4
    assert set(found) == {
        (dcp, "Metadata"), (dcp, "TensorStorageMetadata"), (dcp, "TensorProperties"), (dcp, "_MEM_FORMAT_ENCODING"),
        (dcp, "ChunkStorageMetadata"), (dcp, "BytesStorageMetadata"), (dcp, "MetadataIndex"), (dcp, "StorageMeta"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch", "float32"),
        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
    }


def test_each_distcp_item_is_a_whole_torch_save_zip_and_they_fill_the_file() -> None:
    items = dict(distcp_items(REAL / "dcp"))
    assert sum(len(item) for item in items.values()) == (REAL / "dcp" / "__0_0.distcp").stat().st_size
    assert all(item.startswith(b"PK\x03\x04") for item in items.values())
    assert torch.load(io.BytesIO(items["model.0.weight"]), weights_only=True).shape == (16, 8)
    assert torch.load(io.BytesIO(items["step"]), weights_only=True) == 3
    assert torch.load(io.BytesIO(items["optim.param_groups.0.params"]), weights_only=True) == [
        "0.weight", "0.bias", "2.weight", "2.bias",
    ]


def test_dcp_metadata_lists_tensors_with_global_shape_and_chunks() -> None:
    metadata = StubUnpickler(io.BytesIO((REAL / "dcp" / ".metadata").read_bytes())).load()
    entries = metadata.state["state_dict_metadata"]
    weight = entries["optim.state.0.weight.exp_avg"].state
    assert weight["size"].args == ((16, 8),)
    assert [chunk.state["sizes"].args for chunk in weight["chunks"]] == [((16, 8),)]
    assert type(entries["step"]).__name__ == "BytesStorageMetadata"
    assert metadata.state["version"] == "1.0.0"


def test_training_state_pth_holds_seed_003s_mid_epoch_progress() -> None:
    folder = REAL / "save_pretrained_training_state" / "last_checkpoint"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "training_state.pth"}
    path = folder / "training_state.pth"
    state = StubUnpickler(io.BytesIO(data_pkl(path))).load()
    assert (state["epoch"], state["step"], state["total_batches"], state["best_val_acc"]) == (1, 4, 6, 0.5)
    assert type(state["best_val_f1"]).__name__ == "scalar"  # numpy.float64 from sklearn-style metrics
    assert state["scheduler_state_dict"]["last_epoch"] == 4
    assert ("numpy._core.multiarray", "scalar") in globals_of(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
