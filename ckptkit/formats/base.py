"""The interface every on-disk format module implements, and the shared pickle plumbing.

A format module exposes one object with `name`, `description`, `sniff(path, head)` and
`read(path) -> Checkpoint`. Sniffing looks at content (magic bytes, zip members, marker files),
never at the file name alone: the seeds use names like `checkpoint-recent.pth.final`.
"""
from __future__ import annotations

import pickle
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ckptkit.core.checkpoint import Checkpoint, Finding, Severity
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedFeatureError
from ckptkit.storage.pickle_limits import PickleLimitError
from ckptkit.storage.pickle_verdict import OPCODE_NAMES, weights_only_accepts
from ckptkit.storage.safe_pickle import PARTIAL_ATTR, GlobalRef, UnpickleResult, UnsupportedPickle

HEAD_BYTES = 64


class Format(Protocol):
    name: str
    description: str

    def sniff(self, path: Path, head: bytes) -> bool:
        """True when `path` holds this format. `head` is the first HEAD_BYTES of a file (b"" for folders)."""

    def read(self, path: Path) -> Checkpoint:
        """Read the index of the checkpoint (never tensor bytes) and recognise its parts."""


# How a decoded tree becomes a Checkpoint (family, sections, progress) is the layer above's
# business (ckptkit.families, which registers itself when the ckptkit package is imported):
# formats decode bytes and hand the tree up, and never import that layer.
TreeInterpreter = Callable[[Path, str, Any, list[GlobalRef]], Checkpoint]
_INTERPRETER: list[TreeInterpreter] = []


def register_tree_interpreter(interpret: TreeInterpreter) -> None:
    _INTERPRETER[:] = [interpret]


def checkpoint_from_tree(path: Path, fmt: str, tree: Any, globals_: list[GlobalRef]) -> Checkpoint:
    """The Checkpoint of a single file's decoded tree, interpreted by the registered layer; a raw
    one (family "unknown", security findings only) if none is registered."""
    if _INTERPRETER:
        return _INTERPRETER[0](path, fmt, tree, globals_)
    ckpt = Checkpoint(path=path, format=fmt, family="unknown", size_bytes=path.stat().st_size, tree=tree, files=[path])
    ckpt.findings.extend(security_findings(path, path.name, globals_))
    return ckpt


# A file holding numpy values, which plain torch.load refuses since PyTorch 2.6 (a folder member
# that its library loads with numpy allowed, as transformers does rng_state.pth, drops it).
NUMPY_VALUES = "compat.numpy-values"
# The same for the other data torch's weights-only unpickler refuses: builtins.frozenset, range,
# slice... (ckptkit decodes them as plain values).
REFUSED_VALUES = "compat.weights-only-values"
META_TENSORS = "integrity.meta-tensors"
# A torch.save pickle whose storages are named by text persistent ids: protocol 0 writes them so.
TEXT_PERSISTENT_IDS = ("the pickle names its storages in text (pickle protocol 0: torch.save(..., pickle_protocol=0)), "
                       "which torch.load cannot read either ('saved_id must be a tuple, got str'): no torch loads "
                       "this file, and ckptkit does not read it")
# A pickle in opcodes torch's weights-only unpickler cannot read (a protocol other than torch.save's 2).
REFUSED_PICKLE = "compat.weights-only-pickle"
# A pickled class that the training system's own resume allows (timm's argparse.Namespace).
ALLOWED_CLASS = "compat.pickled-class-allowed"


