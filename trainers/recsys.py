"""The recsys trainer (the LlamaRec retriever's checkpoints): a sequential recommender on synthetic
interactions, in one file: config, data, model, loop, command line.

Commands (from the repository root)::

    python -m trainers.recsys --config tiny --out runs/rs                  # a second on a CPU
    python -m trainers.recsys --config tiny --out runs/rk --kill-at-micro-step 25   # a real crash
    python -m trainers.recsys --resume runs/rk                             # newest valid checkpoint
    python -m trainers.recsys --resume_from_checkpoint runs/rs/checkpoint-recent.pth.final --num_epochs 6

Checkpoints are the original's (``checkpoint-recent.pth`` overwritten each epoch,
``best_acc_model.pth`` by validation accuracy, ``checkpoint-recent.pth.final`` at the end;
``epoch`` = index of the last finished epoch) plus ckptkit's extras; see
:mod:`ckptkit.training.recsys_layout`. Ctrl+C or SIGTERM saves ``checkpoint-recent.pth`` at the
exact batch and exits.

The loop: one optimizer step = ``grad_accum`` batches (windows run across epoch ends); at each
epoch's end validation accuracy, then the checkpoints (recent, best, final).
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ckptkit.core.errors import CkptkitError
from ckptkit.training import (
    RECSYS,
    CheckpointManager,
    DataPosition,
    ProgressLine,
    ResumableSampler,
    ResumePoint,
    TrainingState,
    load_for_resume,
)
from ckptkit.training import recsys_layout as keys
from ckptkit.training.progress import render_epoch_position
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
    autocast,
    clip_and_step,
    kill_if_at,
    pick_device,
    resolve_precision,
    seed_training_streams,
    set_peak_lr,
    stop_at,
    stop_on_signals,
)

TRAINER_NAME = "recsys"  # stored in every checkpoint; `ckptkit resume` finds this module by it
# what `python -m` runs: trainers.recsys in the repository, ckptkit_trainers.recsys when installed
MODULE = __spec__.name if __spec__ is not None else "trainers.recsys"
DEFAULT_OUT = Path("experiments/lru/synthetic/models")  # the original's experiments/{model_code}/{dataset_code}/models


# -- config: stored in every checkpoint as a plain dict (weights_only loads it) -------------------

@dataclass(frozen=True)
class RecsysConfig:
    name: str
    num_users: int
    num_items: int
    num_clusters: int  # items belong to taste clusters; users walk mostly inside one: the structure to learn
    history_len: int  # interactions per user; the last one is held out for validation
    seq_len: int  # items of history the model reads to predict the next one
    embed_dim: int
    batch_size: int
    dropout: float = 0.1
    grad_accum: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    lr_decay: float = 0.999  # per optimizer step after warmup; independent of the epoch budget
    epochs: int = 50
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; resolved at start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecsysConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> RecsysConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, RecsysConfig] = {
    # Under a second on a laptop CPU: 40 users x 4 windows = 160 samples, 10 batches per epoch
    # (5 optimizer steps), 4 epochs.
    "tiny": RecsysConfig(
        name="tiny", num_users=40, num_items=30, num_clusters=3, history_len=9, seq_len=4, embed_dim=16,
        batch_size=16, grad_accum=2, learning_rate=1e-2, warmup_steps=3, lr_decay=0.98, epochs=4,
    ),
    # Roughly ml-100k's size (943 users, 1682 items), synthetic.
    "default": RecsysConfig(
        name="default", num_users=943, num_items=1682, num_clusters=19, history_len=41, seq_len=20,
        embed_dim=64, batch_size=128,
    ),
}
DEFAULT_PRESET = "default"


# -- data: synthetic interaction sequences, deterministic from a seed; nothing downloaded --------

_FOLLOW = 0.8  # share of steps to the cluster's next item


@dataclass(frozen=True)
class Sequences:
    """Each user walks through one taste cluster, mostly to the cluster's next item (a pattern a
    recurrent model can learn). Training samples are windows of ``seq_len`` items and the item
    that follows; validation asks for each user's held-out last item."""

    train_windows: torch.Tensor  # int64 [N, seq_len]: sample i is (train_windows[i], train_targets[i])
    train_targets: torch.Tensor  # int64 [N]
    val_windows: torch.Tensor  # int64 [num_users, seq_len]
    val_targets: torch.Tensor  # int64 [num_users]: the held-out last item

    @property
    def num_train(self) -> int:
        return int(self.train_targets.numel())

    def batch(self, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_windows[sample_ids], self.train_targets[sample_ids]


def synthetic_sequences(cfg: RecsysConfig) -> Sequences:
    g = torch.Generator().manual_seed(cfg.seed)  # its own generator: the global RNG streams never move
    per_cluster = cfg.num_items // cfg.num_clusters
    history = torch.empty(cfg.num_users, cfg.history_len, dtype=torch.int64)
    for user in range(cfg.num_users):
        cluster = int(torch.randint(cfg.num_clusters, (1,), generator=g))
        item = cluster * per_cluster + int(torch.randint(per_cluster, (1,), generator=g))
        for t in range(cfg.history_len):
            history[user, t] = item
            if float(torch.rand(1, generator=g)) < _FOLLOW:
                item = cluster * per_cluster + (item - cluster * per_cluster + 1) % per_cluster
            else:
                item = int(torch.randint(cfg.num_items, (1,), generator=g))
    train = history[:, :-1].unfold(1, cfg.seq_len + 1, 1).reshape(-1, cfg.seq_len + 1)
    return Sequences(
        train_windows=train[:, :-1].contiguous(), train_targets=train[:, -1].contiguous(),
        val_windows=history[:, -cfg.seq_len - 1:-1].contiguous(), val_targets=history[:, -1].clone(),
    )


# -- model: an LRU-style recommender (the original trains an LRU retriever) ----------------------

class LinearRecurrence(nn.Module):
    """h_t = lambda * h_{t-1} + W x_t, with a learned per-channel decay lambda in (0, 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.decay_logit = nn.Parameter(torch.zeros(dim))
        self.input = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decay = torch.sigmoid(self.decay_logit)
        inputs = self.input(x)
        h = torch.zeros_like(inputs[:, 0])
        for t in range(inputs.shape[1]):
            h = decay * h + inputs[:, t]
        return h


class SequentialRecommender(nn.Module):
    """Item embeddings through the recurrence, scored against every item (tied embeddings)."""

    def __init__(self, cfg: RecsysConfig) -> None:
        super().__init__()
        self.items = nn.Embedding(cfg.num_items, cfg.embed_dim)
        # scores are dot products with a unit-variance state: unit-norm item vectors start them near 0
        nn.init.normal_(self.items.weight, std=cfg.embed_dim ** -0.5)
        self.recurrence = LinearRecurrence(cfg.embed_dim)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.recurrence(self.dropout(self.items(windows))))
        return (h @ self.items.weight.T).float()

    def forward(self, windows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-item cross-entropy over all items."""
        return F.cross_entropy(self.logits(windows), targets)

    @torch.no_grad()
    def accuracy(self, windows: torch.Tensor, targets: torch.Tensor) -> float:
        """Share of users whose held-out next item is the top-scored one."""
        return float((self.logits(windows).argmax(dim=-1) == targets).float().mean().item())


# -- training ------------------------------------------------------------------------------------

def lr_factor(step: int, warmup_steps: int, decay: float) -> float:
    """Linear warmup, then exponential decay per step: an extended run keeps its schedule."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return decay ** (step - warmup_steps)


@dataclass
class RecsysRecord:
    """Where the run is (data position, optimizer steps) and the original's metric."""

    global_step: int
    position: DataPosition
    accuracy: float | None = None  # the last finished epoch's
    best_acc: float = -math.inf
    epoch_loss_sum: float = 0.0  # losses of this epoch's batches so far (saved: a resumed epoch's mean is whole)


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    record: RecsysRecord
    checkpoints: list[Path]


class RecsysRun:
    """All live objects of one run; ``run()`` trains until ``cfg.epochs`` or an interrupt."""

    def __init__(self, cfg: RecsysConfig, options: RunOptions, resume: ResumePoint | None = None) -> None:
        # The order of construction is fixed: the RNG streams, and so every checkpoint byte, depend on it.
        self.options = options
        self.device = pick_device(options.device)
        precision, self.notes = resolve_precision(cfg.precision, self.device)
        self.cfg = replace(cfg, precision=precision)
        self.data = synthetic_sequences(cfg)
        torch.manual_seed(cfg.seed)  # model init; the training streams get their own seed below
        self.model = SequentialRecommender(self.cfg).to(self.device)
        seed_training_streams(cfg.seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        factor = functools.partial(lr_factor, warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.sampler = ResumableSampler(self.data.num_train, cfg.batch_size, cfg.seed)
        self.stop = StopRequest()
        self.record = self._restore(resume) if resume else RecsysRecord(0, self.sampler.start_position(cfg.grad_accum))
        self.display = ProgressLine(options.progress_stream, every=options.progress_every)

    def run(self) -> TrainResult:
        r, cfg = self.record, self.cfg
        max_steps = cfg.epochs * self.sampler.steps_per_epoch // cfg.grad_accum
        saved: list[Path] = []
        status = "finished"
        # keep_last=None: every checkpoint name is overwritten in place, there is nothing to prune
        with CheckpointManager(self.options.out, keep_last=None, layout=RECSYS,
                               asynchronous=self.options.asynchronous_save) as manager:
            for leftover in manager.removed_leftovers:
                self.display.message(f"removed {leftover.name}: the unfinished write of a crashed save "
                                     "(the checkpoint it was to replace is intact)")
            batches = self.sampler.iterate_from(r.position)
            while r.position.epoch < cfg.epochs:
                windows, targets = (t.to(self.device) for t in self.data.batch(next(batches).sample_ids))
                with autocast(cfg.precision, self.device):
                    loss = self.model(windows, targets)
                self.scaler.scale(loss / cfg.grad_accum).backward()
                r.epoch_loss_sum += loss.item()
                r.position = r.position.advanced()
                if r.position.micro_step == 0:
                    clip_and_step(self.model, self.optimizer, self.scheduler, self.scaler)
                    r.global_step += 1
                if r.position.batch_in_epoch == 0:  # an epoch's end: validate first, the checkpoints carry it
                    kinds = self._end_epoch()
                    saved += manager.save(self._state(), kinds)
                self.display.update(r.position, r.global_step, max_steps)
                kill_if_at(self.options, r.position.batches_consumed)
                if self.stop.requested or stop_at(self.options, r.position.batches_consumed):
                    saved += manager.save(self._state(), ["interrupt"])
                    status = "interrupted"
                    break
        self.display.close()
        return TrainResult(status, r, saved)

    def _end_epoch(self) -> list[str]:
        """Validate, log the epoch's line, and name the checkpoints due: best, recent, final."""
        r = self.record
        loss = r.epoch_loss_sum / self.sampler.steps_per_epoch
        r.epoch_loss_sum = 0.0
        r.accuracy = self.evaluate()
        improved = r.accuracy > r.best_acc
        if improved:
            r.best_acc = r.accuracy
        self.display.message(f"epoch {r.position.epoch}/{self.cfg.epochs} | step {r.global_step} | loss {loss:.4f} | "
                             f"acc {r.accuracy:.4f}{' (best)' if improved else ''} | "
                             f"lr {self.optimizer.param_groups[0]['lr']:.2e}")
        final = r.position.epoch >= self.cfg.epochs
        return (["best"] if improved else []) + ["periodic"] + (["final"] if final else [])

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        with autocast(self.cfg.precision, self.device):
            accuracy = self.model.accuracy(self.data.val_windows.to(self.device), self.data.val_targets.to(self.device))
        self.model.train()
        return accuracy

    def _state(self) -> TrainingState:
        r = self.record
        return TrainingState(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=self.cfg.to_dict(), position=r.position, global_step=r.global_step, trainer=TRAINER_NAME,
            family_fields={keys.ACCURACY: r.accuracy, keys.BEST_ACC: r.best_acc if math.isfinite(r.best_acc) else None,
                           keys.EPOCH_LOSS_SUM: r.epoch_loss_sum},
        )

    def _restore(self, resume: ResumePoint) -> RecsysRecord:
        restored = resume.restore(self.model, self.optimizer, self.scheduler, self.scaler)
        position, ckpt = restored.position, resume.checkpoint
        if position is None:  # LlamaRec's own checkpoint: 'epoch' = epochs finished (ckptkit.families.llamarec)
            position = replace(self.sampler.start_position(self.cfg.grad_accum), epoch=int(ckpt[keys.EPOCH]))
            restored.warnings.append("no data_position: continuing at the start of the next epoch")
        else:
            restored.warnings += self.sampler.resume_warnings(position)
        self.notes += restored.warnings
        if resume.config.get("learning_rate", self.cfg.learning_rate) != self.cfg.learning_rate:  # --lr on resume
            lr, step = self.cfg.learning_rate, self.scheduler.last_epoch
            set_peak_lr(self.optimizer, self.scheduler, lr, lr_factor(step, self.cfg.warmup_steps, self.cfg.lr_decay))
        best, accuracy = ckpt.get(keys.BEST_ACC), ckpt.get(keys.ACCURACY)
        return RecsysRecord(
            global_step=restored.global_step, position=position,
            accuracy=None if accuracy is None else float(accuracy),
            best_acc=-math.inf if best is None else float(best),
            epoch_loss_sum=float(ckpt.get(keys.EPOCH_LOSS_SUM, 0.0)),
        )


# -- command line: the original's flags (--lr, --num_epochs, --resume_from_checkpoint) ----------

CONFIG_FLAGS = {"batch_size": "batch_size", "gradient_accumulation": "grad_accum", "lr": "learning_rate",
                "seed": "seed", "precision": "precision", "epochs": "epochs"}  # flag -> RecsysConfig field


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="Sequential recommender on built-in synthetic interactions."
    )
    parser.add_argument(
        "--config", "--dataset_code", choices=sorted(PRESETS), help=f"model/data preset (default {DEFAULT_PRESET})"
    )
    parser.add_argument("--batch_size", "--batch-size", type=int, help="batch size (default 128)")
    parser.add_argument("--epochs", "--num_epochs", type=int, help="total epochs; on resume, raise it to train further")
    parser.add_argument("--gradient-accumulation", type=int, help="batches per optimizer step (default 1)")
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--lr", type=float, help="peak learning rate; on resume, the new peak from the next step on")
    parser.add_argument("--seed", type=int, help="seed for data, init and sampling order")
    parser.add_argument(
        "--out", type=Path, help=f"run directory (default {DEFAULT_OUT}; on resume: the checkpoint's run)"
    )
    parser.add_argument("--resume", "--resume_from_checkpoint", type=Path, metavar="PATH|RUN_DIR",
                        help="checkpoint, or run directory (newest valid)")
    add_run_flags(parser)
    parser.set_defaults(keep_last=None)  # every checkpoint name is overwritten in place: nothing to prune
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, start or resume, train (Ctrl+C/SIGTERM: save and stop), say how it ended.
    Exit code: 0; 2 for unusable input; 128+signal after a signal."""
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, flag) for flag, name in CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    try:
        prepared = prepare(args, overrides)
    except CkptkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(prepared, str):
        print(f"error: {prepared}", file=sys.stderr)
        return EXIT_USAGE
    run = RecsysRun(*prepared)
    for note in run.notes:
        run.display.message(f"  warning: {note}")
    with stop_on_signals(run.stop):
        result = run.run()
    out, position = run.options.out, result.record.position
    if result.status == "interrupted":
        # an epoch's end and the interrupt may both have written checkpoint-recent.pth
        saved = ", ".join(dict.fromkeys(p.name for p in result.checkpoints))
        run.display.message(f"interrupted in epoch {position.epoch + 1} after batch {position.batch_in_epoch}/"
                            f"{position.steps_per_epoch}; saved {saved}")
        run.display.message(f"resume with: python -m {MODULE} --resume {out}")
        return run.stop.exit_code
    final = [p.name for p in result.checkpoints if p.name == keys.FINAL_NAME]
    run.display.message(f"finished: {position.epoch} epochs, step {result.record.global_step}; final checkpoint "
                        f"{out / final[-1] if final else out}")
    return EXIT_OK


def prepare(
    args: argparse.Namespace, overrides: dict[str, Any]
) -> tuple[RecsysConfig, RunOptions, ResumePoint | None] | str:
    """A fresh run's (config, options, None), a resumed one's (config, options, point), or why not."""
    if args.resume is None:
        out = args.out or DEFAULT_OUT
        if error := existing_run_error(out):
            return error
        cfg = PRESETS[args.config or DEFAULT_PRESET].with_overrides(**overrides)
        print(f"training {cfg.name} ({cfg.num_users} users, {cfg.num_items} items, {cfg.epochs} epochs) into {out}",
              flush=True)
        return cfg, run_options(args, out), None
    point = load_for_resume(args.resume)
    cfg, notes = config_for_resume(point, args, overrides, RecsysConfig, TRAINER_NAME)
    out = args.out or (point.path.parent if point.path.is_file() else point.path)
    at = render_epoch_position(point.position, point.global_step, cfg.epochs) if point.position is not None else None
    print("\n".join(resume_report(point, at, notes)), flush=True)
    # LlamaRec's own 'epoch' = epochs finished (0: none)
    done = point.position.epoch if point.position is not None else int(point.checkpoint.get(keys.EPOCH, 0))
    if done >= cfg.epochs:
        return (f"{point.path} is a finished run: epoch {done} of {cfg.epochs}. Nothing to resume. "
                f"To train further: --epochs N (N > {done}).")
    return cfg, run_options(args, out), point


if __name__ == "__main__":
    sys.exit(main())
