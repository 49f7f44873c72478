"""The EnStack-style classifier trainer: a tiny text classifier saving ``save_pretrained`` folders
plus ``training_state.pth``, in one file: config, data, model, loop, command line.

Commands (from the repository root)::

    python -m trainers.pretrained --config tiny --out runs/ptiny             # a second on a CPU
    python -m trainers.pretrained --config tiny --out runs/pk --stop-at-micro-step 20   # interrupt mid-epoch
    python -m trainers.pretrained --resume runs/pk                           # newest valid folder
    python -m trainers.pretrained --resume runs/ptiny --epochs 5             # train a finished run further

Checkpoints are the original's folders (``last_checkpoint/``, ``best_model/``: config.json,
model.safetensors, training_state.pth), written atomically with a manifest beside each; see
:mod:`ckptkit.training.pretrained_layout`. The progress line and the resume report are rendered
from the saved data position, never from a loop counter (the original's ``initial=resume_step`` bar).

The loop: ``last_checkpoint/`` every ``save_steps`` batches and at each epoch's end, after the
validation F1; ``best_model/`` when the F1 improves.
"""
from __future__ import annotations

import argparse
import functools
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
    PRETRAINED,
    CheckpointManager,
    DataPosition,
    ProgressLine,
    ResumableSampler,
    ResumePoint,
    TrainingState,
    load_for_resume,
)
from ckptkit.training import pretrained_layout as keys
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
    stop_at,
    stop_on_signals,
)

TRAINER_NAME = "pretrained"  # stored in every checkpoint; `ckptkit resume` finds this module by it
# what `python -m` runs: trainers.pretrained in the repository, ckptkit_trainers.pretrained when installed
MODULE = __spec__.name if __spec__ is not None else "trainers.pretrained"


# -- config: stored in training_state.pth as a plain dict (weights_only loads it) ----------------

@dataclass(frozen=True)
class ClassifierConfig:
    name: str
    vocab_size: int
    seq_len: int
    num_train: int
    num_val: int
    hidden_size: int
    batch_size: int
    num_labels: int = 2  # the original's: vulnerable or not; F1 is the positive class's
    dropout: float = 0.1
    grad_accum: int = 1
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 10
    lr_decay: float = 0.995  # per optimizer step after warmup: an extended run keeps its schedule
    save_steps: int = 500  # the original's default: a mid-epoch last_checkpoint every 500 batches
    epochs: int = 10
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; resolved at start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> ClassifierConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def model_config(self) -> dict[str, Any]:
        """config.json, as ``save_pretrained`` would write it for this model."""
        labels = {i: ("vulnerable" if i == 1 else "safe") if self.num_labels == 2 else f"LABEL_{i}"
                  for i in range(self.num_labels)}
        return {
            "architectures": ["TinyTextClassifier"], "model_type": "ckptkit-tiny-classifier",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "max_position_embeddings": self.seq_len,
            "num_labels": self.num_labels, "hidden_dropout_prob": self.dropout, "torch_dtype": "float32",
            "id2label": {str(i): name for i, name in labels.items()},
            "label2id": {name: i for i, name in labels.items()},
        }


PRESETS: dict[str, ClassifierConfig] = {
    # Well under a second on a CPU: 12 batches per epoch, a mid-epoch save at batch 5 and 10, 3 epochs.
    "tiny": ClassifierConfig(name="tiny", vocab_size=64, seq_len=16, num_train=192, num_val=64, hidden_size=16,
                             batch_size=16, warmup_steps=4, lr_decay=0.98, save_steps=5, epochs=3, learning_rate=1e-2),
    # The original's scale: 1270 batches per epoch of 16, save every 500, 10 epochs.
    "default": ClassifierConfig(name="default", vocab_size=4096, seq_len=128, num_train=20320, num_val=2048,
                                hidden_size=128, batch_size=16),
}
DEFAULT_PRESET = "default"


# -- data: synthetic token sequences, deterministic from a seed; nothing downloaded --------------

_MARKERS = 4  # tokens 1..4 mark the positive class; 0 is never used (padding in a real tokenizer)
_MARKED = 0.25  # share of a positive sequence's positions that carry a marker


