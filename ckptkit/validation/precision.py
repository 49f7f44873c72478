"""Mixed precision: fp16 AMP needs its GradScaler state to resume without a loss-scale reset."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ckptkit.core.checkpoint import Finding, Severity, TensorRef
from ckptkit.families import family_named
from ckptkit.views import sections as S

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

AMP_CONFIG_KEYS = ("fp16", "use_amp", "amp", "mixed_precision", "half_precision_backend")


def check_mixed_precision(ctx: ValidationContext) -> Iterable[Finding]:
    scaler = ctx.ckpt.scaler
    if scaler is not None:
        yield from _scale(ctx, scaler)
        return
    evidence = amp_evidence(ctx)
    if evidence and S.is_optimizer_state(ctx.ckpt.optimizer):
        yield Finding("precision.missing-scaler", Severity.WARNING, ctx.where(),
                      f"training used fp16 AMP ({evidence}) but no GradScaler state was saved: a resume "
                      "restarts the loss scale at its initial 65536 and may skip the first steps on "
                      "inf/NaN gradients; save scaler.state_dict() with the checkpoint")


FP16_NAMES = ("fp16", "float16", "half", "16", "16-mixed")


def amp_evidence(ctx: ValidationContext) -> str | None:
    """Why we believe the run used fp16 AMP, in words, or None."""
    config = ctx.ckpt.config
    if isinstance(config, dict):
        for key in AMP_CONFIG_KEYS:
            value = config.get(key)
            if value is True or (isinstance(value, str) and value.lower() in ("fp16", "amp", "true")):
                return f"config {key} = {value!r}"
        declared = config.get("precision")
        if isinstance(declared, str) and declared.lower() in FP16_NAMES:
            return f"config precision = {declared!r}"
        if isinstance(declared, str) and declared.lower() not in ("", "auto"):
            return None   # the run says it trained in another precision (fp32, bf16): no scaler needed
    family = family_named(ctx.ckpt.family)
    return family.amp_evidence if family is not None else None


def _scale(ctx: ValidationContext, scaler: Any) -> Iterable[Finding]:
    if not isinstance(scaler, dict) or "scale" not in scaler:
        return
    value = scaler["scale"]
    if isinstance(value, TensorRef):
        value = value.scalar_value()
    if S.is_number(value) and not (math.isfinite(value) and value > 0):
        yield Finding("precision.bad-scale", Severity.ERROR,
                      ctx.section_where("scaler", "scale"),
                      f"expected a finite, positive loss scale, found {value}: fp16 training would "
                      "produce NaN updates or never step")
