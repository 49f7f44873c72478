"""The interface every on-disk format module implements, and the shared pickle plumbing.

A format module exposes one object with `name`, `description`, `sniff(path, head)` and
`read(path) -> Checkpoint`. Sniffing looks at content (magic bytes, zip members, marker files),
never at the file name alone: the seeds use names like `checkpoint-recent.pth.final`.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Protocol

from ckptkit.core.checkpoint import Checkpoint, Finding, Severity
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedFeatureError
from ckptkit.storage.pickle_limits import PickleLimitError
from ckptkit.storage.safe_pickle import PARTIAL_ATTR, GlobalRef, UnpickleResult, UnsupportedPickle

HEAD_BYTES = 64


class Format(Protocol):
    name: str
    description: str

    def sniff(self, path: Path, head: bytes) -> bool:
        """True when `path` holds this format. `head` is the first HEAD_BYTES of a file (b"" for folders)."""

    def read(self, path: Path) -> Checkpoint:
        """Read the index of the checkpoint (never tensor bytes) and recognise its parts."""


def security_findings(path: Path, where: str, globals_: list[GlobalRef]) -> list[Finding]:
    """One finding per global a pickle named that is not on the known-safe list."""
    findings = []
    for g in globals_:
        if g.kind == "dangerous":
            what = (f"would call {g.call}" if g.call else f"names {g.qualified_name}, which can run code")
            findings.append(Finding(
                "security.dangerous-global", Severity.ERROR, where,
                f"the pickle {what} when loaded with torch.load(weights_only=False); ckptkit did not "
                f"run it. Do not load this file with weights_only=False", "ckptkit convert --weights-only"))
        elif g.kind == "class":
            findings.append(Finding(
                "security.pickled-class", Severity.WARNING, where,
                f"the pickle holds an instance of {g.qualified_name}: torch.load(weights_only=True) "
                f"refuses it, and weights_only=False would import and run module {g.module!r}",
                f"ckptkit repair {path} --fix security.pickled-class"))
    return findings


def unpickle_or_raise(path: Path, what: str, load: Any) -> UnpickleResult:
    """Run an unpickling callable, turning any failure into one CorruptCheckpointError line.

    Fail closed: a pickle that could not be read to its end is never called safe, and the calls
    it makes before the stop (pickle.load makes them before it reaches the damage) are named."""
    try:
        return load()
    except RecursionError as exc:
        raise CorruptCheckpointError(path, f"{what}: pickle nests too deeply to be a checkpoint{_unverified(exc)}") from None
    except MemoryError as exc:
        raise CorruptCheckpointError(path, f"{what}: pickle asks for more memory than the machine has"
                                     f"{_unverified(exc)}") from None
    except PickleLimitError as exc:
        raise CorruptCheckpointError(path, f"{what} refused: {_first_line(exc)}{_unverified(exc)}") from None
    except UnsupportedPickle as exc:
        raise UnsupportedFeatureError(path, f"{what}: {_first_line(exc)}{_unverified(exc)}") from None
    except (pickle.UnpicklingError, EOFError) as exc:
        raise CorruptCheckpointError(path, f"{what} is damaged: {_first_line(exc) or 'pickle data ends early'}"
                                     f"{_unverified(exc)}") from None
    except CorruptCheckpointError as exc:
        if getattr(exc, PARTIAL_ATTR, None):
            raise CorruptCheckpointError(exc.path, f"{exc.message}{_unverified(exc)}") from None
        raise
    except Exception as exc:  # any other exception from the unpickler means the bytes are wrong
        raise CorruptCheckpointError(path, f"{what} is damaged: {type(exc).__name__}: {_first_line(exc)}"
                                     f"{_unverified(exc)}") from None


def _unverified(exc: BaseException) -> str:
    """'; not verified safe to load ...': what the calls seen before the stop would do."""
    seen = [g for g in getattr(exc, PARTIAL_ATTR, None) or [] if g.kind == "dangerous"]
    if not seen:
        return " (so it could not be verified as safe to load)"
    calls = "; ".join(g.call or g.qualified_name for g in seen[:3]) + (f"; and {len(seen) - 3} more" if len(seen) > 3 else "")
    return (f"; it could not be verified, and before that point it would call {calls} when loaded with "
            "torch.load(weights_only=False): do not load it")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