@dataclass(frozen=True)
class Sequences:
    """A positive ("vulnerable") sequence carries a few marker tokens; a negative one none."""

    train_tokens: torch.Tensor  # int64 [num_train, seq_len]
    train_labels: torch.Tensor  # int64 [num_train]
    val_tokens: torch.Tensor
    val_labels: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.train_labels.numel())


def synthetic_sequences(cfg: ClassifierConfig) -> Sequences:
    g = torch.Generator().manual_seed(cfg.seed)  # its own generator: the global RNG streams never move
    total = cfg.num_train + cfg.num_val
    labels = torch.randint(2, (total,), generator=g)
    tokens = torch.randint(_MARKERS + 1, cfg.vocab_size, (total, cfg.seq_len), generator=g)
    markers = torch.randint(1, _MARKERS + 1, (total, cfg.seq_len), generator=g)
    marked = (torch.rand(total, cfg.seq_len, generator=g) < _MARKED) & labels.bool()[:, None]
    tokens = torch.where(marked, markers, tokens)
    n = cfg.num_train
    return Sequences(tokens[:n].clone(), labels[:n].clone(), tokens[n:].clone(), labels[n:].clone())


# -- model: token and position embeddings, mean-pooled, an MLP head ------------------------------

class TinyTextClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.positions = nn.Embedding(cfg.seq_len, cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [batch, num_labels]."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = (self.embeddings(tokens) + self.positions(positions)).mean(dim=1)
        return self.classifier(self.dropout(F.gelu(self.dense(hidden))))


def f1_and_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The positive class's F1 (0 when nothing is predicted or present) and accuracy."""
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels != 1)).sum())
    fn = int(((predicted != 1) & (labels == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return f1, float((predicted == labels).float().mean())


# -- training ------------------------------------------------------------------------------------

def lr_factor(step: int, warmup_steps: int, decay: float) -> float:
    """Linear warmup, then exponential decay per step: an extended run keeps its schedule."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return decay ** (step - warmup_steps)


@dataclass
class ClassifierRecord:
    """Where the run is (data position, optimizer steps) and the original's counters."""

    global_step: int
    position: DataPosition
    best_f1: float = -1.0  # -1: not validated yet (the original starts from 0.0; any F1 beats this)
    best_acc: float = 0.0
    last_f1: float | None = None  # this epoch's validation F1, for the best checkpoint's metric


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    record: ClassifierRecord
    checkpoints: list[Path]


class PretrainedRun:
    """All live objects of one run; ``run()`` trains to ``cfg.epochs`` or an interrupt."""

    def __init__(self, cfg: ClassifierConfig, options: RunOptions, resume: ResumePoint | None = None) -> None:
        # The order of construction is fixed: the RNG streams, and so every checkpoint byte, depend on it.
        self.options = options
        self.device = pick_device(options.device)
        precision, self.notes = resolve_precision(cfg.precision, self.device)
        self.cfg = replace(cfg, precision=precision)
        self.data = synthetic_sequences(cfg)
        torch.manual_seed(cfg.seed)  # model init; the training streams get their own seed below
        self.model = TinyTextClassifier(self.cfg).to(self.device)
        seed_training_streams(cfg.seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        factor = functools.partial(lr_factor, warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.sampler = ResumableSampler(self.data.num_train, cfg.batch_size, cfg.seed)
        self.stop = StopRequest()
        fresh = ClassifierRecord(0, self.sampler.start_position(cfg.grad_accum))
        self.record = self._restore(resume) if resume else fresh
        self.display = ProgressLine(options.progress_stream, every=options.progress_every)

    def run(self) -> TrainResult:
        r, cfg = self.record, self.cfg
        max_steps = cfg.epochs * self.sampler.steps_per_epoch // cfg.grad_accum
        saved: list[Path] = []
        status = "finished"
        with CheckpointManager(self.options.out, keep_last=self.options.keep_last, layout=PRETRAINED,
                               asynchronous=self.options.asynchronous_save) as manager:
            for leftover in manager.removed_leftovers:
                self.display.message(f"removed {leftover.name}: the unfinished write of a crashed save "
                                     "(the checkpoint it was to replace is intact)")
            batches = self.sampler.iterate_from(r.position)
            while r.position.epoch < cfg.epochs:
                sample_ids = next(batches).sample_ids
                tokens, labels = (
                    self.data.train_tokens[sample_ids].to(self.device),
                    self.data.train_labels[sample_ids].to(self.device),
                )
                with autocast(cfg.precision, self.device):
                    loss = F.cross_entropy(self.model(tokens).float(), labels)
                self.scaler.scale(loss / cfg.grad_accum).backward()  # the original logs no training loss
                r.position = r.position.advanced()
                if r.position.micro_step == 0:
                    clip_and_step(self.model, self.optimizer, self.scheduler, self.scaler)
                    r.global_step += 1
                if r.position.batch_in_epoch == 0:  # an epoch's end: validate first, the checkpoints carry it
                    kinds = self._end_epoch()
                    saved += manager.save(self._state(), kinds)
                elif r.position.batch_in_epoch % cfg.save_steps == 0:  # the original's mid-epoch save
                    r.last_f1 = None
                    saved += manager.save(self._state(), ["periodic"])
                self.display.update(r.position, r.global_step, max_steps)
                kill_if_at(self.options, r.position.batches_consumed)
                if self.stop.requested or stop_at(self.options, r.position.batches_consumed):
                    saved += manager.save(self._state(), ["interrupt"])
                    status = "interrupted"
                    break
        self.display.close()
        return TrainResult(status, r, saved)

    def _end_epoch(self) -> list[str]:
        """Validate, log the original's epoch line, name the checkpoints due (one last_checkpoint/
        folder: the final save is the epoch's periodic one)."""
        r = self.record
        f1, acc = self.evaluate()
        improved = f1 > r.best_f1
        r.last_f1 = f1
        if improved:
            r.best_f1, r.best_acc = f1, acc
        self.display.message(f"epoch {r.position.epoch}/{self.cfg.epochs} COMPLETED | step {r.global_step} | "
                             f"val f1 {f1:.4f} | val acc {acc:.4f}{' (best)' if improved else ''} | "
                             f"lr {self.optimizer.param_groups[0]['lr']:.2e}")
        return (["best"] if improved else []) + ["final" if r.position.epoch >= self.cfg.epochs else "periodic"]

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        with autocast(self.cfg.precision, self.device):
            logits = self.model(self.data.val_tokens.to(self.device))
        self.model.train()
        return f1_and_accuracy(logits.argmax(dim=-1).cpu(), self.data.val_labels)

    def _state(self) -> TrainingState:
        r = self.record
        return TrainingState(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=self.cfg.to_dict(), position=r.position, global_step=r.global_step, trainer=TRAINER_NAME,
            family_fields={keys.BEST_F1: max(r.best_f1, 0.0), keys.BEST_ACC: r.best_acc, keys.VAL_F1: r.last_f1,
                           keys.MODEL_CONFIG: self.cfg.model_config()},
        )

    def _restore(self, resume: ResumePoint) -> ClassifierRecord:
        """The original has no --lr on resume: the checkpoint's learning rate stays."""
        restored = resume.restore(self.model, self.optimizer, self.scheduler, self.scaler)
        position, ckpt = restored.position, resume.checkpoint
        if position is None:  # the original's own folder: epoch (1-based) and step (0 = end of epoch)
            step, epoch = int(ckpt.get(keys.STEP) or 0), int(ckpt[keys.EPOCH])
            start = self.sampler.start_position(self.cfg.grad_accum)
            position = replace(start, epoch=epoch if step == 0 else epoch - 1, batch_in_epoch=step)
            restored.warnings.append("no data_position: the batch order of the interrupted epoch is not the original's")
        else:
            restored.warnings += self.sampler.resume_warnings(position)
        self.notes += restored.warnings
        best_f1 = ckpt.get(keys.BEST_F1)
        return ClassifierRecord(
            global_step=int(ckpt.get("global_step", 0)), position=position,
            best_f1=float(best_f1) if best_f1 is not None and position.epoch > 0 else -1.0,
            best_acc=float(ckpt.get(keys.BEST_ACC) or 0.0),
        )


# -- command line: the original's flags; a resume may change --epochs and --save-steps -----------

CONFIG_FLAGS = {"batch_size": "batch_size", "gradient_accumulation": "grad_accum", "lr": "learning_rate",
                "seed": "seed", "precision": "precision", "epochs": "epochs",
                "save_steps": "save_steps"}  # flag -> ClassifierConfig field
RESUME_CHANGES = {"epochs": "--epochs {value} from here on (the run had {old})",
                  "save_steps": "--save-steps {value} from here on (the run had {old})"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="Tiny text classifier on built-in synthetic sequences (EnStack-style)."
    )
    parser.add_argument("--config", choices=sorted(PRESETS), help=f"model/data preset (default {DEFAULT_PRESET})")
    parser.add_argument("--batch-size", type=int, help="batch size (the original's default 16)")
    parser.add_argument("--epochs", type=int, help="total epochs; on resume, raise it to train further")
    parser.add_argument("--save-steps", type=int, help="a mid-epoch last_checkpoint every N batches (default 500)")
    parser.add_argument("--gradient-accumulation", type=int, help="batches per optimizer step (default 1)")
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed for data, init and sampling order")
    parser.add_argument(
        "--out", type=Path, help="run directory (default runs/pretrained; on resume: the checkpoint's run)"
    )
    parser.add_argument(
        "--resume", type=Path, metavar="PATH|RUN_DIR", help="checkpoint folder, or run directory (newest valid)"
    )
    add_run_flags(parser)
    parser.set_defaults(keep_last=None)  # one last_checkpoint/ is replaced in place: nothing to prune
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
    run = PretrainedRun(*prepared)
    for note in run.notes:
        run.display.message(f"  warning: {note}")
    with stop_on_signals(run.stop):
        result = run.run()
    out, r = run.options.out, result.record
    if result.status == "interrupted":
        run.display.message(f"interrupted in epoch {r.position.epoch + 1} after batch {r.position.batch_in_epoch}/"
                            f"{r.position.steps_per_epoch}; saved {out / 'last_checkpoint'}")
        run.display.message(f"resume with: python -m {MODULE} --resume {out}")
        return run.stop.exit_code
    run.display.message(f"finished: {r.position.epoch} epochs, step {r.global_step}; best val f1 {r.best_f1:.4f}; "
                        f"model in {out / 'last_checkpoint'}")
    return EXIT_OK


def prepare(
    args: argparse.Namespace, overrides: dict[str, Any]
) -> tuple[ClassifierConfig, RunOptions, ResumePoint | None] | str:
    """A fresh run's (config, options, None), a resumed one's (config, options, point), or why not."""
    if args.resume is None:
        out = args.out or Path("runs/pretrained")
        if error := existing_run_error(out):
            return error
        cfg = PRESETS[args.config or DEFAULT_PRESET].with_overrides(**overrides)
        print(f"training {cfg.name} ({cfg.num_train} sequences, {cfg.epochs} epochs) into {out}", flush=True)
        return cfg, run_options(args, out), None
    point = load_for_resume(args.resume)
    cfg, notes = config_for_resume(point, args, overrides, ClassifierConfig, TRAINER_NAME, "classifier", RESUME_CHANGES)
    out = args.out or point.path.parent  # a checkpoint is a folder inside its run directory
    at = render_epoch_position(point.position, point.global_step, cfg.epochs) if point.position is not None else None
    print("\n".join(resume_report(point, at, notes)), flush=True)
    done = point.position.epoch if point.position is not None else int(point.checkpoint.get(keys.EPOCH, 0))
    if done >= cfg.epochs:
        return (f"{point.path} is a finished run: epoch {done} of {cfg.epochs}. Nothing to resume. "
                f"To train further: --epochs N (N > {done}).")
    return cfg, run_options(args, out), point


if __name__ == "__main__":
    sys.exit(main())
