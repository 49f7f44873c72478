"""ckptkit: checkpoint forensics and repair for PyTorch training runs."""
from __future__ import annotations

__version__ = "0.1.0"

# Formats decode bytes; families interpret the trees they decode. Imported here so that every
# entry point (library, CLI, trainers) reads checkpoints with their families registered.
import ckptkit.families  # noqa: E402,F401
