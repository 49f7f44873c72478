"""Regenerate tests/fixtures/real/: small checkpoints written by the real training libraries.

ckptkit must read what transformers, peft, accelerate, Lightning, timm and
torch.distributed.checkpoint actually write, not what we believe they write. This script builds
tiny randomly initialised models from configs (nothing is downloaded), trains them for a few
steps on synthetic data on the CPU, and lets each library save its checkpoints in its own way.

Usage (test-only extras; never let pip change torch):

    pip install transformers peft lightning accelerate bitsandbytes "torch==2.13.0"
    pip install --no-deps timm torchvision      # the torchvision built for that torch
    python scripts/make_real_fixtures.py            # wipes and rewrites tests/fixtures/real/
    python scripts/make_real_fixtures.py hf_lora_bnb bnb_8bit   # (re)writes only these fixtures

It runs in well under a minute on 2 CPU cores. Seeds are fixed, so tensors, counters and file
lists are reproducible; a few logged values (train_runtime, samples per second) are wall-clock
measurements and change from run to run. The library versions used are printed and written into
tests/fixtures/real/README.md.

Every path stored inside a fixture (TrainingArguments.output_dir, best_model_checkpoint, ...) is
relative to tests/fixtures/real/, because the script works from that directory.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import types
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# timm imports torchvision (and Lightning does once it is installed). On these CPU machines the
# only torchvision wheel for this torch is a CUDA build whose compiled operators do not load, and
# its `_meta_registrations` raises at import; nothing here calls those operators (timm's
# CheckpointSaver and resume_checkpoint never do), so that one module is left out.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "real"
SEED = 1234

# Tiny GPT-2: about 9k parameters, so every checkpoint stays in the tens of kilobytes.
GPT2_SIZES = dict(n_embd=16, n_layer=2, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
SEQ_LEN = 16
# 18 sequences, micro-batch 2 -> 9 micro-batches per epoch; with gradient accumulation 2 that is
# 4 full optimizer steps plus one step from the odd micro-batch: 5 optimizer steps per epoch.
NUM_SEQUENCES = 18
MICRO_BATCH = 2
GRAD_ACCUM = 2


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def library_versions() -> dict[str, str]:
    import accelerate
    import bitsandbytes
    import lightning
    import peft
    import safetensors
    import timm
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "lightning": lightning.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "timm": timm.__version__,
    }


class TokenDataset(torch.utils.data.Dataset):
    """Synthetic causal-LM data: random token ids, labels equal to the inputs."""

    def __init__(self, n: int = NUM_SEQUENCES, seq_len: int = SEQ_LEN, vocab: int = 64) -> None:
        generator = torch.Generator().manual_seed(SEED)
        self.ids = torch.randint(0, vocab, (n, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    seed_everything()
    return GPT2LMHeadModel(GPT2Config(**GPT2_SIZES))


def trainer_args(output_dir: str, **overrides: Any) -> Any:
    from transformers import TrainingArguments

    args: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=MICRO_BATCH,
        per_device_eval_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=GRAD_ACCUM,
        num_train_epochs=2,
        learning_rate=1e-3,
        warmup_steps=2,
        lr_scheduler_type="linear",
        logging_steps=2,
        save_strategy="steps",
        save_steps=4,
        eval_strategy="steps",
        eval_steps=4,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        fp16=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=SEED,
        data_seed=SEED,
    )
    args.update(overrides)
    return TrainingArguments(**args)


def run_trainer(model: Any, output_dir: str, **overrides: Any) -> Any:
    from transformers import Trainer

    trainer = Trainer(
        model=model,
        args=trainer_args(output_dir, **overrides),
        train_dataset=TokenDataset(),
        eval_dataset=TokenDataset(n=4),
    )
    trainer.train()
    return trainer


def make_hf_full() -> None:
    """Full fine-tune: checkpoint-4 (epoch 8/9), checkpoint-8 (epoch 1 + 6/9), checkpoint-10 (final, epoch 2.0)."""
    run_trainer(tiny_gpt2(), "hf_full")


def make_hf_full_bin() -> None:
    """A Trainer checkpoint whose weights are pytorch_model.bin instead of model.safetensors.

    transformers 5 removed both TrainingArguments(save_safetensors=False) and
    save_pretrained(safe_serialization=False), so no current Trainer writes pytorch_model.bin.
    Older versions (4.x) wrote it with torch.save(state_dict, "pytorch_model.bin"); we reproduce
    exactly that next to the other files of a real Trainer checkpoint, so readers meet the layout
    users still have on disk. The README marks this fixture as emulated.
    """
    source = Path("hf_full") / "checkpoint-4"
    target = Path("hf_full_bin") / "checkpoint-4"
    shutil.copytree(source, target)
    from safetensors.torch import load_file

    state_dict = load_file(str(target / "model.safetensors"))
    (target / "model.safetensors").unlink()
    torch.save(state_dict, target / "pytorch_model.bin")


def make_hf_sharded() -> None:
    """save_pretrained with a small max_shard_size: an index json plus numbered shards."""
    tiny_gpt2().save_pretrained("hf_sharded", max_shard_size="20KB")


def tiny_lora_model() -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["c_attn"],
        fan_in_fan_out=True,  # GPT-2 uses Conv1D, whose weight is stored transposed.
        task_type="CAUSAL_LM",
    )
    return get_peft_model(tiny_gpt2(), config)


def make_hf_lora() -> None:
    """LoRA through the Trainer (gradient accumulation 2, fp32 on CPU), plus a .bin adapter."""
    trainer = run_trainer(tiny_lora_model(), "hf_lora")
    trainer.model.save_pretrained("hf_lora_bin", safe_serialization=False)


class RunCounters:
    """A user object registered with accelerate, as people do to checkpoint their own counters."""

    def __init__(self) -> None:
        self.epoch = 0
        self.global_step = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "global_step": self.global_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.global_step = state["epoch"], state["global_step"]


def make_hf_lora_bnb() -> None:
    """The LlamaRec LLM ranker's optimizer: LoRA through the Trainer with optim="paged_adamw_32bit"
    (bitsandbytes). On a CPU bitsandbytes runs it unpaged; its state_dict() is the same: per
    parameter `step` and the buffers state1/state2 nested under `__bnb_optimizer_quant_state__`.
    Only checkpoint-8 is kept (the fixture is about optimizer.pt)."""
    run_trainer(tiny_lora_model(), "hf_lora_bnb", optim="paged_adamw_32bit")
    for other in ("checkpoint-4", "checkpoint-10"):
        shutil.rmtree(Path("hf_lora_bnb") / other)


def make_hf_save_only_model() -> None:
    """TrainingArguments(save_only_model=True): checkpoint-4 holds the model, trainer_state.json
    and training_args.bin, and no optimizer.pt, scheduler.pt or rng_state.pth."""
    run_trainer(tiny_gpt2(), "hf_save_only_model", save_only_model=True, num_train_epochs=1)
    shutil.rmtree(Path("hf_save_only_model") / "checkpoint-5")


def make_bnb_8bit() -> None:
    """bitsandbytes AdamW8bit in a plain torch.save dict: the tensors of at least min_8bit_size
    elements keep uint8 state (+ qmap/absmax), the smaller ones float32 state."""
    import bitsandbytes as bnb

    seed_everything()
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 4))
    opt = bnb.optim.AdamW8bit(model.parameters(), lr=1e-3, min_8bit_size=256)
    for _ in range(2):
        model(torch.randn(3, 64)).sum().backward()
        opt.step()
        opt.zero_grad()
    Path("bnb_8bit").mkdir()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1},
               Path("bnb_8bit") / "ckpt.pt")


def make_accelerate() -> None:
    """Accelerator.save_state mid-epoch: 3 optimizer steps (6 of 8 micro-batches, accumulation 2)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    set_seed(SEED)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=GRAD_ACCUM)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randint(0, 2, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    counters = RunCounters()
    accelerator.register_for_checkpointing(counters)
    for micro_batch, (x, y) in enumerate(loader, start=1):
        with accelerator.accumulate(model):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            counters.global_step += 1
        if micro_batch == 6:
            break
    accelerator.save_state("accelerate")


def make_lightning() -> None:
    """Two epochs of a tiny LightningModule (3 batches per epoch).

    Two ModelCheckpoint callbacks, as real projects often combine them: one at every epoch end
    (plus last.ckpt) and one every 2 optimizer steps into mid_epoch/, so one file is mid-epoch.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class TinyClassifier(L.LightningModule):
        def __init__(self, hidden: int = 8, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    L.seed_everything(SEED, verbose=False)
    data = torch.utils.data.TensorDataset(torch.randn(12, 4), torch.randint(0, 2, (12,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    per_epoch = ModelCheckpoint(dirpath="lightning", filename="{epoch}-{step}", save_top_k=-1, save_last=True)
    per_steps = ModelCheckpoint(
        dirpath="lightning/mid_epoch", filename="{epoch}-{step}", save_top_k=-1, every_n_train_steps=2
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[per_epoch, per_steps],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir="lightning",
    )
    trainer.fit(TinyClassifier(), loader)


def _linear_classifier(optimizer: Any) -> Any:
    """A LightningModule class: one Linear(4, 2) trained with cross-entropy, `optimizer(params)`."""
    import lightning as L

    class Linear(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return optimizer(self.parameters())

    return Linear


def make_lightning_weights_only() -> None:
    """ModelCheckpoint(save_weights_only=True, save_last=True), 2 epochs of 3 batches: .ckpt files
    without optimizer_states or lr_schedulers, which Trainer.fit(ckpt_path=...) refuses."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    Tiny = _linear_classifier(lambda params: torch.optim.Adam(params, lr=0.05))
    L.seed_everything(SEED, verbose=False)
    data = torch.utils.data.TensorDataset(torch.randn(12, 4), torch.randint(0, 2, (12,)))
    weights = ModelCheckpoint(dirpath="lightning_weights_only", filename="{epoch}-{step}", save_top_k=-1,
                              save_last=True, save_weights_only=True)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=[weights],
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir="lightning_weights_only")
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=4))


