"""The LM trainer (the run_experiment.py LM): a small GPT on built-in synthetic text, in one file:
config, data, model, loop, command line (after karpathy/nanoGPT's train.py).

Commands (from the repository root)::

    # a few seconds on a laptop CPU
    python -m trainers.lm --config tiny --out runs/tiny
    # interrupt it for real mid-epoch (SIGKILL after batch 25), then resume exactly where it was
    python -m trainers.lm --config tiny --out runs/tiny-k --kill-at-micro-step 25
    python -m trainers.lm --resume runs/tiny-k             # newest valid checkpoint of the run
    python -m trainers.lm --resume runs/tiny-k/checkpoint_step_20.pt
    # a finished run: continue to 80 steps
    python -m trainers.lm --resume runs/tiny --extend-steps 80
    # the original's presets: small, medium (default), large, xlarge, rtx4090
    python -m trainers.lm --config rtx4090 --out runs/4090
    # several GPUs (or CPU ranks on gloo): DDP; with --fsdp, sharded DCP checkpoints
    torchrun --nproc-per-node 2 -m trainers.lm --config tiny --out runs/ddp
    torchrun --nproc-per-node 2 -m trainers.lm --config tiny --out runs/fsdp --fsdp

Checkpoints (``checkpoint_step_{N}.pt``, ``best_model.pt``, ``final_model.pt``, each with a
``.manifest.json``) are plain dicts in the original's layout; ``torch.load(path, weights_only=True)``
reads them. Ctrl+C or SIGTERM saves ``checkpoint_step_{N}[_micro_{k}].pt`` at the exact micro-step
and exits; resuming from it continues as if nothing happened (bitwise on CPU).

The loop: one optimizer step = ``grad_accum`` micro-batches (windows run across epoch ends, see
ckptkit.training.sampler); every ``eval_interval`` steps a validation loss (``best_model.pt``),
every ``save_interval`` steps ``checkpoint_step_{N}.pt``, at ``max_steps`` ``final_model.pt``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ckptkit.core.errors import CkptkitError
from ckptkit.training import (
    CheckpointManager,
    DataPosition,
    ProgressLine,
    RestoredProgress,
    ResumableSampler,
    ResumePoint,
    TrainingState,
    load_for_resume,
    rank_and_world_size,
    render_progress,
)
from ckptkit.training.run_command import (
    EXIT_OK,
    EXIT_USAGE,
    add_run_flags,
    config_for_resume,
    existing_run_error,
    resume_report,
    run_options,
)
from ckptkit.training.runtime import (
    RunOptions,
    StopRequest,
    any_rank,
    autocast,
    clip_and_step,
    distributed_session,
    kill_if_at,
    mean_over_ranks,
    pick_device,
    resolve_precision,
    seed_training_streams,
    stop_at,
    stop_on_signals,
)

TRAINER_NAME = "lm"  # stored in every checkpoint; `ckptkit resume` finds this module by it
# what `python -m` runs: trainers.lm in the repository, ckptkit_trainers.lm when installed
MODULE = __spec__.name if __spec__ is not None else "trainers.lm"


# -- config: stored in every checkpoint as a plain dict (weights_only loads it) -------------------

# Flags that only change when we save or evaluate: a resumed run may change them.
SCHEDULE_FIELDS = ("save_interval", "eval_interval", "log_interval")


@dataclass(frozen=True)
class LMConfig:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    dropout: float = 0.1
    grad_accum: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 2000
    save_interval: int = 500
    eval_interval: int = 250
    eval_batches: int = 8
    log_interval: int = 50
    seed: int = 1337
    corpus_chars: int = 1_000_000
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; resolved to a concrete value when a run starts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> LMConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def approx_params(self, vocab_size: int) -> int:
        return 12 * self.n_layer * self.n_embd**2 + (vocab_size + self.block_size) * self.n_embd


PRESETS: dict[str, LMConfig] = {
    # Seconds on a laptop CPU: 11 batches per epoch, so 40 steps cross three epoch boundaries.
    "tiny": LMConfig(
        name="tiny", n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, learning_rate=3e-3,
        warmup_steps=5, max_steps=40, save_interval=10, eval_interval=10, eval_batches=2,
        log_interval=10, corpus_chars=1600,
    ),
    # Sizes as in the original's guide (~2M, ~15M, ~60M, ~200M, ~100M parameters).
    "small": LMConfig(name="small", n_layer=4, n_head=4, n_embd=192, block_size=128, batch_size=2, learning_rate=1e-3),
    "medium": LMConfig(
        name="medium", n_layer=6, n_head=7, n_embd=448, block_size=256, batch_size=4, learning_rate=6e-4
    ),
    "large": LMConfig(name="large", n_layer=12, n_head=10, n_embd=640, block_size=256, batch_size=8),
    "xlarge": LMConfig(
        name="xlarge", n_layer=16, n_head=16, n_embd=1024, block_size=512, batch_size=4, corpus_chars=4_000_000,
    ),
    "rtx4090": LMConfig(
        name="rtx4090", n_layer=12, n_head=13, n_embd=832, block_size=512, batch_size=32, corpus_chars=8_000_000,
    ),
}
DEFAULT_PRESET = "medium"  # the original's default

# -- data: synthetic text generated in code, nothing downloaded ----------------------------------
# Sentences from a small grammar ("the quiet robot paints a red lamp.") mixed with arithmetic facts
# ("7 plus 5 is 12."): structure to learn, a falling loss to show. Characters are the tokens; the
# alphabet is fixed, so the vocabulary never depends on the data.

ALPHABET = "\n .,abcdefghijklmnopqrstuvwxyz0123456789"
VOCAB_SIZE = len(ALPHABET)
_INDEX = {c: i for i, c in enumerate(ALPHABET)}

_DETERMINERS = ["the", "a", "every", "one", "that"]
_ADJECTIVES = ["quiet", "red", "small", "bright", "old", "clever", "heavy", "blue", "slow", "warm"]
_NOUNS = ["robot", "lamp", "river", "cat", "engine", "garden", "letter", "tower", "model", "cloud"]
_VERBS = ["paints", "follows", "lifts", "finds", "builds", "watches", "carries", "opens"]


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.3:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"{a} plus {b} is {a + b}."
    words = [rng.choice(_DETERMINERS), rng.choice(_ADJECTIVES), rng.choice(_NOUNS), rng.choice(_VERBS)]
    words += [rng.choice(_DETERMINERS), rng.choice(_ADJECTIVES), rng.choice(_NOUNS)]
    return " ".join(words) + "."


def synthetic_text(num_chars: int, seed: int) -> str:
    rng = random.Random(seed)  # its own generator: building data never moves the global RNGs
    parts: list[str] = []
    length = 0
    while length < num_chars:
        line = " ".join(_sentence(rng) for _ in range(rng.randint(2, 5))) + "\n"
        parts.append(line)
        length += len(line)
    return "".join(parts)[:num_chars]


def encode(text: str) -> torch.Tensor:
    return torch.tensor([_INDEX[c] for c in text], dtype=torch.long)


class TextWindows:
    """Non-overlapping windows of ``block_size + 1`` tokens; sample i is inputs and next-token targets."""

    def __init__(self, tokens: torch.Tensor, block_size: int) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.num_samples = (len(tokens) - 1) // block_size

    def batch(self, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts = sample_ids * self.block_size
        offsets = torch.arange(self.block_size + 1)
        windows = self.tokens[starts[:, None] + offsets[None, :]]
        return windows[:, :-1], windows[:, 1:]


def train_and_val(corpus_chars: int, block_size: int, seed: int) -> tuple[TextWindows, TextWindows]:
    """90% / 10% split of one corpus; the split never changes with the number of ranks."""
    tokens = encode(synthetic_text(corpus_chars, seed))
    cut = int(len(tokens) * 0.9)
    return TextWindows(tokens[:cut], block_size), TextWindows(tokens[cut:], block_size)

# -- model: a small GPT (after nanoGPT's model.py): pre-norm blocks, causal SDPA, tied embeddings --

class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        q, k, v = (t.view(batch, time, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(batch, time, channels)))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: LMConfig, vocab_size: int) -> None:
        super().__init__()
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one tensor under two state_dict keys
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


# -- training ------------------------------------------------------------------------------------

def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup, then cosine decay to 10% at max_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    global_step: int
    position: DataPosition
    checkpoints: list[Path]
    train_history: list[dict[str, Any]] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)


class LMRun:
    """All live objects of one run; ``run()`` trains until max_steps or an interrupt."""

    def __init__(self, cfg: LMConfig, options: RunOptions, resume: ResumePoint | None = None) -> None:
        # The order of construction is fixed: the RNG streams, and so every checkpoint byte, depend on it.
        self.options = options
        self.rank, self.world_size = rank_and_world_size()
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
        self.stop = StopRequest()
        fresh = RestoredProgress(
            global_step=0, position=self.sampler.start_position(cfg.grad_accum),
            best_val_loss=math.inf, train_history=[], val_history=[],
        )
        self.progress = self._restore(resume) if resume else fresh
        self.last_val_loss = self.progress.val_history[-1]["val_loss"] if self.progress.val_history else None
        stream = options.progress_stream if self.rank == 0 else io.StringIO()
        self.display = ProgressLine(stream, every=options.progress_every)

    @property
    def position(self) -> DataPosition:
        """The next batch to train on. Always set: a fresh run starts at the sampler's start and
        `_restore` gives a checkpoint saved without one (a foreign one) the start of its epoch."""
        assert self.progress.position is not None, "set in __init__"
        return self.progress.position

    def log(self, text: str) -> None:
        if self.rank == 0:
            self.display.message(text)

    def run(self) -> TrainResult:
        p = self.progress
        saved: list[Path] = []
        status = "finished"
        with CheckpointManager(self.options.out, keep_last=self.options.keep_last, sharded=self.options.fsdp,
                               asynchronous=self.options.asynchronous_save) as manager:
            for leftover in manager.removed_leftovers:
                self.log(
                    f"removed {leftover.name}: the unfinished write of a crashed save "
                    "(the checkpoint it was to replace is intact)"
                )
            batches = self.sampler.iterate_from(self.position)
            while p.global_step < self.cfg.max_steps:
                self._micro_step(next(batches))
                if self.position.micro_step == 0:
                    saved += self._finish_window(manager)
                self.display.update(self.position, p.global_step, self.cfg.max_steps)
                kill_if_at(self.options, self.position.batches_consumed)
                if self._should_stop():
                    saved += manager.save(self._state(), ["interrupt"])
                    status = "interrupted"
                    break
        self.display.close()
        if self.world_size > 1:
            torch.distributed.barrier()  # rank 0's last write is on disk before any rank goes on (to resume from it)
        return TrainResult(status, p.global_step, self.position, saved, p.train_history, p.val_history)

    def _micro_step(self, batch: Any) -> None:
        p, cfg = self.progress, self.cfg
        inputs, targets = (t.to(self.device) for t in self.train_set.batch(batch.sample_ids))
        last_in_window = self.position.micro_step + 1 == cfg.grad_accum
        with self._gradient_sync(last_in_window):
            with autocast(cfg.precision, self.device):
                _, loss = self.model(inputs, targets)
            self.scaler.scale(loss / cfg.grad_accum).backward()
        p.window_loss_sum += loss.item()
        p.position = self.position.advanced()

    def _finish_window(self, manager: CheckpointManager) -> list[Path]:
        """The optimizer step, its log line, and the checkpoints due at this step."""
        p, cfg = self.progress, self.cfg
        lr = self.optimizer.param_groups[0]["lr"]
        clip_and_step(self.model, self.optimizer, self.scheduler, self.scaler)
        p.global_step += 1
        loss = mean_over_ranks(p.window_loss_sum / cfg.grad_accum, self.device, self.world_size)
        p.window_loss_sum = 0.0
        epoch = round(self.position.batches_consumed / self.position.steps_per_epoch, 4)  # float, as HF's log_history
        p.train_history.append({"step": p.global_step, "loss": loss, "lr": lr, "epoch": epoch})
        if p.global_step % cfg.log_interval == 0:
            self.log(
                f"step {p.global_step}/{cfg.max_steps} | epoch {self.position.epoch + 1} "
                f"batch {self.position.batch_in_epoch}/{self.position.steps_per_epoch} | loss {loss:.4f} | lr {lr:.2e}"
            )
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
            inputs, targets = (
                t.to(self.device) for t in self.val_set.batch(torch.arange(i * batch_size, (i + 1) * batch_size))
            )
            with autocast(self.cfg.precision, self.device):
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
            config=self.cfg.to_dict(), position=self.position, global_step=p.global_step,
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

    def _should_stop(self) -> bool:
        local = self.stop.requested or stop_at(self.options, self.position.batches_consumed)
        if self.world_size > 1 and self.position.micro_step:
            return False  # ranks' partial gradients differ: several ranks stop at window ends only
        return any_rank(local, self.device, self.world_size)

    def _wrap(self, model: GPT) -> nn.Module:
        """FSDP2 (each block, then the whole) with --fsdp; DDP under torchrun; else as is."""
        if self.options.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)  # in place: the same module, now sharded
            return model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Ranks exchange gradients once per window (its last micro-batch), not per micro-batch."""
        if self.options.fsdp:
            self.model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        elif self.world_size > 1 and not sync:
            return self.model.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()