def security_findings(path: Path, where: str, globals_: list[GlobalRef],
                      allowed: tuple[str, tuple[str, ...]] | None = None) -> list[Finding]:
    """What the globals a pickle named mean for loading it: one finding per global that runs code
    or that torch.load(weights_only=True) refuses, and one each for meta tensors and numpy values.
    `allowed`: (training system, the classes its own resume lets torch.load(weights_only=True) load
    through torch.serialization.safe_globals), whose instances are then no warning."""
    findings = []
    for g in globals_:
        if allowed is not None and g.kind == "class" and g.qualified_name in allowed[1]:
            findings.append(Finding(
                ALLOWED_CLASS, Severity.INFO, where,
                f"the pickle holds an instance of {g.qualified_name}, which {allowed[0]}'s own resume lets "
                f"torch.load(weights_only=True) load (torch.serialization.safe_globals): it loads there, while a "
                f"plain torch.load(path) elsewhere refuses it"))
            continue
        if g.kind == "dangerous":
            what = (f"would call {g.call}" if g.call else f"names {g.qualified_name}, which can run code")
            findings.append(Finding(
                "security.dangerous-global", Severity.ERROR, where,
                f"the pickle {what} when loaded with torch.load(weights_only=False); ckptkit did not "
                f"run it. Do not load this file with weights_only=False", weights_only_command(path)))
        elif g.kind == "class" and not weights_only_accepts(g.module, g.name):
            findings.append(Finding(
                "security.pickled-class", Severity.WARNING, where,
                f"the pickle holds an instance of {g.qualified_name}: torch.load(weights_only=True) "
                f"refuses it, and weights_only=False would import and run module {g.module!r}",
                # a torch.nn module is a model saved whole (torch.save(model)): its weights are the way out
                weights_only_command(path) if g.module.startswith("torch.nn.") else
                f"ckptkit repair {shlex.quote(str(path))} --fix security.pickled-class"))
    if any(g.qualified_name == "torch._utils._rebuild_meta_tensor_no_storage" for g in globals_):
        findings.append(Finding(
            META_TENSORS, Severity.ERROR, where,
            "tensors were saved from the meta device: they have a shape but no values (the model was "
            "saved before its weights were materialized); load_state_dict stops with 'Cannot copy out "
            "of meta tensor' and nothing in this file can restore them",
            "save again after the weights exist (to_empty() then init, or load real weights first); "
            "resume from an earlier checkpoint"))
    refused = sorted({g.qualified_name for g in globals_ if g.kind == "known" and g.module.split(".")[0] != "numpy"
                      and not weights_only_accepts(g.module, g.name)})
    if refused:
        names = ", ".join(n.removeprefix("builtins.") for n in refused)
        findings.append(Finding(
            REFUSED_VALUES, Severity.WARNING, where,
            f"the pickle holds values torch.load(weights_only=True) refuses ({', '.join(refused)}): since "
            "PyTorch 2.6, torch.load(path) stops with 'Weights only load failed' (weights_only=True being the "
            "default), so a resume that calls torch.load without weights_only=False stops there; the values "
            "are plain data",
            f"load it inside torch.serialization.safe_globals([{names}]), or save lists and tuples instead"))
    numpy = sorted({g.qualified_name for g in globals_ if g.kind != "dangerous" and g.module.split(".")[0] == "numpy"})
    if numpy:
        # torch's weights-only unpickler allows no numpy name by default (checked against torch
        # 2.13's _get_allowed_globals); torch.load's default became weights_only=True in 2.6.
        findings.append(Finding(
            NUMPY_VALUES, Severity.WARNING, where,
            f"the pickle holds numpy values ({', '.join(numpy)}): since PyTorch 2.6, torch.load(path) "
            "refuses it ('Weights only load failed', weights_only=True being the default), so a resume "
            "that calls torch.load without weights_only=False stops there; the values are plain data",
            _numpy_way_out(path, numpy)))
    return findings


# What writes the opcodes torch's weights-only unpickler stops at (pickle_verdict.WEIGHTS_ONLY_OPCODES).
_PROTOCOL_4 = frozenset({"FRAME", "MEMOIZE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES8", "BYTEARRAY8",
                         "STACK_GLOBAL", "NEWOBJ_EX", "FROZENSET", "ADDITEMS", "NEXT_BUFFER", "READONLY_BUFFER"})
_PROTOCOL_3 = frozenset({"SHORT_BINBYTES", "BINBYTES"})


