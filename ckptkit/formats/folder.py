"""What every folder format shares: reading member files lazily and assembling one Checkpoint.

A folder checkpoint is a set of member files that are each a format ckptkit already reads
(safetensors, torch zip, pickle, JSON). `FolderReading` opens each member with
`open_checkpoint` (so a member is read exactly like the same file on its own: index only, no
tensor bytes), keeps its decoded content in `tree[member name]`, and turns problems with a
member that do not make the whole folder unusable into Findings on the folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Finding, MemberFile, Progress, Severity, TensorRef
from ckptkit.core.errors import CkptkitError
from ckptkit.formats.base import NUMPY_VALUES, REFUSED_PICKLE, REFUSED_VALUES, weights_only_command
from ckptkit.formats.files import open_file

# Whole-model weight files, in the order transformers/peft prefer them when several exist.
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json",
                  "adapter_model.safetensors.index.json")


def member_names(path: Path) -> set[str]:
    """Names of the files directly inside `path` (empty when it cannot be listed). A link to a file
    counts as the file: a Hugging Face hub snapshot's members all link to its `blobs/`, and a
    link that leads nowhere is no member (its shard is then missing)."""
    try:
        with os.scandir(path) as entries:
            return {e.name for e in entries if e.is_file()}
    except OSError:
        return set()


def subfolders(path: Path) -> list[str]:
    """Names of the folders directly inside `path`, sorted (empty when it cannot be listed)."""
    try:
        return sorted(e.name for e in path.iterdir() if e.is_dir())
    except OSError:
        return []


def has_weights(names: set[str]) -> bool:
    return any(n in names for n in WEIGHT_FILES + WEIGHT_INDEXES)


@dataclass
class FolderReading:
    """A folder being read: collects the tree, member list, findings and files as members are opened."""

    path: Path
    tree: dict[str, Any] = field(default_factory=dict)
    members: dict[str, MemberFile] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)   # each member's own (safetensors __metadata__)
    shards: list[str] = field(default_factory=list)     # a sharded index's files, in the index's order

    def where(self, member: str) -> str:
        return f"{self.path.name}/{member}"

    def add_finding(self, code: str, severity: Severity, member: str, message: str,
                    fix: str | None = None) -> None:
        self.findings.append(Finding(code, severity, self.where(member) if member else self.path.name,
                                     message, fix))

    def open_member(self, name: str, role: str, classes_expected: bool = False,
                    numpy_allowed: bool = False) -> Checkpoint | None:
        """Open one member with the single-file readers; an unreadable member becomes an error finding.

        `classes_expected`: the member is known to hold pickled objects of the library that wrote
        it (HF `training_args.bin`), which nothing loads on resume, so their stubs are noted, not warned.
        `numpy_allowed`: the library that reads it back allows numpy values in torch.load
        (transformers' `safe_globals` for `rng_state.pth`), so they are no finding; nor are they in
        a member nothing reads back (`classes_expected`).
        """
        try:
            member = open_file(self.path / name)
        except CkptkitError as exc:
            self._note(name, role, None)
            self.add_finding("folder.unreadable-member", Severity.ERROR, name,
                             f"{role} file cannot be read: {exc.message}")
            return None
        self._note(name, role, member.format)
        self.tree[name] = member.tree
        self.metadata[name] = member.metadata
        classes = [f for f in member.findings if classes_expected and f.code == "security.pickled-class"]
        for f in member.findings:
            if f not in classes and not ((numpy_allowed or classes_expected) and f.code == NUMPY_VALUES
                                         or classes_expected and f.code in (REFUSED_VALUES, REFUSED_PICKLE)):
                # A member's weights-only way out converts the whole folder (its model is elsewhere).
                fix = weights_only_command(self.path) if f.code == "security.dangerous-global" else f.fix
                self.findings.append(Finding(f.code, f.severity, self.where(f.where), f.message, fix))
        if classes:
            root = getattr(member.tree, "qualified_name", "an object")
            self.add_finding("folder.pickled-objects", Severity.INFO, name,
                             f"{role}: a pickled {root} (objects of {len(classes)} library classes); ckptkit "
                             "shows its fields without importing them, and a resume does not load this file")
        return member

    def read_json(self, name: str, role: str) -> Any:
        """A JSON member's content, or None (with an error finding) when it is not valid JSON."""
        self._note(name, role, "json")
        try:
            value = json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.members[name] = MemberFile(name, self._size(name), role, None)
            self.add_finding("folder.unreadable-member", Severity.ERROR, name,
                             f"{role} file is not valid JSON ({exc}): its content is lost to a resume")
            return None
        self.tree[name] = value
        return value

    def read_weights(self, names: set[str]) -> dict[str, TensorRef]:
        """The model's tensors from a single weight file or a sharded index (first present wins)."""
        for index in WEIGHT_INDEXES:
            if index in names:
                return self._read_sharded(index)
        for name in WEIGHT_FILES:
            if name in names:
                return self.read_weights_file(name, "adapter weights" if "adapter" in name else "model weights")
        return {}

    def read_weights_file(self, name: str, role: str) -> dict[str, TensorRef]:
        """The model's tensors from the weight file `name` (a state dict, or a file of tensors)."""
        member = self.open_member(name, role)
        if member is None:
            return {}
        self.sources["model"] = name
        return dict(member.model) or {k: t for k, t in member.tensors()}

    def _read_sharded(self, index: str) -> dict[str, TensorRef]:
        content = self.read_json(index, "sharded weights index")
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict):
            if content is not None:
                self.add_finding("folder.bad-index", Severity.ERROR, index,
                                 "sharded index has no 'weight_map': the shards cannot be assembled")
            return {}
        model: dict[str, TensorRef] = {}
        by_shard: dict[str, list[str]] = {}
        # A shard's keys mostly follow each other in the index: one step per run, not per key
        # (JSON object keys are strings already).
        for shard, run in groupby(weight_map.items(), key=itemgetter(1)):
            by_shard.setdefault(str(shard), []).extend(map(itemgetter(0), run))
        # The weight map now lives on as the model's keys, shard by shard: the tree keeps the
        # index's other fields. Its 100,000 names and file names, and each shard's list once that
        # shard is read, are freed before the shards' own names pile up (memory is time here:
        # every page first touched costs a fault).
        del content["weight_map"], weight_map
        self.shards = list(by_shard)
        for shard in self.shards:
            keys = by_shard.pop(shard)
            if not (self.path / shard).is_file():
                self.add_finding("folder.missing-shard", Severity.ERROR, index,
                                 f"the index maps {len(keys)} tensors (e.g. {keys[0]!r}) to shard {shard!r}, "
                                 "which is missing: loading the model would fail")
                continue
            member = self.open_member(shard, "model weights shard")
            if member is None:
                continue
            tensors = member.model or dict(member.tensors())    # only read here: no copy
            if keys == list(tensors):     # the index lists the shard's keys in the shard's order: one merge
                model.update(tensors)
                continue
            absent = [k for k in keys if k not in tensors]
            if absent:
                self.add_finding("folder.shard-key-missing", Severity.ERROR, shard,
                                 f"the index says {len(absent)} tensors (e.g. {absent[0]!r}) are in this "
                                 "shard, but it does not hold them")
            model.update(zip(keys, map(tensors.__getitem__, keys), strict=True) if not absent else
                         {k: tensors[k] for k in keys if k in tensors})
        self.sources["model"] = f"{index} ({len(self.shards)} shards)"
        return model

    def finish(self, fmt: str, family: str, progress: Progress) -> Checkpoint:
        """The Checkpoint: every file in the folder listed as a member, read or not."""
        for name in sorted(member_names(self.path)):
            if name not in self.members:
                self._note(name, "other", None)
        members = sorted(self.members.values(), key=lambda m: m.name)
        return Checkpoint(path=self.path, format=fmt, family=family,
                          size_bytes=sum(m.size_bytes for m in members), tree=self.tree,
                          progress=progress, findings=self.findings, sources=self.sources,
                          files=[self.path / m.name for m in members], members=members)

    def _note(self, name: str, role: str, fmt: str | None) -> None:
        self.members[name] = MemberFile(name, self._size(name), role, fmt)

    def _size(self, name: str) -> int:
        try:
            return (self.path / name).stat().st_size
        except OSError:
            return 0


def take_training_state(ckpt: Checkpoint, state: Checkpoint, member: str) -> None:
    """A folder's training-state member (EnStack's `training_state.pth`, ckptkit's sharded
    `ckptkit_training_state.pt`) gives the folder its family, progress and non-tensor
    sections; each section's source names the member."""
    ckpt.family, ckpt.progress = state.family, state.progress
    for attr in ("optimizer", "scheduler", "scaler", "rng"):
        value = getattr(state, attr)
        if value is not None and getattr(ckpt, attr) is None:
            setattr(ckpt, attr, value)
            ckpt.sources[attr] = f"{member}: {state.sources.get(attr, attr)}"
    ckpt.metrics.update(state.metrics)
    ckpt.histories.update(state.histories)
    ckpt.extra.update(state.extra)
    ckpt.progress.sources = {k: f"{member} {v}" for k, v in ckpt.progress.sources.items()}
