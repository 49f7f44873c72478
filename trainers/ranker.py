"""The LlamaRec LoRA ranker on Hugging Face ``Trainer``, resuming exactly through ckptkit.

    python -m trainers.ranker --out runs/ranker                 # train (CPU: fp32, CUDA: bf16)
    python -m trainers.ranker --out runs/ranker --stop-at-step 6
    python -m trainers.ranker --resume runs/ranker              # newest verified checkpoint-N
    ckptkit resume runs/ranker                                  # the same, after `ckptkit validate`

A tiny Llama built from a config (random weights) with LoRA on q_proj/v_proj learns to pick the
next item among lettered candidates, with LlamaRec's Trainer arguments (micro-batch and
accumulation, warmup, eval and save every N steps, save_total_limit=3, load_best_model_at_end
on NDCG@5, early stopping) and its own dataloaders. ``ckptkit.integrations.hf.ExactResume`` makes
a resume equal the uninterrupted run bit for bit. Needs ``pip install "ckptkit[hf]"``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import string
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader, Dataset
from transformers import (
    EarlyStoppingCallback,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ckptkit.core.errors import CkptkitError
from ckptkit.integrations.hf import ExactResume, verified_checkpoint

# --- data: Synthetic ranking prompts in the LlamaRec ranker's shape, and the vocabulary they are written in.

IGNORE = -100
SPECIAL = ("<pad>", "<s>", "</s>", "history:", "candidates:", "answer:")


@dataclass(frozen=True)
class Vocabulary:
    """Words -> ids: the special words, the candidate letters, then one word per item."""

    items: int
    letters: int

    @property
    def words(self) -> list[str]:
        return [*SPECIAL, *string.ascii_uppercase[: self.letters], *(f"item{i}" for i in range(self.items))]

    def __len__(self) -> int:
        return len(SPECIAL) + self.letters + self.items

    def id(self, word: str) -> int:
        if word in SPECIAL:
            return SPECIAL.index(word)
        if len(word) == 1 and word in string.ascii_uppercase[: self.letters]:
            return len(SPECIAL) + string.ascii_uppercase.index(word)
        if word.startswith("item"):
            return len(SPECIAL) + self.letters + int(word[4:])
        raise KeyError(f"{word!r} is not in the ranker's vocabulary")

    def encode(self, text: str) -> list[int]:
        return [self.id(w) for w in text.split()]

    def letter_ids(self) -> list[int]:
        return [self.id(c) for c in string.ascii_uppercase[: self.letters]]


def make_prompts(count: int, vocab: Vocabulary, history: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, answer letter) pairs; the same seed gives the same prompts."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        start = rng.randrange(vocab.items)
        seen = [f"item{(start + k) % vocab.items}" for k in range(history)]
        target = f"item{(start + history) % vocab.items}"
        others = rng.sample([f"item{i}" for i in range(vocab.items) if f"item{i}" != target], vocab.letters - 1)
        pool = others[:]
        answer = rng.randrange(vocab.letters)
        pool.insert(answer, target)
        listed = " ".join(f"{string.ascii_uppercase[i]} {item}" for i, item in enumerate(pool))
        prompts.append((f"<s> history: {' '.join(seen)} candidates: {listed} answer:", string.ascii_uppercase[answer]))
    return prompts


class RankingPrompts(Dataset):
    """Tokenized prompts: input ids end with the answer letter and </s>; labels mark only those two."""

    def __init__(self, prompts: list[tuple[str, str]], vocab: Vocabulary) -> None:
        self.rows = []
        for prompt, answer in prompts:
            ids = vocab.encode(f"{prompt} {answer} </s>")
            labels = [IGNORE] * (len(ids) - 2) + ids[-2:]
            self.rows.append((torch.tensor(ids), torch.tensor(labels)))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows[index]


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    ids = torch.stack([row[0] for row in batch])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.stack([row[1] for row in batch])}


def train_loader(dataset: Dataset, micro_batch: int, generator_seed: int | None) -> DataLoader:
    """The ranker's own shuffled loader (LlamaRec passes its loaders to Trainer). With a seed it
    draws its order from its own generator, which Trainer saves nowhere: ExactResume does."""
    generator = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    return DataLoader(dataset, batch_size=micro_batch, shuffle=True, collate_fn=collate, generator=generator)


def eval_loader(dataset: Dataset, batch: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=collate)


# --- model: A tiny Llama built from a config (random weights, nothing downloaded) with a LoRA adapter on

def build_model(vocab_size: int, hidden: int, layers: int, lora_r: int, lora_dropout: float,
                seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False)
    base = LlamaForCausalLM(config)
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=lora_dropout,
                      target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


# --- train: The LlamaRec ranker's training on transformers.Trainer: its arguments, its own dataloaders,

CONFIG_FILE = "ranker_config.json"   # in the output_dir: a resume trains the same run


@dataclass
class RankerConfig:
    samples: int = 36
    eval_samples: int = 16
    items: int = 40
    candidates: int = 8            # letters A..H
    history: int = 4
    micro_batch: int = 2           # LlamaRec's lora_micro_batch_size
    train_batch: int = 4           # train_batch_size; accumulation = train_batch // micro_batch
    warmup_steps: int = 2
    epochs: int = 3
    lr: float = 5e-3
    val_iterations: int = 3        # eval_steps = save_steps (lora_val_iterations)
    patience: int = 3              # lora_early_stopping_patience
    ks: tuple[int, ...] = (1, 5)
    best_metric: str = "NDCG@5"
    hidden: int = 32
    layers: int = 2
    lora_r: int = 4
    lora_dropout: float = 0.1
    seed: int = 42
    loader_seed: int | None = None  # the train loader's own generator (None: the global RNG)
    save_total_limit: int = 3

    @property
    def accumulation(self) -> int:
        return max(self.train_batch // self.micro_batch, 1)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, out: Path) -> RankerConfig:
        body = json.loads((out / CONFIG_FILE).read_text())
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        values["ks"] = tuple(values.get("ks", (1, 5)))
        return cls(**values)


class RankerTrainer(Trainer):
    """Trainer with the ranker's own dataloaders, as LlamaRec's LLMTrainer overrides them."""

    def __init__(self, *args: Any, train_loader: Any, val_loader: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_loader, self.val_loader = train_loader, val_loader

    def get_train_dataloader(self) -> Any:
        return self.train_loader

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        return self.val_loader


def training_arguments(cfg: RankerConfig, out: Path, precision: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.accumulation, warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.epochs, learning_rate=cfg.lr, bf16=precision == "bf16",
        use_cpu=precision == "fp32-cpu", logging_steps=1, eval_strategy="steps", save_strategy="steps",
        eval_steps=cfg.val_iterations, save_steps=cfg.val_iterations, save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True, metric_for_best_model=cfg.best_metric, greater_is_better=True,
        report_to="none", seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=True,
        label_names=["labels"], per_device_eval_batch_size=8)


def build_trainer(cfg: RankerConfig, out: Path, device: str = "auto",
                  exact: bool = True) -> tuple[RankerTrainer, ExactResume | None]:
    """The ranker's Trainer, with ExactResume attached (`exact=False`: Trainer alone, for comparison)."""
    vocab = Vocabulary(cfg.items, cfg.candidates)
    precision = "bf16" if device != "cpu" and torch.cuda.is_available() else "fp32-cpu"
    args = training_arguments(cfg, out, precision)
    model = build_model(len(vocab), cfg.hidden, cfg.layers, cfg.lora_r, cfg.lora_dropout, cfg.seed)
    train_set = RankingPrompts(make_prompts(cfg.samples, vocab, cfg.history, cfg.seed), vocab)
    val_set = RankingPrompts(make_prompts(cfg.eval_samples, vocab, cfg.history, cfg.seed + 1), vocab)
    letters = torch.tensor(vocab.letter_ids())
    trainer = RankerTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
        train_loader=train_loader(train_set, cfg.micro_batch, cfg.loader_seed),
        val_loader=eval_loader(val_set, 8),
        callbacks=[EarlyStoppingCallback(cfg.patience)],
        preprocess_logits_for_metrics=lambda logits, labels: _letter_scores(logits, labels, letters),
        compute_metrics=lambda pred: ranking_metrics(pred.predictions, pred.label_ids, vocab, cfg.ks))
    callback = ExactResume.attach(trainer, trainer_name="ranker") if exact else None
    return trainer, callback


