"""Which module continues a checkpoint: the trainer name the checkpoint records (its ``ckptkit``
entry, written by the checkpoint manager) looked up among the registered trainers.

Trainers register as entry points of the group ``ckptkit.trainers`` (``name = "module:main"``,
in ckptkit's own pyproject.toml for the bundled ones; any installed package may add its own).
A source checkout that was never reinstalled has no such metadata, or stale metadata: there the
checkout's pyproject.toml is read instead, with its ``package-dir`` mapping, so the bundled
trainers resolve to the checkout's folder (``trainers.lm``) rather than the installed name
(``ckptkit_trainers.lm``). The library never names a trainer module itself.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "ckptkit.trainers"
_CHECKOUT_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@dataclass(frozen=True)
class TrainerEntry:
    name: str  # what checkpoints record ("lm")
    module: str  # what `python -m` runs ("trainers.lm" in a checkout, "ckptkit_trainers.lm" installed)


def registered_trainers() -> dict[str, TrainerEntry]:
    """Every registered trainer by name; in a source checkout, the checkout's own entries win
    (they match the code that is running)."""
    found = {ep.name: ep.value.split(":")[0].strip() for ep in entry_points(group=ENTRY_POINT_GROUP)}
    found.update(_checkout_entries(_CHECKOUT_PYPROJECT))
    return {name: TrainerEntry(name, module) for name, module in sorted(found.items())}


def find_trainer(name: str | None) -> TrainerEntry | None:
    """The registered trainer of that name whose module can be imported here, if any."""
    entry = registered_trainers().get(name or "")
    if entry is None:
        return None
    try:
        importable = importlib.util.find_spec(entry.module) is not None
    except ModuleNotFoundError:  # its parent package is not there either
        importable = False
    return entry if importable else None


def _checkout_entries(pyproject: Path) -> dict[str, str]:
    """ckptkit's entry points as a source checkout declares them, module names mapped through
    ``[tool.setuptools.package-dir]`` to the checkout's folders; {} outside a checkout."""
    try:
        import tomllib  # Python 3.11+; on 3.10 a checkout relies on installed metadata
    except ImportError:  # pragma: no cover
        return {}
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if data.get("project", {}).get("name") != "ckptkit":
        return {}
    declared = data["project"].get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    folders = data.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    entries = {}
    for name, value in declared.items():
        module = str(value).split(":")[0].strip()
        top, _, rest = module.partition(".")
        folder = str(folders.get(top, top)).strip("/").replace("/", ".")
        entries[name] = f"{folder}.{rest}" if rest else folder
    return entries
