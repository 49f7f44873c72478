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
_TREE = Path(__file__).resolve().parents[2]  # a checkout's root, or the site-packages ckptkit is in


@dataclass(frozen=True)
class TrainerEntry:
    name: str  # what checkpoints record ("lm")
    module: str  # what `python -m` runs ("trainers.lm" in a checkout, "ckptkit_trainers.lm" installed)


def registered_trainers() -> dict[str, TrainerEntry]:
    """Every registered trainer by name, under the name this source tree gives it (a checkout's
    own entries first: they match the code that is running)."""
    return {name: TrainerEntry(name, modules[0]) for name, modules in sorted(_module_names().items())}


def find_trainer(name: str | None) -> TrainerEntry | None:
    """The registered trainer of that name, under a module name that imports here: the one that
    is part of this ckptkit's own tree if any (a checkout's ``trainers.lm``, or an editable or
    wheel install's ``ckptkit_trainers.lm``), else any importable one; None if none imports."""
    importable = [(module, origin) for module in _module_names().get(name or "", [])
                  if (origin := _origin(module)) is not None]
    ours = [module for module, origin in importable if _TREE in origin.parents]
    chosen = ours or [module for module, _ in importable]
    return TrainerEntry(name, chosen[0]) if name and chosen else None


def trainer_module(name: str) -> str:
    """The module ``python -m`` should run for a registered trainer (KeyError: not registered)."""
    entry = find_trainer(name) or registered_trainers()[name]
    return entry.module


def _module_names() -> dict[str, list[str]]:
    """name -> module names to try: the checkout's mapping, then the installed metadata's."""
    names: dict[str, list[str]] = {}
    for name, module in _checkout_entries(_TREE / "pyproject.toml").items():
        names.setdefault(name, []).append(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        module = ep.value.split(":")[0].strip()
        if module not in names.setdefault(ep.name, []):
            names[ep.name].append(module)
    return names


def _origin(module: str) -> Path | None:
    """Where ``module`` would be imported from, without importing it (its parent packages are)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # its parent package is not there either
        return None
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


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