def _make_optimizer(model: nn.Module, cfg: LMConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings' 1-D parameters (as nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95))


# -- command line: the original's presets; a resume may change the schedule flags ----------------

CONFIG_FLAGS = {  # flag -> LMConfig field
    "max_steps": "max_steps", "save_interval": "save_interval", "eval_interval": "eval_interval",
    "log_interval": "log_interval", "grad_accum": "grad_accum", "batch_size": "batch_size",
    "lr": "learning_rate", "seed": "seed", "precision": "precision",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="GPT-style LM on built-in synthetic text.")
    parser.add_argument("--config", choices=sorted(PRESETS), help=f"model/training preset (default {DEFAULT_PRESET})")
    parser.add_argument("--max-steps", type=int, help="optimizer steps to train")
    parser.add_argument("--save-interval", type=int, help="save checkpoint_step_N.pt every N steps")
    parser.add_argument("--eval-interval", type=int, help="evaluate (and maybe save best_model.pt) every N steps")
    parser.add_argument("--log-interval", type=int, help="print a log line every N steps")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--batch-size", type=int, help="micro-batch size per rank")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed for data, init and sampling order")
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--out", type=Path, help="run directory (default runs/lm; on resume: the checkpoint's run)")
    parser.add_argument(
        "--resume", type=Path, metavar="PATH|RUN_DIR", help="checkpoint, or run directory (newest valid)"
    )
    parser.add_argument("--extend-steps", type=int, metavar="N", help="continue a finished run up to N steps")
    parser.add_argument(
        "--keep-last", type=int, default=3, help="periodic checkpoints to keep (best and newest always kept)"
    )
    add_run_flags(parser, fsdp=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, start or resume, train (Ctrl+C/SIGTERM: save and stop), say how it ended.
    Exit code: 0; 2 for unusable input; 128+signal after a signal."""
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, flag) for flag, name in CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    with distributed_session():
        try:
            prepared = prepare(args, overrides)
        except CkptkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(prepared, str):
            print(f"error: {prepared}", file=sys.stderr)
            return EXIT_USAGE
        run = LMRun(*prepared)
        for note in run.notes:
            run.log(f"  warning: {note}")
        with stop_on_signals(run.stop):
            result = run.run()
    out = run.options.out
    if result.status == "interrupted":
        where = render_progress(result.position, result.global_step, run.cfg.max_steps)
        run.log(f"interrupted at {where}; saved {', '.join(p.name for p in result.checkpoints) or 'on rank 0'}")
        run.log(f"resume with: python -m {MODULE} --resume {out}")
        return run.stop.exit_code
    run.log(f"finished: step {result.global_step}; final checkpoint {out / 'final_model.pt'}")
    return EXIT_OK


def prepare(
    args: argparse.Namespace, overrides: dict[str, Any]
) -> tuple[LMConfig, RunOptions, ResumePoint | None] | str:
    """A fresh run's (config, options, None), a resumed one's (config, options, point), or why not."""
    if args.resume is None:
        if args.extend_steps is not None:
            return "--extend-steps continues a finished run; pass it with --resume"
        out = args.out or Path("runs/lm")
        if error := existing_run_error(out):
            return error
        cfg = PRESETS[args.config or DEFAULT_PRESET].with_overrides(**overrides)
        _say(f"training {cfg.name} (~{cfg.approx_params(40) / 1e6:.2f}M parameters) into {out}")
        return cfg, run_options(args, out), None
    point = load_for_resume(args.resume)
    changes = {f: f"--{f.replace('_', '-')} {{value}} used (the run had {{old}})" for f in SCHEDULE_FIELDS}
    cfg, notes = config_for_resume(point, args, overrides, LMConfig, TRAINER_NAME, "LM", changes,
                                   hints={"max_steps": "; to train longer use --extend-steps"})
    if args.extend_steps is not None:
        if args.extend_steps <= point.global_step:
            raise CkptkitError(
                point.path,
                f"--extend-steps {args.extend_steps} is not beyond the checkpoint's step {point.global_step}",
            )
        notes.append(f"extending the run from max_steps {cfg.max_steps} to {args.extend_steps}")
        cfg = cfg.with_overrides(max_steps=args.extend_steps)
    out = args.out or (point.path.parent if point.path.is_file() or point.sharded else point.path)
    at = render_progress(point.position, point.global_step, cfg.max_steps) if point.position is not None else None
    _say("\n".join(resume_report(point, at, notes)))
    if point.global_step >= cfg.max_steps:
        return (f"{point.path} is a finished run: step {point.global_step} of max_steps {cfg.max_steps}. "
                f"Nothing to resume. To train further: --extend-steps N (N > {point.global_step}).")
    return cfg, run_options(args, out), point


def _say(text: str) -> None:
    if rank_and_world_size()[0] == 0:
        print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