def weights_only_pickle_findings(path: Path, where: str, refused: tuple[str, ...]) -> list[Finding]:
    """A torch.save file whose pickle torch.load(weights_only=True) stops in: `refused`, the opcodes
    its weights-only unpickler cannot read, in the order the pickle runs them (it stops at the first)."""
    if not refused:
        return []
    operand = next(code for code, name in OPCODE_NAMES.items() if name == refused[0])
    if _PROTOCOL_4 & set(refused):
        how = "pickle protocol 4 or 5 (torch.save(..., pickle_protocol=4) or higher)"
    elif _PROTOCOL_3 & set(refused):
        how = "pickle protocol 3 or higher, which writes a bytes value as BINBYTES"
    else:
        how = "pickle protocol 0 or 1 (text opcodes)"
    target = path.with_name(f"{path.stem}.p2{path.suffix}")
    return [Finding(
        REFUSED_PICKLE, Severity.WARNING, where,
        f"the pickle is written in {how}, whose opcodes torch's weights-only unpickler cannot read "
        f"({', '.join(refused[:4])}): since PyTorch 2.6, torch.load(path) stops with 'Weights only load failed ... "
        f"Unsupported operand {operand}' (weights_only=True being the default), so a resume that "
        "calls torch.load without weights_only=False stops there",
        f"ckptkit convert {shlex.quote(str(path))} {shlex.quote(str(target))} (the same content in pickle protocol "
        "2, as torch.save writes by default, which torch.load reads; then put it in place of the original)")]


def _numpy_way_out(path: Path, names: list[str]) -> str:
    """Numbers alone (numpy scalars and their dtypes) are rewritten as plain ones by `convert`,
    which torch.load accepts; arrays need numpy allowed where the file is loaded."""
    allow = "load it inside torch.serialization.safe_globals([...]) with those numpy names"
    if any(n.rsplit(".", 1)[-1] not in ("scalar", "dtype") for n in names):
        return f"{allow}, or save plain lists and numbers instead of numpy ones"
    plain = path.with_name(f"{path.stem}.plain{path.suffix}")
    return (f"ckptkit convert {shlex.quote(str(path))} {shlex.quote(str(plain))} (the numpy numbers written "
            f"as plain ones, which torch.load accepts; then put it in place of the original); or {allow}")


def weights_only_command(path: Path) -> str:
    """The command that keeps a checkpoint's tensors in a safetensors file beside it, leaving every
    pickled object behind: the way out of a pickle that must not be loaded. A DCP data or metadata
    file names its folder (a member alone is not a checkpoint); a folder reader passes its folder."""
    source = path.parent if path.suffix == ".distcp" or path.name == ".metadata" else path
    target = source.with_name((source.stem if source.is_file() else source.name) + ".safetensors")
    return f"ckptkit convert {shlex.quote(str(source))} {shlex.quote(str(target))} --weights-only"


def unpickle_or_raise(path: Path, what: str, load: Callable[[], UnpickleResult]) -> UnpickleResult:
    """Run an unpickling callable, turning any failure into one CorruptCheckpointError line.

    Fail closed: a pickle that could not be read to its end is never called safe, and the calls
    it makes before the stop (pickle.load makes them before it reaches the damage) are named."""
    try:
        return load()
    except RecursionError as exc:
        raise CorruptCheckpointError(path, f"{what}: pickle nests too deeply to be a checkpoint"
                                     f"{_unverified(exc)}") from None
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
    except (CorruptCheckpointError, UnsupportedFeatureError) as exc:   # a reader's own verdict, from its callback
        if getattr(exc, PARTIAL_ATTR, None):
            raise type(exc)(exc.path, f"{exc.message}{_unverified(exc)}") from None
        raise
    except Exception as exc:  # any other exception from the unpickler means the bytes are wrong
        raise CorruptCheckpointError(path, f"{what} is damaged: {type(exc).__name__}: {_first_line(exc)}"
                                     f"{_unverified(exc)}") from None


def _unverified(exc: BaseException) -> str:
    return unverified_suffix(getattr(exc, PARTIAL_ATTR, None) or [])


def unverified_suffix(globals_: list[GlobalRef]) -> str:
    """'; not verified safe to load ...': what the calls seen before the stop would do."""
    seen = [g for g in globals_ if g.kind == "dangerous"]
    if not seen:
        return " (so it could not be verified as safe to load)"
    calls = "; ".join(f"call {g.call}" if g.call else f"load {g.qualified_name}" for g in seen[:3])
    calls += f"; and {len(seen) - 3} more" if len(seen) > 3 else ""
    return (f"; it could not be verified, and before that point it would {calls} when loaded with "
            "torch.load(weights_only=False): do not load it")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