def _letter_scores(logits: torch.Tensor, labels: torch.Tensor, letters: torch.Tensor) -> torch.Tensor:
    """Scores of the candidate letters where the answer is predicted (one position before it):
    only these reach compute_metrics, not the whole vocabulary at every position."""
    answer_at = (labels != -100).int().argmax(dim=1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, answer_at - 1][:, letters.to(logits.device)].float()


def ranking_metrics(scores: np.ndarray, labels: np.ndarray, vocab: Vocabulary, ks: tuple[int, ...]) -> dict[str, float]:
    """Recall@k, NDCG@k and MRR of the target letter among the candidates."""
    answer_at = (labels != -100).argmax(axis=1)
    target_ids = labels[np.arange(len(labels)), answer_at]
    target = np.searchsorted(np.array(vocab.letter_ids()), target_ids)
    target_scores = scores[np.arange(len(scores)), target]
    rank = (scores > target_scores[:, None]).sum(axis=1)   # 0 = ranked first
    metrics = {"MRR": float(np.mean(1.0 / (rank + 1)))}
    for k in ks:
        hit = rank < k
        metrics[f"Recall@{k}"] = float(hit.mean())
        metrics[f"NDCG@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(rank + 2), 0.0)))
    return metrics



class StopAt(TrainerCallback):
    """--stop-at-step: stop after that optimizer step, once its save (if one is due) is written,
    so the saved folder is the one the uninterrupted run writes (its TrainerControl says
    nothing of the stop); --kill-at-step: SIGKILL right after that step's save (a real crash)."""

    def __init__(self, stop: int | None, kill: int | None) -> None:
        self.stop, self.kill = stop, kill

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.stop and not control.should_save:
            control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.stop:
            control.should_training_stop = True
        if state.global_step == self.kill:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


# --- cli: Command line of the LoRA ranker: flags, resume (the run's saved config, a verified checkpoint), messages.

EXIT_OK, EXIT_USAGE = 0, 2
# flag -> RankerConfig field; on resume a flag that differs from the run's saved value is refused
# by ExactResume (data order, schedule) or only warned about (eval/save interval).
_CONFIG_FLAGS = {"samples": "samples", "micro_batch": "micro_batch", "train_batch": "train_batch",
                 "warmup_steps": "warmup_steps", "epochs": "epochs", "lr": "lr", "val_iterations": "val_iterations",
                 "patience": "patience", "seed": "seed", "loader_seed": "loader_seed"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.ranker",
                                     description="LlamaRec-style LoRA ranker on Hugging Face Trainer, "
                                                 "synthetic ranking prompts, tiny random Llama.")
    parser.add_argument("--out", type=Path, help="output_dir (default runs/ranker; on resume: the checkpoint's run)")
    parser.add_argument("--resume", type=Path, metavar="PATH|RUN_DIR",
                        help="a checkpoint-N folder, or the output_dir (its newest verified checkpoint)")
    parser.add_argument("--samples", type=int, help="training prompts")
    parser.add_argument("--micro-batch", type=int, help="per-device micro-batch (lora_micro_batch_size)")
    parser.add_argument("--train-batch", type=int, help="batch per optimizer step (accumulation = train/micro)")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--val-iterations", type=int, help="evaluate and save every N optimizer steps")
    parser.add_argument("--patience", type=int, help="early-stopping patience, in evaluations")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--loader-seed", type=int, help="give the train loader its own seeded generator")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA (bf16) when there is one, else CPU (fp32)")
    parser.add_argument("--stop-at-step", type=int, metavar="N", help="stop after optimizer step N (and its save)")
    parser.add_argument("--kill-at-step", type=int, metavar="N", help="SIGKILL this process after step N's save")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CkptkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return EXIT_USAGE
    overrides = {field: getattr(args, flag) for flag, field in _CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    resume = None
    if args.resume is not None:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            resume = verified_checkpoint(args.resume)
        for note in notes:
            print(f"warning: {note.message}", file=sys.stderr)
        out = args.out or (Path(resume).parent if resume else args.resume)
    else:
        out = args.out or Path("runs/ranker")
    saved = (out / "ranker_config.json").is_file()
    cfg = replace(RankerConfig.load(out) if saved else RankerConfig(), **overrides)
    if not saved:
        cfg.save(out)
    trainer, _ = build_trainer(cfg, out, args.device)
    if args.stop_at_step or args.kill_at_step:
        trainer.add_callback(StopAt(args.stop_at_step, args.kill_at_step))
    if resume:
        print(f"resuming from {resume}")
    started = time.perf_counter()
    first_step = trainer.state.global_step
    result = trainer.train(resume_from_checkpoint=resume)
    steps = result.global_step - (int(Path(resume).name.split("-")[-1]) if resume else first_step)
    per_step = (time.perf_counter() - started) / max(steps, 1)
    best = trainer.state.best_model_checkpoint
    print(f"trained to step {result.global_step} ({trainer.state.epoch:.2f} epochs, {per_step:.3f} s/step); "
          f"best {cfg.best_metric} {trainer.state.best_metric} at {Path(best).name if best else '-'}")
    print(f"resume with: python -m trainers.ranker --resume {out}   (or: ckptkit resume {out})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
