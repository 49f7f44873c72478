"""Security: globals a pickle names outside the known-safe set.

The restricted unpickler records them while reading (`ckptkit.formats.base.security_findings`);
this check passes them on and adds what they mean for loading with torch.
"""
from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING

from ckptkit.core.checkpoint import Finding, Severity
from ckptkit.formats.base import weights_only_command

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext


def check_security(ctx: ValidationContext) -> Iterable[Finding]:
    yield from ctx.ckpt.findings
    # C-level passes: a shard folder has 100,000 tensors and (safetensors) never a subclass.
    subclasses = sorted(set(map(attrgetter("subclass"), ctx.tensor_values)) - {None, ""})
    for name in subclasses:
        yield Finding("security.tensor-subclass", Severity.WARNING, ctx.where(),
                      f"tensors are pickled as subclass {name}: torch.load(weights_only=True) refuses "
                      "it unless the class is allow-listed, and weights_only=False would import its module",
                      weights_only_command(ctx.ckpt.path))
