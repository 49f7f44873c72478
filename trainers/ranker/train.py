"""The LlamaRec ranker's training on transformers.Trainer: its arguments, its own dataloaders,
NDCG@k for the best model, early stopping, and ckptkit's ExactResume."""
from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from ckptkit.integrations.hf import ExactResume
from trainers.ranker.data import RankingPrompts, Vocabulary, eval_loader, make_prompts, train_loader
from trainers.ranker.model import build_model

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
