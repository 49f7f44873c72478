"""ckptkit: checkpoint forensics and repair for PyTorch training runs."""
from __future__ import annotations

__version__ = "0.1.0"
