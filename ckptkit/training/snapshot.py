"""The only part of a save the training loop waits for: a copy of the state in CPU memory.

:class:`StagingArea` copies every tensor of a checkpoint dict into CPU buffers that it keeps
and reuses from one save to the next (pinned memory when the tensors live on CUDA, so the
device-to-host copies run at full PCIe speed and allocating pinned memory, which costs about
a second per few GB, happens once per run, not once per save). Containers are rebuilt, so the
loop may keep appending to its histories while the copy is being written, and strings are
interned, so pickle's memo (which shares objects by identity) depends only on the values: a
resumed run writes byte-identical files to the uninterrupted one.

:class:`BackgroundWriter` runs one write job at a time on a worker thread; submitting a new
job first waits for the previous one (whose buffers the new snapshot is about to reuse).
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


class StagingArea:
    """Reusable CPU buffers holding one snapshot of a (nested) checkpoint dict."""

    def __init__(self, *, pin_memory: bool | None = None) -> None:
        self._pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._buffers: list[torch.Tensor] = []
        self._next = 0
        self._shared: dict[tuple[Any, ...], torch.Tensor] = {}
        self._devices: set[torch.device] = set()

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers)

    def snapshot(self, obj: Any) -> Any:
        """A copy of ``obj`` whose tensors live in this area's CPU buffers (valid until the next call)."""
        self._next, self._shared, self._devices = 0, {}, set()
        with torch.no_grad():
            copy = self._copy(obj)
        for device in self._devices:  # the non_blocking device-to-host copies must have landed
            torch.cuda.synchronize(device)
        del self._buffers[self._next :]  # the state shrank: free what is no longer used
        return copy

    def _copy(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj)
        if isinstance(obj, str):
            return sys.intern(obj)
        if isinstance(obj, dict):
            items = ((self._copy(k), self._copy(v)) for k, v in obj.items())
            copied = type(obj)(items) if isinstance(obj, OrderedDict) else dict(items)
            if hasattr(obj, "_metadata"):  # module versions; load_state_dict migrates old layouts by them
                copied._metadata = obj._metadata  # type: ignore[attr-defined]
            return copied
        if isinstance(obj, list):
            return [self._copy(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self._copy(v) for v in obj)
        return obj  # ints, floats, strings, None, dtypes: immutable

    def _copy_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        # Tied weights (one tensor under two keys) must stay one storage in the file.
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in self._shared:
            return self._shared[key]
        buffer = self._take_buffer(tensor)
        buffer.copy_(tensor.detach(), non_blocking=tensor.is_cuda)
        if tensor.is_cuda:
            self._devices.add(tensor.device)
        self._shared[key] = buffer
        return buffer

    def _take_buffer(self, like: torch.Tensor) -> torch.Tensor:
        index = self._next
        self._next += 1
        if index < len(self._buffers):
            buffer = self._buffers[index]
            if buffer.shape == like.shape and buffer.dtype == like.dtype:
                return buffer
        pin = self._pin and like.is_cuda
        buffer = torch.empty(like.shape, dtype=like.dtype, device="cpu", pin_memory=pin)
        if index < len(self._buffers):
            self._buffers[index] = buffer
        else:
            self._buffers.append(buffer)
        return buffer


class BackgroundWriter:
    """One write at a time on a worker thread; errors surface at the next ``wait``/``submit``."""

    def __init__(self, *, asynchronous: bool = True) -> None:
        self.asynchronous = asynchronous
        self._executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptkit-writer")
                          if asynchronous else None)
        self._pending: Future[None] | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        if self._executor is None:
            job()
        else:
            self._pending = self._executor.submit(job)

    def wait(self) -> None:
        """Block until the write in flight (if any) is complete; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    @property
    def busy(self) -> bool:
        return self._pending is not None and not self._pending.done()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
