"""Built-in synthetic text: generated deterministically in code, nothing downloaded.

Sentences from a small grammar ("the quiet robot paints a red lamp.") mixed with arithmetic
facts ("7 plus 5 is 12."), so a small model has structure to learn and a falling loss to show.
Characters are the tokens; the alphabet is fixed, so the vocabulary never depends on the data.
"""
from __future__ import annotations

import random

import torch

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


def decode(tokens: torch.Tensor) -> str:
    return "".join(ALPHABET[int(t)] for t in tokens)


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
