"""The retrieval trainer (the fashion recommender's checkpoints): a two-tower recommender
on synthetic interactions, in one file: config, data, model, loop, command line.

Commands (from the repository root)::

    python -m trainers.retrieval --config tiny --out runs/rtiny            # a second or two on a CPU
    python -m trainers.retrieval --config tiny --out runs/rk --kill-at-micro-step 30   # a real crash
    python -m trainers.retrieval --resume runs/rk                          # newest valid checkpoint
    python -m trainers.retrieval --resume runs/rtiny --epochs 8            # train a finished run further
    python -m trainers.retrieval --batch 64 --epochs 100 --gradient-accumulation 2 --mixed-precision

Checkpoints are the seed system's (``optimized_model_epoch_{E}_recall_{R:.4f}.pt`` at each epoch's
end, ``best_optimized_model_recall_{R:.4f}.pt``, ``final_optimized_model_epoch_{E}_recall_{R:.4f}.pt``;
``epoch`` stored as epoch+1) plus ckptkit's extras, with the GradScaler state the original never
saved; see :mod:`ckptkit.training.retrieval_layout`. Ctrl+C or SIGTERM saves
``interrupted_model_epoch_{E}_batch_{B}.pt`` at the exact batch and exits.

The loop: one optimizer step = ``grad_accum`` batches (windows run across epoch ends); at each
epoch's end Recall@10 on the held-out split, then the checkpoints (periodic, best, final).
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ckptkit.core.errors import CkptkitError
from ckptkit.training import (
    RETRIEVAL,
    CheckpointManager,
    DataPosition,
    ProgressLine,
    ResumableSampler,
    ResumePoint,
    TrainingState,
    load_for_resume,
)
from ckptkit.training import retrieval_layout as keys
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

TRAINER_NAME = "retrieval"  # stored in every checkpoint; `ckptkit resume` finds this module by it
# what `python -m` runs: trainers.retrieval in the repository, ckptkit_trainers.retrieval when installed
MODULE = __spec__.name if __spec__ is not None else "trainers.retrieval"


# -- config: stored in every checkpoint as a plain dict (weights_only loads it) -------------------

@dataclass(frozen=True)
class RetrievalConfig:
    name: str
    num_users: int
    num_items: int
    interactions_per_user: int  # positives per user; one more per user is held out for validation
    num_clusters: int  # users and items share latent taste clusters: the structure to learn
    embed_dim: int
    hidden_dim: int
    batch_size: int
    dropout: float = 0.1
    temperature: float = 0.1
    grad_accum: int = 2  # the original's default
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    lr_decay: float = 0.999  # per optimizer step after warmup; independent of the epoch budget
    epochs: int = 100
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (the original's --mixed-precision); resolved at start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> RetrievalConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, RetrievalConfig] = {
    # A second on a laptop CPU: 12 batches per epoch (6 optimizer steps), 4 epochs.
    "tiny": RetrievalConfig(
        name="tiny", num_users=48, num_items=96, interactions_per_user=8, num_clusters=6, embed_dim=16,
        hidden_dim=32, batch_size=32, learning_rate=1e-2, warmup_steps=4, lr_decay=0.98, epochs=4,
    ),
    # The original's command line defaults: --batch 64, --epochs 100, --gradient-accumulation 2.
    "default": RetrievalConfig(
        name="default", num_users=4000, num_items=8000, interactions_per_user=16, num_clusters=64,
        embed_dim=64, hidden_dim=256, batch_size=64,
    ),
}
DEFAULT_PRESET = "default"


# -- data: synthetic interactions, deterministic from a seed; nothing downloaded -----------------

_IN_CLUSTER = 0.9  # share of a user's interactions inside their own cluster


@dataclass(frozen=True)
class Interactions:
    """Users and items share taste clusters; every user has ``interactions_per_user`` training
    positives and one held-out positive (Recall@10: is it among the 10 best-scored items?)."""

    train_users: torch.Tensor  # int64 [N]: pair i is (train_users[i], train_items[i])
    train_items: torch.Tensor
    val_users: torch.Tensor  # int64 [num_users]: one held-out item per user
    val_items: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.train_users.numel())

    def batch(self, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_users[sample_ids], self.train_items[sample_ids]


def synthetic_interactions(cfg: RetrievalConfig) -> Interactions:
    g = torch.Generator().manual_seed(cfg.seed)  # its own generator: the global RNG streams never move
    user_cluster = torch.randint(cfg.num_clusters, (cfg.num_users,), generator=g)
    item_cluster = torch.arange(cfg.num_items) % cfg.num_clusters
    per_user = cfg.interactions_per_user + 1
    users, items = [], []
    for user in range(cfg.num_users):
        own = (item_cluster == user_cluster[user]).nonzero().flatten()
        chosen = torch.where(
            torch.rand(per_user, generator=g) < _IN_CLUSTER,
            own[torch.randint(len(own), (per_user,), generator=g)],
            torch.randint(cfg.num_items, (per_user,), generator=g),
        )
        users.append(torch.full((per_user,), user))
        items.append(chosen)
    all_users, all_items = torch.stack(users), torch.stack(items)  # [num_users, per_user]
    return Interactions(
        train_users=all_users[:, :-1].reshape(-1), train_items=all_items[:, :-1].reshape(-1),
        val_users=all_users[:, -1].clone(), val_items=all_items[:, -1].clone(),
    )


# -- model: user and item embeddings, each through an MLP, cosine scores ------------------------

class Tower(nn.Module):
    def __init__(self, count: int, cfg: RetrievalConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(count, cfg.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.embed_dim, cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, cfg.embed_dim),
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embedding(ids)
        return F.normalize((e + self.mlp(e)).float(), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, cfg: RetrievalConfig) -> None:
        super().__init__()
        self.user_tower = Tower(cfg.num_users, cfg)
        self.item_tower = Tower(cfg.num_items, cfg)
        self.temperature = cfg.temperature

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """In-batch softmax loss: each user's positive against the batch's other items."""
        logits = self.user_tower(users) @ self.item_tower(items).T / self.temperature
        return F.cross_entropy(logits, torch.arange(len(users), device=logits.device))

    @torch.no_grad()
    def recall_at(self, users: torch.Tensor, items: torch.Tensor, k: int = 10) -> float:
        """Share of users whose held-out item is among the k best-scored of all items."""
        all_items = self.item_tower(torch.arange(self.item_tower.embedding.num_embeddings, device=users.device))
        top = (self.user_tower(users) @ all_items.T).topk(k, dim=-1).indices
        return float((top == items[:, None]).any(dim=-1).float().mean().item())


# -- training ------------------------------------------------------------------------------------

def lr_factor(step: int, warmup_steps: int, decay: float) -> float:
    """Linear warmup, then exponential decay per step: an extended run keeps its schedule."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return decay ** (step - warmup_steps)


