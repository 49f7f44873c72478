"""`inspect`: what is in a checkpoint, as one dataclass the CLI renders as tables or JSON."""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import accumulate, groupby, repeat
from operator import attrgetter, itemgetter, mul, ne, sub
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Finding, MemberFile, Progress, TensorChunk, TensorRef
from ckptkit.families import optimizer_step
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors_file import may_be_dcp_rank_file
from ckptkit.storage.pickle_known import DTENSOR
from ckptkit.storage.safe_pickle import PickledObject
from ckptkit.views import sections as S
from ckptkit.views.jsonable import summarize, to_jsonable
from ckptkit.views.keys import module_prefix_list

SCHEMA_VERSION = 1


@dataclass
class ModuleRow:
    prefix: str
    tensors: int
    parameters: int
    dtypes: str


@dataclass
class TensorRow:
    name: str
    dtype: str
    shape: list[int]
    parameters: int


@dataclass
class ModelSummary:
    source: str
    tensors: int
    parameters: int
    bytes: int
    dtypes: dict[str, int]
    modules: list[ModuleRow]
    # Names that are one tensor (same storage, offset, shape and strides: tied weights, e.g. an
    # embedding and an LM head). Parameters and bytes count each once.
    ties: list[list[str]] = field(default_factory=list)
    # When the tensors are one rank's shards of DTensors (FSDP2, tensor parallel): the parameters
    # of the whole tensors they are parts of (`parameters` counts the shards).
    global_parameters: int | None = None
    # The tensors `tensor_list` describes: its rows are made when asked for (`--tensors`, `--json`),
    # not for every inspect (100,000 rows cost more than the rest of the summary).
    model: dict[str, TensorRef] = field(default_factory=dict, repr=False, compare=False)

    @property
    def tensor_list(self) -> list[TensorRow]:
        return [TensorRow(name, t.dtype.name, list(t.shape), t.numel) for name, t in self.model.items()]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "tensors": self.tensors, "parameters": self.parameters, "bytes": self.bytes,
                "dtypes": self.dtypes, "modules": [asdict(m) for m in self.modules],
                "tensor_list": [{"name": n, "dtype": t.dtype.name, "shape": list(t.shape), "parameters": t.numel}
                                for n, t in self.model.items()], "ties": self.ties,
                "global_parameters": self.global_parameters}


@dataclass
class GroupRow:
    index: int
    params: int
    lr: Any = None
    weight_decay: Any = None
    betas: Any = None
    momentum: Any = None


@dataclass
class OptimizerSummary:
    source: str
    kind: str
    groups: list[GroupRow]
    state_entries: int
    step: Any


@dataclass
class HistoryRow:
    name: str
    length: int
    last: Any
    best: Any


@dataclass
class Inspection:
    path: str
    format: str
    family: str
    size_bytes: int
    progress: Progress
    model: ModelSummary | None
    optimizer: OptimizerSummary | None
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: list[str] | None
    metrics: dict[str, Any]
    histories: list[HistoryRow]
    config: Any
    other_keys: dict[str, str]
    metadata: dict[str, str]
    findings: list[Finding] = field(default_factory=list)
    members: list[MemberFile] = field(default_factory=list)          # folder formats
    chunks: dict[str, list[TensorChunk]] = field(default_factory=dict)  # chunked tensors (DCP)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION, "path": self.path, "format": self.format, "family": self.family,
            "size_bytes": self.size_bytes, "progress": self.progress.to_json(),
            "model": self.model.to_json() if self.model else None,
            "optimizer": to_jsonable(asdict(self.optimizer)) if self.optimizer else None,
            "scheduler": to_jsonable(self.scheduler), "scaler": to_jsonable(self.scaler), "rng": self.rng,
            "metrics": to_jsonable(self.metrics), "histories": to_jsonable([asdict(h) for h in self.histories]),
            "config": to_jsonable(self.config), "other_keys": {str(k): v for k, v in self.other_keys.items()},
            "metadata": self.metadata,
            "findings": [f.to_json() for f in self.findings],
            "members": [m.to_json() for m in self.members],
            "chunks": {k: [c.to_json() for c in cs] for k, cs in self.chunks.items()},
        }


def inspect_checkpoint(path: str | os.PathLike[str]) -> Inspection:
    """Read `path` safely and summarise everything in it."""
    return summarize_checkpoint(open_checkpoint(path))


