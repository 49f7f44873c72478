"""The LM training loop, on ckptkit.training: sampler, checkpoint manager, exact resume.

One optimizer step = ``grad_accum`` micro-batches; accumulation windows run across epoch
boundaries (see ckptkit.training.sampler). After each micro-batch the run may be killed
(``kill_at_micro_step``: SIGKILL, a real crash) or stopped (``stop_at_micro_step``, SIGTERM,
SIGINT: an interrupt checkpoint at that exact micro-step, then a clean exit).
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ckptkit.training import (
    CheckpointManager,
    DataPosition,
    ProgressLine,
    ResumableSampler,
    RestoredProgress,
    ResumePoint,
    TrainingState,
)
from trainers.lm.config import LMConfig
from trainers.lm.data import VOCAB_SIZE, train_and_val
from trainers.lm.model import GPT
from trainers.runtime import RunOptions as CommonRunOptions
from trainers.runtime import autocast, kill_if_at, pick_device, seed_training_streams

TRAINER_NAME = "lm"


@dataclass
class RunOptions(CommonRunOptions):
    """The options every bundled trainer takes, and FSDP (sharded saves through DCP)."""

    fsdp: bool = False


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    global_step: int
    position: DataPosition
    checkpoints: list[Path]
    train_history: list[dict[str, Any]] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)


def resolve_precision(requested: str, device: torch.device) -> tuple[str, list[str]]:
    """bf16 autocast on CUDA, fp32 on CPU; a saved GPU precision falls back to fp32 on CPU, with a note."""
    if requested == "auto":
        return ("bf16" if device.type == "cuda" else "fp32"), []
    if requested in ("bf16", "fp16") and device.type != "cuda":
        return "fp32", [f"precision {requested} needs CUDA; training in fp32 on CPU (numbers will differ from a GPU run)"]
    return requested, []


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup, then cosine decay to 10% at max_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


class LMRun:
    """All live objects of one run; ``run()`` trains until max_steps or an interrupt."""

    def __init__(self, cfg: LMConfig, options: RunOptions, resume: ResumePoint | None = None) -> None:
        self.options = options
        self.rank, self.world_size = _rank_world()
        self.device = pick_device(options.device)
        precision, self.notes = resolve_precision(cfg.precision, self.device)
        self.cfg = replace(cfg, precision=precision)
        self.train_set, self.val_set = train_and_val(cfg.corpus_chars, cfg.block_size, cfg.seed)
        torch.manual_seed(cfg.seed)  # model init; the training streams get their own seeds below
        self.model = self._wrap(GPT(self.cfg, VOCAB_SIZE).to(self.device))
        seed_training_streams(cfg.seed, self.rank)
        self.optimizer = _make_optimizer(self.model, self.cfg)
        factor = functools.partial(lr_factor, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.sampler = ResumableSampler(
            self.train_set.num_samples, cfg.batch_size, cfg.seed, world_size=self.world_size, rank=self.rank
        )
        self.stop_requested = False
        self.stop_signal: int | None = None  # SIGINT/SIGTERM that asked for the stop, if any
        self.progress = self._restore(resume) if resume else RestoredProgress(
            global_step=0, position=self.sampler.start_position(cfg.grad_accum),
            best_val_loss=math.inf, train_history=[], val_history=[],
        )
        self.last_val_loss = self.progress.val_history[-1]["val_loss"] if self.progress.val_history else None
        stream = options.progress_stream if options.progress_stream is not None else sys.stdout
        self.display = ProgressLine(stream if self.rank == 0 else io.StringIO())

    def log(self, text: str) -> None:
        if self.rank == 0:
            self.display.message(text)

    def run(self) -> TrainResult:
        p = self.progress
        saved: list[Path] = []
        with CheckpointManager(
            self.options.out, keep_last=self.options.keep_last, sharded=self.options.fsdp,
            asynchronous=self.options.asynchronous_save,
        ) as manager:
            for leftover in manager.removed_leftovers:
                self.log(f"removed {leftover.name}: the unfinished write of a crashed save (the checkpoint it was to replace is intact)")
            batches = self.sampler.iterate_from(p.position)
            status = "finished"
            while p.global_step < self.cfg.max_steps:
                self._micro_step(next(batches))
                if p.position.micro_step == 0:
                    saved += self._finish_window(manager)
                self.display.update(p.position, p.global_step, self.cfg.max_steps)
                self._maybe_kill()
                if self._should_stop():
                    saved += manager.save(self._state(), ["interrupt"])
                    status = "interrupted"
                    break
        self.display.close()
        if self.world_size > 1:
            dist.barrier()  # rank 0's last write is on disk before any rank goes on (to resume from it)
        return TrainResult(status, p.global_step, p.position, saved, p.train_history, p.val_history)

    def _micro_step(self, batch: Any) -> None:
        p, cfg = self.progress, self.cfg
        inputs, targets = (t.to(self.device) for t in self.train_set.batch(batch.sample_ids))
        last_in_window = p.position.micro_step + 1 == cfg.grad_accum
        with self._gradient_sync(last_in_window):
            with self._autocast():
                _, loss = self.model(inputs, targets)
            self.scaler.scale(loss / cfg.grad_accum).backward()
        p.window_loss_sum += loss.item()
        p.position = p.position.advanced()

    def _finish_window(self, manager: CheckpointManager) -> list[Path]:
        p, cfg = self.progress, self.cfg
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        p.global_step += 1
        loss = self._mean_over_ranks(p.window_loss_sum / cfg.grad_accum)
        p.window_loss_sum = 0.0
        epoch = round(p.position.batches_consumed / p.position.steps_per_epoch, 4)  # float, as HF's log_history
        p.train_history.append({"step": p.global_step, "loss": loss, "lr": lr, "epoch": epoch})
        if p.global_step % cfg.log_interval == 0:
            self.log(f"step {p.global_step}/{cfg.max_steps} | epoch {p.position.epoch + 1} "
                     f"batch {p.position.batch_in_epoch}/{p.position.steps_per_epoch} | loss {loss:.4f} | lr {lr:.2e}")
        kinds = []
        if p.global_step % cfg.eval_interval == 0 or p.global_step == cfg.max_steps:
            if self._evaluate() < p.best_val_loss:
                p.best_val_loss = self.last_val_loss  # type: ignore[assignment]
                kinds.append("best")
        if p.global_step % cfg.save_interval == 0:
            kinds.append("periodic")
        if p.global_step >= cfg.max_steps:
            kinds.append("final")
        return manager.save(self._state(), kinds) if kinds else []

    @torch.no_grad()
    def _evaluate(self) -> float:
        batch_size = min(self.cfg.batch_size, self.val_set.num_samples)
        count = max(1, min(self.cfg.eval_batches, self.val_set.num_samples // batch_size))
        self.model.eval()
        losses = []
        for i in range(count):
            inputs, targets = (t.to(self.device) for t in self.val_set.batch(torch.arange(i * batch_size, (i + 1) * batch_size)))
            with self._autocast():
                losses.append(self.model(inputs, targets)[1].item())
        self.model.train()
        self.last_val_loss = sum(losses) / len(losses)
        best = " (best)" if self.last_val_loss < self.progress.best_val_loss else ""
        self.progress.val_history.append({"step": self.progress.global_step, "val_loss": self.last_val_loss})
        self.log(f"eval step {self.progress.global_step}: val_loss {self.last_val_loss:.4f}{best}")
        return self.last_val_loss

    def _state(self) -> TrainingState:
        p = self.progress
        return TrainingState(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=self.cfg.to_dict(), position=p.position, global_step=p.global_step,
            best_val_loss=p.best_val_loss, last_val_loss=self.last_val_loss, train_history=p.train_history,
            val_history=p.val_history, window_loss_sum=p.window_loss_sum, trainer=TRAINER_NAME,
        )

    def _restore(self, resume: ResumePoint) -> RestoredProgress:
        progress = resume.restore(
            self.model, self.optimizer, self.scheduler, self.scaler, rank=self.rank, world_size=self.world_size
        )
        if progress.position is None:  # a foreign checkpoint: start its epoch over, with a warning
            progress.position = self.sampler.start_position(self.cfg.grad_accum)
        else:
            progress.warnings += self.sampler.resume_warnings(progress.position)
        self.notes += progress.warnings
        return progress

    def _maybe_kill(self) -> None:
        kill_if_at(self.options, self.progress.position.batches_consumed)

    def _should_stop(self) -> bool:
        target = self.options.stop_at_micro_step
        local = self.stop_requested or (target is not None and self.progress.position.batches_consumed >= target)
        if self.world_size == 1:
            return local
        if self.progress.position.micro_step:  # ranks' partial gradients differ: stop at window ends only
            return False
        flag = torch.tensor([int(local)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _mean_over_ranks(self, value: float) -> float:
        if self.world_size == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(total)
        return float(total.item()) / self.world_size

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.options.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            return fully_shard(model)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        if self.options.fsdp:
            self.model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        elif self.world_size > 1 and not sync:
            return self.model.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.cfg.precision, self.device)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _make_optimizer(model: torch.nn.Module, cfg: LMConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings' 1-D parameters (as nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95))


@contextlib.contextmanager
def distributed_session() -> Iterator[None]:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    owns = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        if owns:
            dist.destroy_process_group()
