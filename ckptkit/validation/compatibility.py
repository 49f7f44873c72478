"""Compatibility: would this checkpoint's model load into the reference (`--against REF`)?

Reports what `load_state_dict(strict=True)` would complain about (missing keys, unexpected
keys, size mismatches) and, where it can be told, why: a wrapper prefix (`module.` from DDP,
`_orig_mod.` from torch.compile, `model.` from Lightning, `base_model.model.` from peft), a
resized vocabulary, tied weights, or an optimizer built for another parameter set.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ckptkit import sections as S
from ckptkit.checkpoint import Finding, Severity, TensorRef
from ckptkit.validation.optimizer import against_model
from ckptkit.validation.param_matching import describe_shape

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext


@dataclass(frozen=True)
class Wrapper:
    prefix: str
    code: str
    origin: str


# Longest first: 'base_model.model.' must win over 'model.'.
WRAPPERS = (Wrapper("base_model.model.", "compat.peft-prefix", "a peft PeftModel"),
            Wrapper("_orig_mod.", "compat.compile-prefix", "a torch.compile'd module"),
            Wrapper("module.", "compat.module-prefix", "a DistributedDataParallel/DataParallel wrapper"),
            Wrapper("model.", "compat.lightning-prefix", "a LightningModule (self.model)"))
EMBEDDING_WORDS = ("embed", "wte", "lm_head", "word_embeddings", "shared", "tok_embeddings", "output.weight")
TIED_PAIRS = (("lm_head.weight", ("transformer.wte.weight", "model.embed_tokens.weight", "embed_tokens.weight",
                                  "shared.weight", "tok_embeddings.weight", "wte.weight")),)


def check_compatibility(ctx: ValidationContext) -> Iterable[Finding]:
    model = ctx.ckpt.model
    if ctx.reference is None:
        yield from _lone_wrapper_prefix(ctx, model)
        return
    ref = ctx.reference.model
    if not model or not ref:
        which = "this checkpoint" if not model else f"the reference {ctx.reference.path.name}"
        yield Finding("compat.no-model", Severity.ERROR, ctx.where(),
                      f"expected model weights on both sides to compare, found none in {which}")
        return
    names, causes = align(list(model), list(ref))
    yield from causes_findings(ctx, causes)
    by_name = {names[k]: model[k] for k in model}
    yield from _keys(ctx, by_name, ref)
    yield from _shapes(ctx, by_name, ref)
    opt = ctx.ckpt.optimizer
    if S.is_optimizer_state(opt):
        yield from against_model(ctx, opt, ref, f"the reference {ctx.reference.path.name}", code="compat.optimizer-param-set")


def align(keys: list[str], ref_keys: list[str]) -> tuple[dict[str, str], list[tuple[Wrapper, bool]]]:
    """Strip wrapper prefixes from either side while that makes more keys agree.

    Returns {key: name comparable with the reference}, and the causes as (wrapper, on_our_side).
    """
    ours = {k: k for k in keys}
    theirs = set(ref_keys)
    causes: list[tuple[Wrapper, bool]] = []
    for _ in range(len(WRAPPERS)):
        base = len(set(ours.values()) & theirs)
        best = None
        for w in WRAPPERS:
            stripped = {k: _strip(v, w.prefix) for k, v in ours.items()}
            if len(set(stripped.values()) & theirs) > base:
                best, base = (w, True, stripped, theirs), len(set(stripped.values()) & theirs)
            ref_stripped = {_strip(k, w.prefix) for k in theirs}
            if len(set(ours.values()) & ref_stripped) > base:
                best, base = (w, False, ours, ref_stripped), len(set(ours.values()) & ref_stripped)
        if best is None:
            break
        causes.append((best[0], best[1]))
        ours, theirs = best[2], best[3]
    if any(not ours_side for _, ours_side in causes):    # compare against the reference's real names
        theirs_by_norm = {_strip_all(k, causes): k for k in ref_keys}
        ours = {k: theirs_by_norm.get(v, v) for k, v in ours.items()}
    return ours, causes


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _strip_all(key: str, causes: list[tuple[Wrapper, bool]]) -> str:
    for w, ours_side in causes:
        if not ours_side:
            key = _strip(key, w.prefix)
    return key


def causes_findings(ctx: ValidationContext, causes: list[tuple[Wrapper, bool]]) -> Iterable[Finding]:
    assert ctx.reference is not None
    ref_name = ctx.reference.path.name
    for w, ours_side in causes:
        if ours_side:
            yield Finding(w.code, Severity.ERROR, ctx.where(ctx.ckpt.sources.get("model", "model")),
                          f"keys here start with '{w.prefix}' (saved from {w.origin}) but the reference "
                          f"{ref_name}'s do not: load_state_dict(strict=True) reports every key as missing "
                          f"and unexpected; strip the prefix", ctx.repair(w.code))
        else:
            yield Finding(w.code, Severity.ERROR, ctx.where(ctx.ckpt.sources.get("model", "model")),
                          f"the reference {ref_name}'s keys start with '{w.prefix}' (saved from {w.origin}) "
                          f"but these do not: load into the wrapped model's inner module, or strip the prefix "
                          "from the reference", f"ckptkit repair {ctx.reference.path} --fix {w.code}")


def _keys(ctx: ValidationContext, ours: dict[str, TensorRef], ref: dict[str, TensorRef]) -> Iterable[Finding]:
    missing = [k for k in ref if k not in ours]
    unexpected = [k for k in ours if k not in ref]
    for tied, partners in TIED_PAIRS:
        source = next((p for p in partners if p in ours and p in ref), None)
        if source is None:
            continue
        if tied in missing and ref[tied].shape == ours[source].shape:
            missing.remove(tied)
            yield Finding("compat.tied-weights", Severity.INFO, ctx.where(tied),
                          f"'{tied}' is absent here but present in the reference; it is tied to '{source}' "
                          f"(same shape {describe_shape(ours[source].shape)}), so the model rebuilds it: load "
                          "with strict=False, then model.tie_weights()")
        if tied in unexpected and ours[tied].shape == ref[source].shape:
            unexpected.remove(tied)
            yield Finding("compat.tied-weights", Severity.INFO, ctx.where(tied),
                          f"'{tied}' is saved here but the reference leaves it out: it is tied to '{source}'; "
                          "load with strict=False (the tie restores it)")
    ref_name = ctx.reference.path.name if ctx.reference else "the reference"
    if missing:
        yield Finding("compat.missing-keys", Severity.ERROR, ctx.where(_first(missing)),
                      f"{len(missing)} keys of {ref_name} are missing here: {_sample(missing)}")
    if unexpected:
        yield Finding("compat.unexpected-keys", Severity.ERROR, ctx.where(_first(unexpected)),
                      f"{len(unexpected)} keys here are unexpected by {ref_name}: {_sample(unexpected)}")


def _shapes(ctx: ValidationContext, ours: dict[str, TensorRef], ref: dict[str, TensorRef]) -> Iterable[Finding]:
    for name, t in ours.items():
        r = ref.get(name)
        if r is None or r.shape == t.shape:
            continue
        mine, theirs = describe_shape(t.shape), describe_shape(r.shape)
        differing = [i for i, (a, b) in enumerate(zip(t.shape, r.shape)) if a != b]
        if (len(t.shape) == len(r.shape) and len(differing) == 1
                and any(w in name.lower() for w in EMBEDDING_WORDS)):
            d = differing[0]
            yield Finding("compat.resized-vocab", Severity.ERROR, ctx.where(name),
                          f"size mismatch for {name}: vocabulary resized, {t.shape[d]} rows here vs "
                          f"{r.shape[d]} in the reference ({mine} vs {theirs}); call "
                          f"model.resize_token_embeddings({t.shape[d]}) before loading")
        else:
            yield Finding("compat.shape-mismatch", Severity.ERROR, ctx.where(name),
                          f"size mismatch for {name}: copying a param with shape {mine} from this checkpoint, "
                          f"the shape in the reference model is {theirs}")


def _lone_wrapper_prefix(ctx: ValidationContext, model: dict[str, TensorRef]) -> Iterable[Finding]:
    """Without a reference, a DDP or compile prefix on every key still predicts a failed load."""
    for w in WRAPPERS[1:3]:
        if model and all(k.startswith(w.prefix) for k in model):
            yield Finding(w.code, Severity.INFO, ctx.where(ctx.ckpt.sources.get("model", "model")),
                          f"all {len(model)} keys start with '{w.prefix}' (saved from {w.origin}): loading into "
                          "the plain model fails with missing and unexpected keys until the prefix is stripped",
                          ctx.repair(w.code))


def _first(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else f"{keys[0]} (+{len(keys) - 1} more)"


def _sample(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
