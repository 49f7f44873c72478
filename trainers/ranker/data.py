"""Synthetic ranking prompts in the LlamaRec ranker's shape, and the vocabulary they are written in.

Each example is a user's history of items, a candidate pool labelled with letters (A, B, ...),
and the letter of the item the user takes next (the item after the last one in the history).
Every prompt has the same length, so batches need no padding. The vocabulary is built here:
nothing is downloaded.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

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
