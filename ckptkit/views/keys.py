"""Model key names: the wrapper prefixes training code adds, and matching keys across them.

`DataParallel`/`DistributedDataParallel` save keys under `module.`, `torch.compile` under
`_orig_mod.`, Lightning modules and HF heads under `model.`, PEFT under `base_model.model.`.
Two state dicts that differ only by such prefixes hold the same tensors; `match_keys` pairs them
so that `diff` and `validate --against` can say "renamed by a prefix" instead of "everything
missing, everything unexpected". The prefix list lives here and only here.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Wrapper:
    """A wrapper that saves a model's keys under a prefix."""

    prefix: str
    name: str       # short and stable, for finding codes: "compat.{name}-prefix"
    origin: str     # what saved it, in words


# Longest first: `base_model.model.` must win over `model.`.
WRAPPERS: tuple[Wrapper, ...] = (
    Wrapper("base_model.model.", "peft", "a peft PeftModel"),
    Wrapper("_orig_mod.", "compile", "a torch.compile'd module"),
    Wrapper("module.", "module", "a DistributedDataParallel/DataParallel wrapper"),
    Wrapper("model.", "lightning", "a LightningModule (self.model)"),
)
KNOWN_PREFIXES: tuple[str, ...] = tuple(w.prefix for w in WRAPPERS)


def split_known_prefix(key: str) -> tuple[str, str]:
    """(the known prefixes `key` starts with, joined; the rest). Wrappers nest, so strip repeatedly."""
    stripped = key
    while True:
        for prefix in KNOWN_PREFIXES:
            if stripped.startswith(prefix) and len(stripped) > len(prefix):
                stripped = stripped[len(prefix):]
                break
        else:
            return key[: len(key) - len(stripped)], stripped


def strip_known_prefix(key: str) -> str:
    """`key` without any known wrapper prefix: "module._orig_mod.fc.weight" -> "fc.weight"."""
    return split_known_prefix(key)[1]


@dataclass(frozen=True)
class KeyRename:
    """Key `a` of one state dict is key `b` of the other: same name under different prefixes."""

    a: str
    b: str

    @property
    def prefix_a(self) -> str:
        return split_known_prefix(self.a)[0]

    @property
    def prefix_b(self) -> str:
        return split_known_prefix(self.b)[0]

    def describe(self) -> str:
        """In words: "prefix 'module.' in B only (a DistributedDataParallel/DataParallel wrapper)"."""
        pa, pb = self.prefix_a, self.prefix_b
        if pa.endswith(pb):
            extra, side = pa[: len(pa) - len(pb)], "A"
        elif pb.endswith(pa):
            extra, side = pb[: len(pb) - len(pa)], "B"
        else:
            return f"prefix {pa!r} in A, {pb!r} in B"
        origin = next((w.origin for w in WRAPPERS if w.prefix == extra), None)
        return f"prefix {extra!r} in {side} only" + (f" ({origin})" if origin else "")


@dataclass
class KeyMatch:
    """How the keys of A and B correspond. `pairs` holds (key in A, key in B) in A's order."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    renamed: list[KeyRename] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    def rename_summary(self) -> dict[str, int]:
        return summarize_renames(self.renamed)


def summarize_renames(renames: Iterable[KeyRename]) -> dict[str, int]:
    """{description: count}, e.g. {"prefix 'module.' in B only": 12}."""
    out: dict[str, int] = {}
    for r in renames:
        out[r.describe()] = out.get(r.describe(), 0) + 1
    return out


def match_keys(a_keys: Iterable[str], b_keys: Iterable[str]) -> KeyMatch:
    """Pair the keys of A and B: equal names first, then names equal once known prefixes are
    stripped (only where that pairing is unambiguous on both sides)."""
    a_list, b_list = list(a_keys), list(b_keys)
    b_set = set(b_list)
    loose_a = [k for k in a_list if k not in b_set]
    a_set = set(a_list)
    loose_b = [k for k in b_list if k not in a_set]
    by_bare_a = _group_by_bare(loose_a)
    by_bare_b = _group_by_bare(loose_b)
    renamed_to: dict[str, str] = {}
    for bare, names in by_bare_a.items():
        partners = by_bare_b.get(bare, [])
        if len(names) == 1 and len(partners) == 1:
            renamed_to[names[0]] = partners[0]
    match = KeyMatch()
    for key in a_list:
        if key in b_set:
            match.pairs.append((key, key))
        elif key in renamed_to:
            match.pairs.append((key, renamed_to[key]))
            match.renamed.append(KeyRename(key, renamed_to[key]))
        else:
            match.only_a.append(key)
    taken = set(renamed_to.values())
    match.only_b = [k for k in loose_b if k not in taken]
    return match


def _group_by_bare(keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(strip_known_prefix(key), []).append(key)
    return groups


def module_prefixes(names: Iterable[str], max_depth: int = 4) -> dict[str, str]:
    """{name: its module}, the module being the leading name components, one level deeper
    while every name falls in the same group ("layers.0.w", "layers.1.w" -> "layers.0", "layers.1")."""
    names = list(names)
    return dict(zip(names, module_prefix_list(names, max_depth), strict=True))


def module_prefix_list(names: list[str], max_depth: int = 4) -> list[str]:
    """`module_prefixes`' modules, one per name in order (`inspect` needs no dict of them)."""
    if not names:
        return []
    # Every name starts with the common prefix of the smallest and the largest, so each of its
    # dot-ended components is shared by all names: one group at each of those depths. Start
    # there instead of splitting 100,000 names once per shared level.
    shared = os.path.commonprefix([min(names), max(names)]).count(".")
    depth = max(1, min(shared + 1, max_depth))
    while True:     # the prefixes that decide the depth are the ones returned: computed once
        prefixes = [".".join(k.split(".", depth)[:depth]) for k in names]
        if depth >= max_depth or len(set(prefixes)) > 1 or all(k.count(".") < depth for k in names):
            return prefixes
        depth += 1