def summarize_checkpoint(ckpt: Checkpoint) -> Inspection:
    findings = list(ckpt.findings)
    if may_be_dcp_rank_file(ckpt.format, ckpt.metadata):    # one rank's part: say so here too
        from ckptkit.formats.dcp_safetensors import rank_file_findings

        findings += rank_file_findings(ckpt, ckpt.path.name)
    return Inspection(
        path=str(ckpt.path), format=ckpt.format, family=ckpt.family, size_bytes=ckpt.size_bytes,
        progress=ckpt.progress,
        model=model_summary(ckpt.model, ckpt.sources.get("model", "")) if ckpt.model else None,
        optimizer=optimizer_summary(ckpt.optimizer, ckpt.sources.get("optimizer", "")),
        scheduler=_plain_section(ckpt.scheduler), scaler=_plain_section(ckpt.scaler),
        rng=_rng_entries(ckpt.rng), metrics=dict(ckpt.metrics),
        histories=[_history_row(k, v) for k, v in ckpt.histories.items()],
        config=ckpt.config, other_keys={k: summarize(v) for k, v in ckpt.extra.items()},
        metadata={**ckpt.metadata, **ckpt.details.shown()}, findings=findings, members=list(ckpt.members),
        chunks=dict(ckpt.chunks))


def model_summary(model: dict[str, TensorRef], source: str) -> ModelSummary:
    """Counts, sizes, dtypes and modules of a state dict, in one pass over its tensors (a mixture
    of experts holds 100,000 of them: nothing here is done twice per tensor)."""
    tensors = list(model.values())
    shapes = list(map(attrgetter("shape"), tensors))
    numel_of = {shape: math.prod(shape) for shape in set(shapes)}     # C-level columns, one prod per shape
    numels = list(map(numel_of.__getitem__, shapes))
    dtype_names = list(map(attrgetter("dtype.name"), tensors))
    # No shared storage, no ties (a StorageRef hashes by identity: no id() per tensor).
    if len(set(map(attrgetter("storage"), tensors))) == len(tensors):
        ties: list[list[str]] = []
        parameters = sum(numels)
        nbytes = sum(map(mul, numels, map(attrgetter("dtype.itemsize"), tensors)))
    else:
        same: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], list[str]] = {}
        for name, t in model.items():
            same.setdefault((id(t.storage), t.storage_offset, t.shape, t.stride), []).append(name)
        unique = [model[names[0]] for names in same.values()]
        ties = [n for n in same.values() if len(n) > 1]
        parameters, nbytes = sum(t.numel for t in unique), sum(t.nbytes for t in unique)
    # (a C-level look first: a shard folder's 100,000 tensors are never DTensors)
    dtensors = DTENSOR in set(map(attrgetter("subclass"), tensors))
    whole = (sum(math.prod(t.global_shape or t.shape) for t in tensors)
             if dtensors and any(t.is_shard for t in tensors) else None)
    return ModelSummary(source=source, tensors=len(tensors), parameters=parameters, bytes=nbytes,
                        dtypes=dict(Counter(dtype_names)), modules=_module_rows(model, numels, dtype_names),
                        ties=ties, model=model, global_parameters=whole)


def _module_rows(model: dict[str, TensorRef], numels: list[int], dtype_names: list[str]) -> list[ModuleRow]:
    """One row per module, in order of first appearance."""
    prefixes = module_prefix_list(list(model))
    counts = Counter(prefixes)                  # counted in C, in order of first appearance
    if len(set(dtype_names)) == 1 and sum(map(ne, prefixes, prefixes[1:])) + 1 == len(counts):
        # Each module's tensors follow each other (one run per module), all of one dtype: a
        # module's parameters are the running total at its run's end minus the one before it,
        # with no step per tensor in Python (a mixture of experts has 100,000 tensors).
        totals = list(accumulate(numels))
        at_end = list(map(totals.__getitem__, map(sub, accumulate(counts.values()), repeat(1))))
        params = list(map(sub, at_end, [0, *at_end[:-1]]))
        return list(map(ModuleRow, counts, counts.values(), params, repeat(dtype_names[0])))
    return _module_rows_by_runs(prefixes, numels, dtype_names)


