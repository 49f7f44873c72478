"""Compatibility: would this checkpoint's model load into the reference (`--against REF`)?

Reports what `load_state_dict(strict=True)` would complain about (missing keys, unexpected
keys, size mismatches) and, where it can be told, why: a wrapper prefix (`module.` from DDP,
`_orig_mod.` from torch.compile, `model.` from Lightning, `base_model.model.` from peft), a
resized vocabulary, tied weights, or an optimizer built for another parameter set.
"""
from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ckptkit.core.checkpoint import Finding, Severity, TensorRef
from ckptkit.formats.safetensors_file import may_be_dcp_rank_file
from ckptkit.validation.optimizer import against_model
from ckptkit.validation.param_matching import describe_shape
from ckptkit.views import sections as S
from ckptkit.views.keys import WRAPPERS, KeyMatch, Wrapper, match_keys

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext


EMBEDDING_WORDS = ("embed", "wte", "lm_head", "word_embeddings", "shared", "tok_embeddings", "output.weight")
TIED_PAIRS = (("lm_head.weight", ("transformer.wte.weight", "model.embed_tokens.weight", "embed_tokens.weight",
                                  "shared.weight", "tok_embeddings.weight", "wte.weight")),)
# Wrappers whose prefix `ckptkit repair --fix CODE` strips.
REPAIRABLE = frozenset({"module", "compile"})


def check_compatibility(ctx: ValidationContext) -> Iterable[Finding]:
    yield from _dcp_rank_file(ctx)
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
    match = match_keys(model, ref)
    yield from _causes(ctx, match)
    by_ref_name = {b: model[a] for a, b in match.pairs}
    yield from _keys(ctx, {**by_ref_name, **{k: model[k] for k in match.only_a}}, ref, match)
    yield from _shapes(ctx, by_ref_name, ref)
    opt = ctx.ckpt.optimizer
    if S.is_optimizer_state(opt):
        yield from against_model(ctx, opt, ref, f"the reference {ctx.reference.path.name}",
                                 code="compat.optimizer-param-set")


def _dcp_rank_file(ctx: ValidationContext) -> Iterable[Finding]:
    """A safetensors file that is one rank's part of a DCP Hugging Face save, read alone."""
    if may_be_dcp_rank_file(ctx.ckpt.format, ctx.ckpt.metadata):
        from ckptkit.formats.dcp_safetensors import rank_file_findings

        yield from rank_file_findings(ctx.ckpt, ctx.where())


def code_for(wrapper: Wrapper) -> str:
    return f"compat.{wrapper.name}-prefix"


def _causes(ctx: ValidationContext, match: KeyMatch) -> Iterable[Finding]:
    """One finding per wrapper prefix that explains renamed keys, on the side that has it."""
    assert ctx.reference is not None
    counts: dict[tuple[str, bool], int] = {}
    for rename in match.renamed:
        pa, pb = rename.prefix_a, rename.prefix_b
        extra, ours = (pa[: len(pa) - len(pb)], True) if pa.endswith(pb) else (pb[: len(pb) - len(pa)], False)
        while extra:
            wrapper = next((w for w in WRAPPERS if extra.startswith(w.prefix)), None)
            if wrapper is None:
                break
            counts[(wrapper.prefix, ours)] = counts.get((wrapper.prefix, ours), 0) + 1
            extra = extra[len(wrapper.prefix):]
    ref_name = ctx.reference.path.name
    where = ctx.where(ctx.ckpt.sources.get("model", "model"))
    for (prefix, ours), n in counts.items():
        w = next(w for w in WRAPPERS if w.prefix == prefix)
        code = code_for(w)
        if ours:
            yield Finding(code, Severity.ERROR, where,
                          f"keys here start with '{w.prefix}' (saved from {w.origin}) but the reference "
                          f"{ref_name}'s do not ({n} keys): load_state_dict(strict=True) reports them as missing "
                          "and unexpected; strip the prefix", ctx.repair(code) if w.name in REPAIRABLE else None)
        else:
            fix = (f"ckptkit repair {shlex.quote(str(ctx.reference.path))} --fix {code}"
                   if w.name in REPAIRABLE else None)
            yield Finding(code, Severity.ERROR, where,
                          f"the reference {ref_name}'s keys start with '{w.prefix}' (saved from {w.origin}) but "
                          f"these do not ({n} keys): load into the wrapped model's inner module, or strip the "
                          "prefix from the reference", fix)


def _keys(ctx: ValidationContext, ours: dict[str, TensorRef], ref: dict[str, TensorRef],
          match: KeyMatch) -> Iterable[Finding]:
    missing, unexpected = list(match.only_b), list(match.only_a)
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
                      f"{_count_keys(len(missing))} of {ref_name} {'is' if len(missing) == 1 else 'are'} missing here: "
                      f"{_sample(missing)}")
    if unexpected:
        yield Finding("compat.unexpected-keys", Severity.ERROR, ctx.where(_first(unexpected)),
                      f"{_count_keys(len(unexpected))} here {'is' if len(unexpected) == 1 else 'are'} "
                      f"unexpected by {ref_name}: "
                      f"{_sample(unexpected)}")


def _shapes(ctx: ValidationContext, ours: dict[str, TensorRef], ref: dict[str, TensorRef]) -> Iterable[Finding]:
    for name, t in ours.items():
        r = ref.get(name)
        if r is None or r.shape == t.shape:
            continue
        mine, theirs = describe_shape(t.shape), describe_shape(r.shape)
        # Shapes of different rank compare on their common dimensions; the rank test below tells them apart.
        differing = [i for i, (a, b) in enumerate(zip(t.shape, r.shape, strict=False)) if a != b]
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
    for w in WRAPPERS:
        if w.name in REPAIRABLE and model and all(k.startswith(w.prefix) for k in model):
            yield Finding(code_for(w), Severity.INFO, ctx.where(ctx.ckpt.sources.get("model", "model")),
                          f"all {len(model)} keys start with '{w.prefix}' (saved from {w.origin}): loading into "
                          "the plain model fails with missing and unexpected keys until the prefix is stripped",
                          ctx.repair(code_for(w)))


def _first(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else f"{keys[0]} (+{len(keys) - 1} more)"


def _sample(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _count_keys(n: int) -> str:
    return f"{n} key" if n == 1 else f"{n} keys"