@dataclass
class RetrievalRecord:
    """Where the run is (data position, optimizer steps) and the original's own counters."""

    global_step: int
    position: DataPosition
    train_losses: list[float] = field(default_factory=list)
    val_recalls: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # losses of this epoch's batches so far (saved: a resumed epoch's mean is whole)

    @property
    def best_recall(self) -> float:
        return max(self.val_recalls, default=-1.0)


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    record: RetrievalRecord
    checkpoints: list[Path]


class RetrievalRun:
    """All live objects of one run; ``run()`` trains until ``cfg.epochs`` or an interrupt."""

    def __init__(self, cfg: RetrievalConfig, options: RunOptions, resume: ResumePoint | None = None) -> None:
        # The order of construction is fixed: the RNG streams, and so every checkpoint byte, depend on it.
        self.options = options
        self.device = pick_device(options.device)
        precision, self.notes = resolve_precision(cfg.precision, self.device)
        self.cfg = replace(cfg, precision=precision)
        self.data = synthetic_interactions(cfg)
        torch.manual_seed(cfg.seed)  # model init; the training streams get their own seed below
        self.model = TwoTower(self.cfg).to(self.device)
        seed_training_streams(cfg.seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        factor = functools.partial(lr_factor, warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.sampler = ResumableSampler(self.data.num_train, cfg.batch_size, cfg.seed)
        self.stop = StopRequest()
        fresh = RetrievalRecord(0, self.sampler.start_position(cfg.grad_accum))
        self.record = self._restore(resume) if resume else fresh
        self.display = ProgressLine(options.progress_stream, every=options.progress_every)

    def run(self) -> TrainResult:
        r, cfg = self.record, self.cfg
        max_steps = cfg.epochs * self.sampler.steps_per_epoch // cfg.grad_accum
        saved: list[Path] = []
        status = "finished"
        with CheckpointManager(self.options.out, keep_last=self.options.keep_last, layout=RETRIEVAL,
                               asynchronous=self.options.asynchronous_save) as manager:
            for leftover in manager.removed_leftovers:
                self.display.message(f"removed {leftover.name}: the unfinished write of a crashed save "
                                     "(the checkpoint it was to replace is intact)")
            batches = self.sampler.iterate_from(r.position)
            while r.position.epoch < cfg.epochs:
                users, items = (t.to(self.device) for t in self.data.batch(next(batches).sample_ids))
                with autocast(cfg.precision, self.device):
                    loss = self.model(users, items)
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
        """Validate, log the epoch's line, and name the checkpoints due: best, periodic, final."""
        r = self.record
        loss = r.epoch_loss_sum / self.sampler.steps_per_epoch
        r.epoch_loss_sum = 0.0
        recall = self.evaluate()
        improved = recall > r.best_recall
        r.train_losses.append(loss)
        r.val_recalls.append(recall)
        self.display.message(
            f"epoch {r.position.epoch}/{self.cfg.epochs} | step {r.global_step} | loss {loss:.4f} | "
            f"recall@10 {recall:.4f}{' (best)' if improved else ''} | "
            f"lr {self.optimizer.param_groups[0]['lr']:.2e}"
        )
        final = r.position.epoch >= self.cfg.epochs
        return (["best"] if improved else []) + ["periodic"] + (["final"] if final else [])

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        with autocast(self.cfg.precision, self.device):
            recall = self.model.recall_at(
                self.data.val_users.to(self.device), self.data.val_items.to(self.device), k=10
            )
        self.model.train()
        return recall

    def _state(self) -> TrainingState:
        r = self.record
        return TrainingState(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=self.cfg.to_dict(), position=r.position, global_step=r.global_step, trainer=TRAINER_NAME,
            family_fields={
                keys.LOSS: r.train_losses[-1] if r.train_losses else None,
                keys.RECALL: r.val_recalls[-1] if r.val_recalls else None,
                keys.TRAIN_LOSSES: r.train_losses, keys.VAL_RECALLS: r.val_recalls,
                keys.EPOCH_LOSS_SUM: r.epoch_loss_sum,
            },
        )

    def _restore(self, resume: ResumePoint) -> RetrievalRecord:
        restored = resume.restore(self.model, self.optimizer, self.scheduler, self.scaler)
        position, ckpt = restored.position, resume.checkpoint
        if position is None:  # the original trainer's checkpoint: 'epoch' is the number of epochs completed
            position = replace(self.sampler.start_position(self.cfg.grad_accum), epoch=int(ckpt[keys.EPOCH]))
            restored.warnings.append("no data_position: continuing at the start of the next epoch")
        else:
            restored.warnings += self.sampler.resume_warnings(position)
        self.notes += restored.warnings
        if resume.config.get("learning_rate", self.cfg.learning_rate) != self.cfg.learning_rate:  # --lr on resume
            lr, step = self.cfg.learning_rate, self.scheduler.last_epoch
            set_peak_lr(self.optimizer, self.scheduler, lr, lr_factor(step, self.cfg.warmup_steps, self.cfg.lr_decay))
        return RetrievalRecord(
            global_step=restored.global_step, position=position,
            train_losses=[float(x) for x in ckpt.get(keys.TRAIN_LOSSES) or []],
            val_recalls=[float(x) for x in ckpt.get(keys.VAL_RECALLS) or []],
            epoch_loss_sum=float(ckpt.get(keys.EPOCH_LOSS_SUM, 0.0)),
        )


# -- command line: the original's flags (--batch, --gradient-accumulation, --mixed-precision) ----

CONFIG_FLAGS = {"batch": "batch_size", "gradient_accumulation": "grad_accum", "lr": "learning_rate",
                "seed": "seed", "precision": "precision", "epochs": "epochs"}  # flag -> RetrievalConfig field


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="Two-tower retrieval model on built-in synthetic interactions.")
    parser.add_argument("--config", choices=sorted(PRESETS), help=f"model/data preset (default {DEFAULT_PRESET})")
    parser.add_argument("--batch", type=int, help="batch size (the original's default 64)")
    parser.add_argument("--epochs", type=int, help="total epochs; on resume, raise it to train further")
    parser.add_argument("--gradient-accumulation", type=int, help="batches per optimizer step (default 2)")
    parser.add_argument("--mixed-precision", action="store_const", const="fp16", dest="precision",
                        help="fp16 autocast with a GradScaler (CUDA), as the original; its state is saved")
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--lr", type=float, help="peak learning rate; on resume, the new peak from the next step on")
    parser.add_argument("--seed", type=int, help="seed for data, init and sampling order")
    parser.add_argument(
        "--out", type=Path, help="run directory (default runs/retrieval; on resume: the checkpoint's run)"
    )
    parser.add_argument(
        "--resume", type=Path, metavar="PATH|RUN_DIR", help="checkpoint, or run directory (newest valid)"
    )
    parser.add_argument(
        "--keep-last", type=int, default=3, help="epoch checkpoints to keep (best and newest always kept)"
    )
    add_run_flags(parser)
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
    run = RetrievalRun(*prepared)
    for note in run.notes:
        run.display.message(f"  warning: {note}")
    with stop_on_signals(run.stop):
        result = run.run()
    out, position = run.options.out, result.record.position
    if result.status == "interrupted":
        run.display.message(f"interrupted in epoch {position.epoch + 1} after batch {position.batch_in_epoch}/"
                            f"{position.steps_per_epoch}; saved {', '.join(p.name for p in result.checkpoints)}")
        run.display.message(f"resume with: python -m {MODULE} --resume {out}")
        return run.stop.exit_code
    final = [p.name for p in result.checkpoints if p.name.startswith("final_")]
    run.display.message(f"finished: {position.epoch} epochs, step {result.record.global_step}; final checkpoint "
                        f"{out / final[-1] if final else out}")
    return EXIT_OK


def prepare(
    args: argparse.Namespace, overrides: dict[str, Any]
) -> tuple[RetrievalConfig, RunOptions, ResumePoint | None] | str:
    """A fresh run's (config, options, None), a resumed one's (config, options, point), or why not."""
    if args.resume is None:
        out = args.out or Path("runs/retrieval")
        if error := existing_run_error(out):
            return error
        cfg = PRESETS[args.config or DEFAULT_PRESET].with_overrides(**overrides)
        print(f"training {cfg.name} ({cfg.num_users} users, {cfg.num_items} items, {cfg.epochs} epochs) into {out}",
              flush=True)
        return cfg, run_options(args, out), None
    point = load_for_resume(args.resume)
    cfg, notes = config_for_resume(point, args, overrides, RetrievalConfig, TRAINER_NAME)
    out = args.out or (point.path.parent if point.path.is_file() else point.path)
    at = render_epoch_position(point.position, point.global_step, cfg.epochs) if point.position is not None else None
    print("\n".join(resume_report(point, at, notes)), flush=True)
    done = point.position.epoch if point.position is not None else int(point.checkpoint.get(keys.EPOCH, 0))
    if done >= cfg.epochs:
        return (f"{point.path} is a finished run: epoch {done} of {cfg.epochs}. Nothing to resume. "
                f"To train further: --epochs N (N > {done}).")
    return cfg, run_options(args, out), point


if __name__ == "__main__":
    sys.exit(main())