def _module_rows_by_runs(prefixes: list[str], numels: list[int], dtype_names: list[str]) -> list[ModuleRow]:
    """`_module_rows` for any order and dtypes. Tensors of a module mostly follow each other, so
    runs of one prefix are summed at once (groupby) and runs of a prefix seen before are added
    to its row."""
    groups: dict[str, tuple[int, int, set[str]]] = {}
    rows = zip(prefixes, numels, dtype_names, strict=True)
    for prefix, run in groupby(rows, key=itemgetter(0)):
        members = list(run)
        count, params, dtypes = groups.get(prefix, (0, 0, set()))
        dtypes.update(m[2] for m in members)
        groups[prefix] = (count + len(members), params + sum(m[1] for m in members), dtypes)
    return [ModuleRow(p, count, params, ",".join(sorted(dtypes))) for p, (count, params, dtypes) in groups.items()]


_STATE_KINDS = [({"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}, "Adam/AdamW (amsgrad)"),
                ({"exp_avg_sq_row"}, "Adafactor"), ({"exp_avg", "exp_avg_sq"}, "Adam/AdamW"),
                ({"momentum_buffer"}, "SGD (momentum)"), ({"square_avg", "acc_delta"}, "Adadelta"),
                ({"square_avg"}, "RMSprop"), ({"sum"}, "Adagrad"), ({"prev", "step_size"}, "Rprop"),
                ({"exp_avg"}, "Lion-like (exp_avg only)")]


def optimizer_kind(opt: dict[str, Any]) -> str:
    state_keys: set[str] = set()
    bnb_dtypes: set[str] = set()
    for entry in (opt.get("state") or {}).values():
        buffers = S.state_buffers(entry)
        state_keys |= set(map(str, buffers))
        if isinstance(buffers.get("state1"), TensorRef):
            bnb_dtypes.add(buffers["state1"].dtype.name)
    if bnb_dtypes:      # bitsandbytes: 8-bit state is uint8 codes (tensors under min_8bit_size stay 32-bit)
        bits = "8-bit" if "uint8" in bnb_dtypes else "32-bit"
        style = "Adam-style: state1, state2" if "state2" in state_keys else "one buffer: state1"
        return f"bitsandbytes, {bits} state ({style})"
    groups = [g for g in opt.get("param_groups") or [] if isinstance(g, dict)]
    for keys, kind in _STATE_KINDS:
        if keys <= state_keys:
            if kind.startswith("Adam/AdamW") and groups:
                if groups[0].get("decoupled_weight_decay") is True:
                    return kind.replace("Adam/AdamW", "AdamW")
                if groups[0].get("decoupled_weight_decay") is False:
                    return kind.replace("Adam/AdamW", "Adam")
            return kind
    if groups and "betas" in groups[0]:
        return "Adam-family (no state yet)"
    if groups and "nesterov" in groups[0]:
        return "SGD"
    return "unknown"


def optimizer_summary(opt: Any, source: str) -> OptimizerSummary | None:
    if not S.is_optimizer_state(opt):
        return None
    groups = [GroupRow(i, len(g["params"]) if isinstance(g.get("params"), (list, tuple)) else 0,
                       g.get("lr"), g.get("weight_decay"),
                       g.get("betas"), g.get("momentum"))
              for i, g in enumerate(opt["param_groups"]) if isinstance(g, dict)]
    state = opt["state"] if isinstance(opt["state"], dict) else {}
    return OptimizerSummary(source, optimizer_kind(opt), groups, len(state), optimizer_step(opt, limit=1))


def _plain_section(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, PickledObject):
        return {"pickled": value.qualified_name, **value.fields()}
    if isinstance(value, dict):
        return {str(k): (v.scalar_value() if isinstance(v, TensorRef) and v.numel == 1 else v)
                for k, v in value.items()}
    return {"value": value}


def _rng_entries(rng: Any) -> list[str] | None:
    if rng is None:
        return None
    if isinstance(rng, dict):
        return [f"{k}: {summarize(v, 50)}" for k, v in rng.items()]
    return [summarize(rng)]


def _history_row(name: str, values: list[Any]) -> HistoryRow:
    numbers = [v for v in values if S.is_number(v)]
    last = values[-1] if values else None
    if not numbers:
        return HistoryRow(name, len(values), summarize(last, 50) if last is not None else None, None)
    return HistoryRow(name, len(values), last, max(numbers) if higher_is_better(str(name)) else min(numbers))


_HIGHER_IS_BETTER = ("acc", "recall", "f1", "precision", "auc", "score", "map", "ndcg", "hit", "bleu", "rouge")


def higher_is_better(metric: str) -> bool:
    """Accuracy-like names improve upwards; losses, perplexities and unnamed histories downwards."""
    name = metric.lower()
    return any(word in name for word in _HIGHER_IS_BETTER) and "loss" not in name
