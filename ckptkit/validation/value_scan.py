"""Counting impossible values in raw tensor bytes with numpy, one chunk at a time.

Reductions first (min/max propagate NaN and show Inf), exact counts only for chunks that
have a problem, so a clean chunk costs two vectorised passes and no allocation the size of
the chunk (bf16/fp16 are widened to float32 one chunk at a time).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.core.dtypes import DType

_NATIVE = {"float64": "<f8", "float32": "<f4"}


@dataclass
class ValueStats:
    values: int = 0
    nan: int = 0
    inf: int = 0
    negative: int = 0
    minimum: float = 0.0
    bad_bool: int = 0

    @property
    def nonfinite(self) -> int:
        return self.nan + self.inf


def scan_chunk(chunk: memoryview, dtype: DType, non_negative: bool, stats: ValueStats) -> None:
    """Add this chunk's counts to `stats`. `chunk` holds whole elements of `dtype`."""
    usable = len(chunk) - len(chunk) % dtype.itemsize
    if usable <= 0:
        return
    raw = chunk[:usable]
    if dtype.name == "bool":
        u8 = np.frombuffer(raw, np.uint8)
        if u8.max() > 1:
            stats.bad_bool += int(np.count_nonzero(u8 > 1))
        return
    if dtype.nonfinite_byte:       # float8: the byte patterns that mean NaN (or Inf)
        u8 = np.frombuffer(raw, np.uint8)
        mask, pattern = dtype.nonfinite_byte
        stats.values += u8.size
        stats.nan += int(np.count_nonzero((u8 & mask) == pattern))
        return
    values = _as_float(raw, dtype)
    if values is None:
        return
    stats.values += values.size
    lo, hi = values.min(), values.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        nan = int(np.count_nonzero(np.isnan(values)))
        stats.nan += nan
        stats.inf += int(np.count_nonzero(np.isinf(values)))
        if non_negative:
            lo = np.nanmin(np.where(np.isfinite(values), values, 0)) if values.size > nan else 0.0
    if non_negative and lo < 0:
        stats.negative += int(np.count_nonzero(values < 0))
        stats.minimum = min(stats.minimum, float(lo))


def _as_float(raw: memoryview, dtype: DType) -> np.ndarray | None:
    if dtype.name in _NATIVE:
        return np.frombuffer(raw, _NATIVE[dtype.name])
    if dtype.name == "float16":
        return np.frombuffer(raw, "<f2").astype(np.float32)
    if dtype.name == "bfloat16":   # the high half of a float32
        widened = np.frombuffer(raw, "<u2").astype(np.uint32)
        widened <<= 16
        return widened.view(np.float32)
    return None
