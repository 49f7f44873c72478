"""RNG state: present where a resume needs it, one per rank, and of the right size."""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ckptkit.core.checkpoint import Finding, Severity, iter_tensors
from ckptkit.families import counters_tree, system_folder

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

RNG_MEMBER = re.compile(r"^rng_state(?:_(?P<rank>\d+))?\.pth$")
# torch's generator states: Mersenne Twister (CPU) and Philox seed+offset (CUDA), as uint8 tensors.
STATE_BYTES = {"cpu": 5056, "cuda": 16}


def check_rng(ctx: ValidationContext) -> Iterable[Finding]:
    ckpt = ctx.ckpt
    if isinstance(ckpt.tree, dict) and ckpt.path.is_dir():
        yield from _folder_ranks(ctx, ckpt.tree)
    else:
        yield from _state_sizes(ctx, ckpt.rng, ckpt.sources.get("rng", "rng_state"), None)
    # On the tree holding the counters: a folder (EnStack's last_checkpoint/) and the
    # training_state.pth inside it get the same verdict.
    found = counters_tree(ckpt)
    if found is not None and (not ckpt.path.is_dir() or system_folder(ckpt)):
        p = ckpt.progress
        # Unless the system's own resume does not continue inside this epoch (timm's recovery files
        # start the next one: its trap says what that loses).
        next_epoch = (p.resume is not None and p.resume.start_epoch is not None and p.epochs_completed is not None
                      and p.resume.start_epoch > p.epochs_completed + 1)
        if (p.epoch_complete is False and ckpt.rng is None and "data_position" not in _keys(found[1])
                and not next_epoch):
            yield Finding("rng.mid-epoch-not-exact", Severity.WARNING, ctx.where(member=found[0]),
                          f"mid-epoch checkpoint ({p.describe()}) with no RNG state and no data-loader "
                          "state: resume will not be exact; the resumed epoch is reshuffled with a fresh "
                          "random state, so skipping the batches already done repeats some samples and "
                          "never shows others")


def _folder_ranks(ctx: ValidationContext, tree: dict[str, Any]) -> Iterable[Finding]:
    ranks: dict[int | None, Any] = {}
    for member, value in tree.items():
        m = RNG_MEMBER.match(str(member))
        if m:
            ranks[int(m.group("rank")) if m.group("rank") else None] = value
            yield from _state_sizes(ctx, value, "", str(member))
    if not ranks:       # none at all is the reader's folder.missing-rng
        return
    numbered = sorted(r for r in ranks if r is not None)
    if numbered and numbered != list(range(len(numbered))):
        missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
        yield Finding("rng.missing-rank", Severity.WARNING,
                      ctx.where(member=f"rng_state_{missing[0]}.pth"),
                      f"expected one RNG state per rank 0..{max(numbered)}, missing rank(s) "
                      f"{', '.join(map(str, missing))}: those ranks would resume with fresh random state")


def _state_sizes(ctx: ValidationContext, rng: Any, key: str, member: str | None) -> Iterable[Finding]:
    """Generator states are uint8 tensors of fixed size, found under 'cpu' / 'cuda' keys."""
    for name, t in iter_tensors(rng):
        kind = _generator_kind(name)
        if kind is None or t.dtype.name != "uint8" or len(t.shape) != 1 or t.numel == STATE_BYTES[kind]:
            continue
        yield Finding("rng.bad-size", Severity.ERROR, ctx.where(".".join(p for p in (key, name) if p), member),
                      f"expected a {kind} generator state of {STATE_BYTES[kind]} bytes, found {t.numel}: "
                      "torch.set_rng_state would reject it")


def _generator_kind(name: str) -> str | None:
    """'cpu' for HF's 'cpu' and for 'torch' (get_rng_state()), 'cuda' for 'cuda' / 'cuda.0' ..."""
    parts = name.split(".")
    for part in parts:
        if part in ("cpu", "torch"):
            return "cpu"
        if part.startswith("cuda"):
            return "cuda"
    return None


def _keys(tree: Any) -> set[str]:
    return set(map(str, tree)) if isinstance(tree, dict) else set()
