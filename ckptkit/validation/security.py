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
from ckptkit.storage.pickle_known import DTENSOR

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext


def check_security(ctx: ValidationContext) -> Iterable[Finding]:
    yield from ctx.ckpt.findings
    # C-level passes: a shard folder has 100,000 tensors and (safetensors) never a subclass.
    subclasses = set(map(attrgetter("subclass"), ctx.tensor_values))
    if DTENSOR in subclasses:
        yield from _dtensor_findings(ctx)
    for name in sorted(subclasses - {None, "", DTENSOR}):
        yield Finding("security.tensor-subclass", Severity.WARNING, ctx.where(),
                      f"tensors are pickled as subclass {name}: torch.load(weights_only=True) refuses "
                      "it unless the class is allow-listed, and weights_only=False would import its module",
                      weights_only_command(ctx.ckpt.path))


def _dtensor_findings(ctx: ValidationContext) -> Iterable[Finding]:
    """DTensors saved with torch.save (FSDP2, tensor parallel: `torch.save(model.state_dict())`
    on a rank). Each holds the saving rank's local part; torch's own classes, loadable with
    weights_only=True once torch.distributed.tensor is imported."""
    dtensors = [(key, t) for key, t in ctx.tensors if t.subclass == DTENSOR]
    shards = [(key, t) for key, t in dtensors if t.is_shard]
    if shards:
        key, t = shards[0]
        yield Finding("compat.dtensor-shards", Severity.WARNING, ctx.where(key),
                      f"{len(shards)} of {len(dtensors)} DTensors hold only the saving rank's shard (e.g. {key!r}: "
                      f"{list(t.shape)} of {list(t.global_shape or ())}): this file is one rank's part of a sharded "
                      "model (FSDP2 or tensor parallel, saved with torch.save); only a resume on the same ranks "
                      "and mesh loads it, each rank its own file, and no whole model comes out of it",
                      "save with torch.distributed.checkpoint (dcp.save on every rank), or gather a whole copy "
                      "first: get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, "
                      "cpu_offload=True))")
    yield Finding("compat.dtensor", Severity.INFO, ctx.where(),
                  f"{len(dtensors)} tensors are DTensors: torch.load(weights_only=True) reads them once "
                  "torch.distributed.tensor is imported (as an FSDP2 or tensor-parallel script has); a plain "
                  "torch.load(path) in a fresh process stops with 'torch.distributed.tensor must be imported "
                  "to load DTensors'")
