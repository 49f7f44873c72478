"""ckptkit's version: one home, read by the package root and by `ckptkit --version`."""
from __future__ import annotations

VERSION = "0.1.0"