def make_lightning_resumed() -> None:
    """Where Lightning resumes each kind of .ckpt, recorded by resuming it (resumes.json).

    2 epochs of 3 batches with a ModelCheckpoint at every epoch end and one every 2 optimizer
    steps (mid_epoch/), then `trainer.save_checkpoint("after_fit.ckpt")` once `fit` returned; and
    max_steps/after_fit.ckpt from a run of max_steps=4. Each file is then resumed by a fresh
    Trainer(max_epochs=3) (max_steps=12 for the latter): resumes.json records the epoch and batch
    index of the first batch it trains. sharded.ckpt/ is EMULATED (Lightning runs FSDP
    on GPUs only): the after-fit checkpoint dict put on disk by the body of Lightning's
    FSDPStrategy.save_checkpoint for state_dict_type="sharded" (`state_dict` as DCP's "model",
    each of `optimizer_states` as "optimizer_{i}" in FSDP's parameter-name keyed form, the rest
    torch.save'd to meta.pt).
    """
    import json

    import lightning as L
    import torch.distributed.checkpoint as dcp
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    Tiny = _linear_classifier(lambda params: torch.optim.Adam(params, lr=0.05))

    class Recording(Tiny):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.trained: list[tuple[int, int]] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.trained.append((self.current_epoch, batch_idx))
            return super().training_step(batch, batch_idx)

    L.seed_everything(SEED, verbose=False)
    data = torch.utils.data.TensorDataset(torch.randn(12, 4), torch.randint(0, 2, (12,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    folder = Path("lightning_resumed")
    options: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                               "enable_model_summary": False, "default_root_dir": str(folder)}
    callbacks = [ModelCheckpoint(dirpath=folder, filename="{epoch}-{step}", save_top_k=-1),
                 ModelCheckpoint(dirpath=folder / "mid_epoch", filename="{epoch}-{step}", save_top_k=-1,
                                 every_n_train_steps=2)]
    module = Recording()
    trainer = L.Trainer(max_epochs=2, callbacks=callbacks, **options)
    trainer.fit(module, loader)
    trainer.save_checkpoint(folder / "after_fit.ckpt")

    checkpoint = trainer._checkpoint_connector.dump_checkpoint()
    sharded = folder / "sharded.ckpt"
    sharded.mkdir()
    converted = {"model": checkpoint.pop("state_dict")}
    checkpoint.pop("optimizer_states")
    converted.update({f"optimizer_{i}": get_optimizer_state_dict(module, optimizer)
                      for i, optimizer in enumerate(trainer.optimizers)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group" warning: single process on purpose
        dcp.save(converted, checkpoint_id=sharded)
    torch.save(checkpoint, sharded / "meta.pt")

    # A run stopped by max_steps inside its second epoch (4 steps of 3-batch epochs), saved after fit
    # and resumed with more steps, as step-budgeted fine-tunes are.
    L.seed_everything(SEED, verbose=False)
    stepped = L.Trainer(max_steps=4, enable_checkpointing=False, **options)
    stepped.fit(Recording(), loader)
    stepped.save_checkpoint(folder / "max_steps" / "after_fit.ckpt")

    resumes = {}
    for path in sorted(folder.rglob("*.ckpt")):
        if path.is_file():
            again = Recording()
            budget = {"max_steps": 12} if "max_steps" in path.parts else {"max_epochs": 3}
            L.Trainer(enable_checkpointing=False, **budget, **options).fit(again, loader, ckpt_path=path)
            epoch, batch = again.trained[0]
            resumes[path.relative_to(folder).as_posix()] = {"epoch": epoch, "batch": batch}
    (folder / "resumes.json").write_text(json.dumps(resumes, indent=1) + "\n", encoding="utf-8")


def make_lightning_counters() -> None:
    """Lightning's step counters where they could drift apart: gradient accumulation and manual optimization.

    5 batches per epoch, 2 epochs, a checkpoint after every optimizer step (mid-epoch and at the
    epoch's last batch) and at every epoch end. lightning_accum/: accumulate_grad_batches=2, so 3
    optimizer steps per epoch (the odd last batch closes its window early). lightning_manual/:
    manual optimization stepping on every second batch, 2 steps per epoch (the fifth batch's
    gradients are carried into the next epoch).
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    Automatic = _linear_classifier(lambda params: torch.optim.SGD(params, lr=0.1))

    class Manual(Automatic):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            if batch_idx % 2 == 1:
                self.optimizers().step()
                self.optimizers().zero_grad()
            return loss

    for folder, module, options in (("lightning_accum", Automatic, {"accumulate_grad_batches": 2}),
                                    ("lightning_manual", Manual, {})):
        L.seed_everything(SEED, verbose=False)
        data = torch.utils.data.TensorDataset(torch.randn(20, 4), torch.randint(0, 2, (20,)))
        callbacks = [ModelCheckpoint(dirpath=folder, filename="{epoch}-{step}", save_top_k=-1, save_last=True),
                     ModelCheckpoint(dirpath=f"{folder}/every_step", filename="{epoch}-{step}", save_top_k=-1,
                                     every_n_train_steps=1)]
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder,
                            **options)
        trainer.fit(module(), torch.utils.data.DataLoader(data, batch_size=4))


def _fsdp2_rank(rank: int, world_size: int, port: int) -> None:
    """One rank of make_dtensor (top level: torch.multiprocessing.spawn imports it by name)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    seed_everything()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    fully_shard(model, mesh=init_device_mesh("cpu", (world_size,)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    name = f"rank{rank}.pt" if world_size > 1 else "one_rank.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}, Path("dtensor") / name)
    dist.barrier()
    dist.destroy_process_group()


def make_dtensor() -> None:
    """torch.save(model.state_dict()) under FSDP2 (fully_shard on a CPU gloo mesh): DTensors.
    rank0.pt, rank1.pt: each rank's file of a 2-rank run (Shard(0): the 3-row weight splits 2 + 1);
    one_rank.pt: a 1-rank run, whose DTensors hold whole tensors."""
    import torch.multiprocessing as mp

    Path("dtensor").mkdir()
    for world_size, port in ((2, 29561), (1, 29562)):
        mp.spawn(_fsdp2_rank, args=(world_size, port), nprocs=world_size)


def _dcp_hf_rank(rank: int, world_size: int, port: int) -> None:
    """One rank of make_dcp_hf (top level: torch.multiprocessing.spawn imports it by name)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    seed_everything()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    if rank == 0:
        torch.save(model.state_dict(), Path("dcp_hf") / "whole.pt")
    fully_shard(model, mesh=init_device_mesh("cpu", (world_size,)))
    state = get_model_state_dict(model)
    mapping = {fqn: 1 for fqn in state}
    dcp.save(state, storage_writer=HuggingFaceStorageWriter(path="dcp_hf/ranks", fqn_to_index_mapping=mapping,
                                                            save_distributed=True))
    dcp.save(state, storage_writer=HuggingFaceStorageWriter(path="dcp_hf/consolidated", fqn_to_index_mapping=mapping,
                                                            save_distributed=True, enable_consolidation=True))
    dist.barrier()
    dist.destroy_process_group()


def make_dcp_hf() -> None:
    """torch.distributed.checkpoint's HuggingFaceStorageWriter under FSDP2 (fully_shard on a CPU
    gloo mesh, 2 ranks): ranks/ holds each rank's shard-0000R-model-00001-of-00001.safetensors with
    its DCP_SHARDING_INFO; consolidated/ the same plus the whole tensors DCP consolidates (an
    index + model-00001-of-00001.safetensors, the rank files under sharded/); whole.pt: the
    model's state dict before sharding, which the rank files' chunks make up."""
    import torch.multiprocessing as mp

    Path("dcp_hf").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.spawn(_dcp_hf_rank, args=(2, 29563), nprocs=2)


def make_skip_data() -> None:
    """torch.save under torch.serialization.skip_data(): skeleton.pt as it is written (storage
    records of zeros, CRC 0), filled.pt the same with every tensor's bytes written afterwards
    where torch.load under FakeTensorMode places them (`_checkpoint_offset`)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    seed_everything()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}
    folder = Path("skip_data")
    folder.mkdir()
    for name in ("skeleton.pt", "filled.pt"):
        with torch.serialization.skip_data():
            torch.save(state, folder / name)
    with FakeTensorMode():
        fake = torch.load(folder / "filled.pt", weights_only=True)
    with open(folder / "filled.pt", "r+b") as f:
        for section in ("model", "optimizer"):
            pairs = (list(zip(fake[section].values(), state[section].values(), strict=True)) if section == "model" else
                     [(fs[k], rs[k]) for i, fs in fake[section]["state"].items()
                      for rs in [state[section]["state"][i]] for k in fs])
            for fake_tensor, tensor in pairs:
                f.seek(fake_tensor.untyped_storage()._checkpoint_offset)
                f.write(tensor.contiguous().numpy().tobytes())


def _timm_run(folder: Path, epochs: int, updates: int, crash_at_save: bool = False) -> None:
    """timm train.py's loop with timm's own CheckpointSaver: 4 optimizer updates per epoch, a
    recovery file every 3 (--recovery-interval 3), --checkpoint-hist 2, a model EMA and the
    pickled args, eval loss as the metric. `epochs` whole epochs, then `updates` of the next;
    `crash_at_save`: the next epoch's end dies between CheckpointSaver._save and its os.replace."""
    import argparse

    from timm.utils import CheckpointSaver, ModelEmaV3

    seed_everything()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = ModelEmaV3(model, decay=0.9)
    args = argparse.Namespace(model="tiny_mlp", epochs=epochs + 1, recovery_interval=3, checkpoint_hist=2, lr=0.1)
    folder.mkdir(parents=True)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(folder),
                            recovery_dir=str(folder), decreasing=True, max_history=2)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for epoch in range(epochs + 1):
        for update_idx in range(4 if epoch < epochs else updates):
            batch = slice(4 * update_idx, 4 * update_idx + 4)
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            optimizer.zero_grad()
            ema.update(model, step=epoch * 4 + update_idx)
            if (update_idx + 1) % 3 == 0:
                saver.save_recovery(epoch, batch_idx=update_idx)
        with torch.no_grad():
            metric = torch.nn.functional.cross_entropy(model(x), y).item()
        if epoch < epochs:
            saver.save_checkpoint(epoch, metric=metric)
        elif crash_at_save:
            saver._save(os.path.join(saver.checkpoint_dir, "tmp" + saver.extension), epoch, metric)


def make_timm() -> None:
    """timm train.py's checkpoints, written by timm's CheckpointSaver (see _timm_run).

    timm/run/: 3 whole epochs (last, checkpoint-E for the best 2, model_best, recovery-1-2 and
    recovery-2-2). timm/crashed/: 2 whole epochs and 4 updates of the 3rd, whose end-of-epoch
    save died before os.replace: tmp.pth.tar (whole) beside last.pth.tar of the 2nd and
    recovery-2-2. resumes.json: the 0-based epoch timm's own resume_checkpoint returns for each
    file (train.py's start_epoch), with a fresh model and optimizer.
    """
    import json

    from timm.models._helpers import resume_checkpoint

    folder = Path("timm")
    _timm_run(folder / "run", epochs=3, updates=0)
    _timm_run(folder / "crashed", epochs=2, updates=4, crash_at_save=True)
    resumes = {}
    for path in sorted(folder.rglob("*.pth.tar")):
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        resumes[path.relative_to(folder).as_posix()] = resume_checkpoint(model, str(path), optimizer=optimizer,
                                                                         log_info=False)
    (folder / "resumes.json").write_text(json.dumps(resumes, indent=1) + "\n", encoding="utf-8")


def make_dcp() -> None:
    """torch.distributed.checkpoint.save from one process with no process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    seed_everything()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    # "step" and "extra" are non-tensor values: DCP stores them as torch.save'd byte items.
    state = {"model": model_state, "optim": optimizer_state, "step": 3, "extra": {"note": "tiny"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group" warning: single process on purpose
        dcp.save(state, checkpoint_id="dcp")


def make_save_pretrained_training_state() -> None:
    """EnStack's last_checkpoint/: save_pretrained model + training_state.pth, saved mid-epoch.

    The seed's trainer saves every save_steps batches with step=(step + 1) and at the end of an
    epoch with step=0; best_val_f1 comes from sklearn's f1_score (a numpy.float64) in such code,
    so we store it as numpy.float64 to exercise numpy scalars in the pickle.
    """
    from transformers import RobertaConfig, RobertaForSequenceClassification, get_linear_schedule_with_warmup

    seed_everything()
    config = RobertaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, num_labels=2,
    )
    model = RobertaForSequenceClassification(config)
    total_batches, epochs, steps_done = 6, 3, 4
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, 1, total_batches * epochs)
    ids = torch.randint(3, 64, (steps_done, 2, SEQ_LEN))
    labels = torch.randint(0, 2, (steps_done, 2))
    for step in range(steps_done):
        model(input_ids=ids[step], labels=labels[step]).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    save_path = Path("save_pretrained_training_state") / "last_checkpoint"
    model.save_pretrained(str(save_path))
    state_dict = {
        "epoch": 1,
        "step": steps_done,
        "total_batches": total_batches,
        "best_val_f1": np.float64(0.0667),
        "best_val_acc": 0.5,
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
    }
    torch.save(state_dict, save_path / "training_state.pth")


README_HEAD = """# Real checkpoints (generated; do not edit by hand)

Written by `scripts/make_real_fixtures.py` (run it to regenerate; it wipes this folder).
Tiny randomly initialised models, synthetic data, CPU, fixed seeds: tensors are byte-identical
from run to run; timings in `log_history` and DCP's `save_id` (a uuid) are not. The facts readers rely on
are described in `docs/formats-real.md` and pinned by `tests/test_real_fixtures.py`.

| fixture | written by |
|---|---|
| `hf_full/checkpoint-{4,8,10}/` | transformers `Trainer`, full fine-tune of a tiny GPT-2, gradient_accumulation_steps=2, 9 micro-batches per epoch (5 optimizer steps per epoch), 2 epochs, save/eval every 4 steps, metric_for_best_model=eval_loss |
| `hf_full_bin/checkpoint-4/` | EMULATED: copy of `hf_full/checkpoint-4` with `model.safetensors` replaced by `pytorch_model.bin` written with `torch.save(state_dict)`, as transformers 4.x did with `save_safetensors=False` (transformers 5 removed that option) |
| `hf_sharded/` | `GPT2LMHeadModel.save_pretrained(max_shard_size="20KB")`: `model.safetensors.index.json` + shards |
| `hf_lora/checkpoint-{4,8,10}/` | transformers `Trainer` + peft LoRA (r=4 on `c_attn`), same schedule as `hf_full`, fp32 |
| `hf_lora_bin/` | `PeftModel.save_pretrained(safe_serialization=False)`: `adapter_model.bin` + `adapter_config.json` |
| `hf_lora_bnb/checkpoint-8/` | as `hf_lora` with `optim="paged_adamw_32bit"` (the LlamaRec LLM ranker's optimizer; bitsandbytes, unpaged on a CPU): `optimizer.pt` holds `state1`/`state2` under `__bnb_optimizer_quant_state__` |
| `hf_save_only_model/checkpoint-4/` | as `hf_full` (1 epoch) with `save_only_model=True`: `model.safetensors`, `config.json`, `trainer_state.json`, `training_args.bin`, no optimizer, scheduler or RNG state |
| `bnb_8bit/ckpt.pt` | `torch.save({"model", "optimizer": bitsandbytes AdamW8bit(min_8bit_size=256).state_dict(), "epoch": 1})` after 2 steps: uint8 state with qmap/absmax for the 64x32 weight, float32 state for the rest |
| `accelerate/` | `Accelerator(cpu=True, gradient_accumulation_steps=2).save_state()` mid-epoch, after 3 optimizer steps (6 of 8 micro-batches): model, AdamW, StepLR, RNG, and a registered object (`custom_checkpoint_0.pkl`, `{"epoch": 0, "global_step": 3}`) |
| `lightning/` | Lightning `Trainer(max_epochs=2, logger=False)`, 3 batches per epoch, two `ModelCheckpoint`s: every epoch end + `save_last=True` (`epoch=0-step=3.ckpt`, `epoch=1-step=6.ckpt`, `last.ckpt`) and every 2 steps (`mid_epoch/epoch=0-step=2.ckpt`, `mid_epoch/epoch=1-step=4.ckpt`, `mid_epoch/epoch=1-step=6.ckpt`). The callback states inside hold absolute paths of the machine that ran the script |
| `lightning_weights_only/` | Lightning `ModelCheckpoint(save_weights_only=True, save_last=True)`, 2 epochs of 3 batches: `epoch=0-step=3.ckpt`, `epoch=1-step=6.ckpt`, `last.ckpt` without `optimizer_states` or `lr_schedulers` (`Trainer.fit(ckpt_path=...)` raises KeyError on them) |
| `lightning_resumed/` | Lightning `Trainer(max_epochs=2)`, 3 batches per epoch, a `ModelCheckpoint` at every epoch end and one every 2 steps (`mid_epoch/`), and `trainer.save_checkpoint("after_fit.ckpt")` after `fit` returned; `max_steps/after_fit.ckpt` the same after a `Trainer(max_steps=4)` run (stopped after the first batch of the second epoch); `resumes.json`: the epoch and batch index where a fresh `Trainer(max_epochs=3).fit(ckpt_path=...)` (`max_steps=12` for `max_steps/`) started on each file. `sharded.ckpt/` is EMULATED (Lightning's FSDP needs a GPU): the after-fit dict written as `FSDPStrategy(state_dict_type="sharded")` writes it, DCP (`model`, `optimizer_0` keyed by parameter name) + `meta.pt` |
| `lightning_accum/`, `lightning_manual/` | Lightning `Trainer(max_epochs=2)`, 5 batches per epoch, a `ModelCheckpoint` at every epoch end + `save_last=True` and one after every optimizer step (`every_step/`). `lightning_accum/`: `accumulate_grad_batches=2` (3 optimizer steps per epoch: the odd last batch steps alone). `lightning_manual/`: manual optimization stepping on every second batch (2 steps per epoch). `global_step` equals the loops' optimizer-step counter in every file |
| `dtensor/` | `torch.save({"model": model.state_dict(), "optimizer": ..., "epoch": 1})` under FSDP2 (`fully_shard` on a CPU gloo mesh, one AdamW step): `rank0.pt`, `rank1.pt` from a 2-rank run (DTensors holding `Shard(0)` parts: the 3-row weight splits 2 + 1), `one_rank.pt` from a 1-rank run |
| `dcp_hf/` | torch.distributed.checkpoint's `HuggingFaceStorageWriter(save_distributed=True)` under FSDP2 (`fully_shard` on a CPU gloo mesh, 2 ranks, `Linear(4, 8)` + `Linear(8, 3)`): `ranks/shard-0000{1,2}-model-00001-of-00001.safetensors` (each rank's `Shard(0)` parts, placed by `DCP_SHARDING_INFO`: the 3-row weight splits 2 + 1); `consolidated/` the same with `enable_consolidation=True` (whole tensors in `model-00001-of-00001.safetensors` + index, the rank files under `sharded/`); `whole.pt`: the state dict before sharding |
| `timm/` | timm's `CheckpointSaver` driven as timm's `train.py` drives it (a `Linear(4, 8)` + `Linear(8, 3)` MLP, SGD, `ModelEmaV3`, the pickled `args` Namespace, eval loss as the metric, 4 updates per epoch, `--recovery-interval 3`, `--checkpoint-hist 2`): `run/` 3 whole epochs (`last`, `checkpoint-{1,2}`, `model_best`, `recovery-{1,2}-2`); `crashed/` 2 whole epochs and 4 updates of the 3rd, whose end-of-epoch save died between `_save` and `os.replace` (`tmp.pth.tar`, whole). `resumes.json`: the 0-based epoch timm's own `resume_checkpoint` returns for each file |
| `skip_data/` | `torch.save({"model", "optimizer": AdamW after one step, "epoch": 1})` under `torch.serialization.skip_data()`: `skeleton.pt` as written (every storage record zeros, CRC 0; data.pkl and the rest with real CRC-32s), `filled.pt` the same with each tensor's bytes written afterwards at the offset `torch.load` under `FakeTensorMode` gives its storage (`_checkpoint_offset`): it loads equal to the state saved |
| `dcp/` | `torch.distributed.checkpoint.save` in one process without a process group: `{"model", "optim" (FQN-keyed, from get_state_dict), "step": 3, "extra": {...}}` -> `.metadata` + `__0_0.distcp` |
| `save_pretrained_training_state/last_checkpoint/` | EnStack's layout: RoBERTa sequence classifier `save_pretrained` + `torch.save` of `training_state.pth` (epoch=1, step=4 of total_batches=6, i.e. mid-epoch; best_val_f1 as numpy.float64) |

## Library versions used

"""  # noqa: E501 -- a markdown table row cannot be wrapped: each must stay on one line


def write_readme(versions: dict[str, str], alone: dict[str, str] | None = None) -> None:
    """The README with the versions of the full run; `alone`: {fixture: versions} of fixtures
    made on their own later (kept from the README already there when not remade)."""
    lines = [f"- {name} {version}" for name, version in versions.items()]
    if alone:
        lines += ["", "Made on their own later (`make_real_fixtures.py NAME...`):", ""]
        lines += [f"- `{name}`: {made_with}" for name, made_with in sorted(alone.items())]
    Path("README.md").write_text(README_HEAD + "\n".join(lines) + "\n", encoding="utf-8")


def _readme_versions() -> tuple[dict[str, str], dict[str, str]]:
    """The versions the README records: the full run's, and each fixture made on its own."""
    text = Path("README.md").read_text(encoding="utf-8").split("## Library versions used", 1)[-1]
    versions: dict[str, str] = {}
    alone: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("- `"):
            name, made_with = line[3:].split("`: ", 1)
            alone[name] = made_with
        elif line.startswith("- "):
            name, version = line[2:].split(" ", 1)
            versions[name] = version
    return versions, alone


MAKERS = {
    "hf_full": make_hf_full, "hf_full_bin": make_hf_full_bin, "hf_sharded": make_hf_sharded,
    "hf_lora": make_hf_lora, "hf_lora_bnb": make_hf_lora_bnb, "bnb_8bit": make_bnb_8bit,
    "hf_save_only_model": make_hf_save_only_model, "lightning_weights_only": make_lightning_weights_only,
    "accelerate": make_accelerate, "lightning": make_lightning, "lightning_counters": make_lightning_counters,
    "lightning_resumed": make_lightning_resumed, "dtensor": make_dtensor, "dcp_hf": make_dcp_hf,
    "skip_data": make_skip_data, "timm": make_timm,
    "dcp": make_dcp, "save_pretrained_training_state": make_save_pretrained_training_state,
}

_FOLDERS = {"lightning_counters": ("lightning_accum", "lightning_manual")}   # where a maker's name is not its folder's


def main() -> None:
    chosen = sys.argv[1:]
    unknown = [name for name in chosen if name not in MAKERS]
    if unknown:
        sys.exit(f"unknown fixture(s) {unknown}; known: {', '.join(MAKERS)}")
    torch.set_num_threads(1)
    if chosen:              # only these, beside the others already there
        os.chdir(FIXTURES)
        versions, alone = _readme_versions()
        import bitsandbytes
        import lightning
        import transformers

        made_with = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                     f"bitsandbytes {bitsandbytes.__version__}, lightning {lightning.__version__}")
        if "timm" in chosen:
            import timm

            made_with += f", timm {timm.__version__}"
        for name in chosen:
            for folder in _FOLDERS.get(name, (name,)):
                shutil.rmtree(folder, ignore_errors=True)
            print(f"-- {MAKERS[name].__name__}", flush=True)
            MAKERS[name]()
            alone[name] = made_with
        write_readme(versions, alone)
        return
    versions = library_versions()
    for name, version in versions.items():
        print(f"{name:13s} {version}")
    if FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    FIXTURES.mkdir(parents=True)
    os.chdir(FIXTURES)  # every path recorded inside a fixture stays relative
    for make in MAKERS.values():
        print(f"-- {make.__name__}", flush=True)
        make()
    write_readme(versions)
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"wrote {FIXTURES} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
