"""Paths as users type them.

A checkpoint's own name carries facts (`checkpoint-500` is step 500 of an HF Trainer run,
`epoch_3.pt` an epoch), and ckptkit's manifest sits beside a checkpoint under its name. A path
that names no file or folder by itself (`.`, `..`, `runs/..`) has no such name: `named` spells
the same place in full, so that `ckptkit validate .` inside a checkpoint folder gives the verdict
that `ckptkit validate ../checkpoint-500` gives.
"""
from __future__ import annotations

import os
from pathlib import Path


def named(path: str | os.PathLike[str]) -> Path:
    """`path` as given, or, when its last part names nothing (`.`, `..`), the same place absolute,
    spelled out as the shell's `cd` does (`runs/latest/..` is `runs`, wherever `latest` links)."""
    p = Path(path)
    return Path(os.path.abspath(p)) if p.name in ("", "..") else p
