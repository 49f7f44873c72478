"""`ckptkit convert`: lossless, verified, streaming conversion between checkpoint formats.

* torch.save (zip or legacy) -> safetensors: the model state dict; progress, config and metrics
  kept as JSON strings in `__metadata__` (keys in `ckptkit.conversion.plan`); tied tensors
  written once and recorded under "ckptkit.aliases". Training state cannot go into safetensors:
  the conversion refuses unless --weights-only says to leave it out.
* safetensors -> torch.save zip: one storage per tensor, aliases restored as one shared storage;
  a bare state dict, or, when the __metadata__ holds what ckptkit kept of a training file, that
  file's layout with its progress, config and metrics again (`ckptkit.conversion.restore`).
* torch.save -> torch.save zip (legacy -> zip, or with --dtype / --weights-only / --select): the
  tree is re-pickled and every storage record copied byte for byte (or cast element-wise).
* DCP folder -> torch.save / safetensors (chunked tensors assembled whole); a single file -> DCP
  folder (`ckptkit.conversion.to_dcp`); HF Trainer / accelerate folders -> one torch.save file
  of their sections (`plan.source_tree`), and back (`--to hf`, `ckptkit.conversion.to_hf`).

Every output is written to a temporary file or folder beside the target, read back with
ckptkit's reader and compared with the source byte for byte (exactly, after a --dtype cast),
and only then renamed into place (`ckptkit.storage.atomic`). Memory stays at about one tensor.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.conversion import to_hf
from ckptkit.conversion.plan import (
    SAFETENSORS_FORMATS,
    TensorPlan,
    dropped_sections,
    model_cast_ids,
    model_tensors,
    plan_tensors,
    rekeyed,
    safetensors_metadata,
    source_tree,
    target_dtype,
    torch_tree,
    with_whole_tensors,
)
from ckptkit.conversion.restore import restore
from ckptkit.conversion.shards import INDEX_NAME, shard_layout, shard_names, verify_shards, write_shards  # noqa: F401  (re-exported: public API)
from ckptkit.conversion.to_dcp import placeholder_state, verify_dcp, write_dcp
from ckptkit.conversion.verify import verify_safetensors, verify_torch_file
from ckptkit.core.checkpoint import Checkpoint, TensorRef, iter_tensors
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CkptkitError, MissingFileError, UnsupportedFeatureError
from ckptkit.formats import cyclic_gc_paused, open_checkpoint
from ckptkit.formats.safetensors_file import may_be_dcp_rank_file, write_safetensors
from ckptkit.formats.torch_zip import write_torch_zip
from ckptkit.storage.atomic import atomic_write_dir, atomic_write_file, default_backup_path
from ckptkit.storage.pickle_writer import dumps_tree
from ckptkit.storage.tensor_bytes import DerivedStorage, on_disk

TARGETS = {"safetensors": "safetensors", "torch": "torch-zip", "torch-zip": "torch-zip", "pth": "torch-zip",
           "pt": "torch-zip", "dcp": "dcp", "hf": "hf"}
SUFFIXES = {".safetensors": "safetensors", ".pt": "torch-zip", ".pth": "torch-zip", ".bin": "torch-zip",
            ".ckpt": "torch-zip", ".tar": "torch-zip"}


@dataclass
class ConvertOptions:
    to: str | None = None              # a TARGETS key; else inferred from the output's name
    weights_only: bool = False         # keep the model weights alone (drop optimizer, scheduler, ...)
    dtype: str | None = None           # cast floating model tensors: bf16, fp16, fp32, fp64
    max_shard_size: int | None = None  # bytes per safetensors shard; the output is then a folder
    select: str | None = None          # only model tensors whose name starts with this
    force: bool = False                # replace an existing output, keeping it as a backup


@dataclass
class ConversionResult:
    source: Path
    output: Path
    source_format: str
    target_format: str
    files: list[Path]
    tensors: int                       # tensors written (aliases not counted)
    bytes_written: int
    verified_tensors: int
    aliases: dict[str, str] = field(default_factory=dict)
    cast_to: str | None = None
    cast_tensors: int = 0
    dropped: list[str] = field(default_factory=list)
    backup: Path | None = None
    notes: list[str] = field(default_factory=list)
    tensors_by_file: dict[str, int] = field(default_factory=dict)   # when several files hold tensors

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "output": str(self.output), "source_format": self.source_format,
                "target_format": self.target_format, "files": [str(f) for f in self.files],
                "tensors": self.tensors, "bytes_written": self.bytes_written,
                "verified_tensors": self.verified_tensors, "aliases": self.aliases, "cast_to": self.cast_to,
                "cast_tensors": self.cast_tensors, "dropped": self.dropped,
                "backup": str(self.backup) if self.backup else None, "notes": self.notes,
                "tensors_by_file": self.tensors_by_file}


def convert_checkpoint(source: str | os.PathLike[str], output: str | os.PathLike[str],
                       options: ConvertOptions | None = None) -> ConversionResult:
    """Convert the checkpoint at `source` into `output`, verified; see the module docstring."""
    source, output = Path(source), Path(output)
    options = options or ConvertOptions()
    target = target_format(output, options)
    to = target_dtype(options.dtype)
    folder = target in ("dcp", "hf") or (target == "safetensors" and bool(options.max_shard_size))
    backup = _output_backup(source, output, options, folder)
    # The source's tree stays alive while the output is written and read back: paused, the cycle
    # collector does not re-scan it (a full pass over 80,000 tensors' objects, made or not made
    # depending on where its thresholds fall, broke the benchmark's linear growth).
    with cyclic_gc_paused():
        ckpt = with_whole_tensors(open_checkpoint(source))
        _refuse_rank_shards(ckpt)
        try:
            if target == "safetensors":
                result = _to_safetensors(ckpt, output, options, to, backup)
            elif target == "dcp":
                result = _to_dcp(ckpt, output, options, to, backup)
            elif target == "hf":
                result = _to_hf(ckpt, output, options, to, backup)
            else:
                result = _to_torch(ckpt, output, options, to, backup)
        except CkptkitError as exc:
            if exc.path is None:   # raised about a value deep in the tree: name the file it came from
                raise type(exc)(source, exc.message) from None
            raise
    result.backup = backup
    return result


def _refuse_rank_shards(ckpt: Checkpoint) -> None:
    """A file of DTensor shards (one rank's torch.save under FSDP2 or tensor parallel) would be
    written as plain tensors of the shards' shapes: a partial model that loads nowhere."""
    if may_be_dcp_rank_file(ckpt.format, ckpt.metadata):
        from ckptkit.formats.dcp_safetensors import convert_folder_command, rank_part

        why = rank_part(ckpt.path, ckpt.metadata, dict(ckpt.tensors()))
        if why is not None:
            raise UnsupportedFeatureError(ckpt.path, f"holds {why}; convert its folder, which assembles the whole "
                                          f"tensors: {convert_folder_command(ckpt.path)}")
    key, shard = next(((k, t) for k, t in ckpt.tensors() if t.is_shard), (None, None))
    if shard is not None:
        raise UnsupportedFeatureError(ckpt.path, f"holds one rank's shards of DTensors (e.g. {key!r}: "
                                      f"{list(shard.shape)} of {list(shard.global_shape or ())}), not a whole "
                                      "model: gather it first (get_model_state_dict with full_state_dict=True), "
                                      "or save with torch.distributed.checkpoint and convert that folder")


def target_format(output: Path, options: ConvertOptions) -> str:
    if options.to is not None:
        if options.to not in TARGETS:
            raise UnsupportedFeatureError(None, f"--to {options.to!r}: use one of {', '.join(TARGETS)}")
        target = TARGETS[options.to]
    elif options.max_shard_size:
        target = "safetensors"
    elif output.suffix.lower() in SUFFIXES:
        target = SUFFIXES[output.suffix.lower()]
    else:
        raise UnsupportedFeatureError(output, "cannot tell the target format from the name: end it in "
                                      ".safetensors or .pt/.pth, or pass --to (safetensors, pth, dcp, hf)")
    if options.max_shard_size and target not in ("safetensors", "hf"):
        raise UnsupportedFeatureError(output, "--max-shard-size writes sharded safetensors; it needs --to "
                                      "safetensors or --to hf")
    return target


def _output_backup(source: Path, output: Path, options: ConvertOptions, folder: bool) -> Path | None:
    """Refuse to overwrite unless --force; with --force the old output is kept as a backup."""
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise CkptkitError(output, "is the source itself; write the conversion to another path")
    if not output.parent.is_dir():
        raise MissingFileError(output.parent, "folder does not exist; create it first")
    if not os.path.lexists(output):
        return None
    if not options.force:
        raise CkptkitError(output, "already exists; pass --force to replace it (the old one is kept as a backup)")
    if output.is_dir() != folder:
        kind = "a folder" if output.is_dir() else "a file"
        raise CkptkitError(output, f"already exists as {kind}; a {'folder' if folder else 'single-file'} "
                           "output cannot replace it")
    return default_backup_path(output)


def _to_safetensors(ckpt: Checkpoint, output: Path, options: ConvertOptions, to: DType | None,
                    backup: Path | None) -> ConversionResult:
    model = model_tensors(ckpt, options.select)
    dropped = dropped_sections(ckpt)
    if dropped and not (options.weights_only or options.select):
        raise UnsupportedFeatureError(ckpt.path, f"safetensors holds model tensors only; {'; '.join(dropped)} "
                                      "would be lost. Pass --weights-only to write the weights alone, or "
                                      "convert to .pth to keep everything")
    plan = plan_tensors(model, to)
    meta = safetensors_metadata(ckpt, plan.aliases, to)
    if options.max_shard_size:
        files, written, checked = _write_shards(output, plan, meta, options.max_shard_size, backup)
    else:
        files, written, checked = _write_single(output, plan, meta, backup)
    return ConversionResult(ckpt.path, output, ckpt.format, "safetensors", files, len(plan.tensors), written,
                            checked, plan.aliases, to.name if to else None, len(plan.casts), dropped)


def _write_single(output: Path, plan: TensorPlan, meta: dict[str, str],
                  backup: Path | None) -> tuple[list[Path], int, int]:

    counts = {"written": 0, "checked": 0}

    def write(f: Any) -> None:
        counts["written"] = write_safetensors(f, plan.tensors, meta, plan.casts)

    def verify(tmp: Path) -> None:
        counts["checked"] = verify_safetensors(tmp, output, plan.tensors, meta, plan.casts)

    atomic_write_file(output, write, verify=verify, backup=backup)
    return [output], counts["written"], counts["checked"]


def _write_shards(output: Path, plan: TensorPlan, meta: dict[str, str], max_bytes: int,
                  backup: Path | None) -> tuple[list[Path], int, int]:
    layout = shard_layout(plan, max_bytes)
    counts = {"written": 0, "checked": 0}

    def populate(tmp: Path) -> None:
        counts["written"] = write_shards(tmp, plan, meta, layout)

    def verify(tmp: Path) -> None:
        counts["checked"] = verify_shards(tmp, output, plan, meta, layout)

    atomic_write_dir(output, populate, verify=verify, backup=backup)
    return [output / f for f in layout.names], counts["written"], counts["checked"]


def _to_torch(ckpt: Checkpoint, output: Path, options: ConvertOptions, to: DType | None,
              backup: Path | None) -> ConversionResult:

    tree, uncast, aliases, dropped = torch_tree(ckpt, options.weights_only, options.select, to)
    counts = {"checked": 0}

    def verify(tmp: Path) -> None:
        counts["checked"] = verify_torch_file(tmp, output, tree, uncast)

    crcs = _record_crcs(ckpt, tree)
    atomic_write_file(output, lambda f: write_torch_zip(f, tree, known_crcs=crcs), verify=verify, backup=backup)
    cast = sum(1 for _, t in iter_tensors(tree) if _was_cast(t))
    result = ConversionResult(ckpt.path, output, ckpt.format, "torch-zip", [output], counts["checked"],
                              output.stat().st_size, counts["checked"], aliases, to.name if to else None, cast,
                              dropped)
    result.notes += _restoration_notes(ckpt, options)
    if options.select is not None and not options.weights_only:
        result.notes.append("--select writes model tensors only (a partial model has no matching optimizer state)")
    return result


def _restoration_notes(ckpt: Checkpoint, options: ConvertOptions) -> list[str]:
    """What of a safetensors source's __metadata__ a .pth or DCP output carries (`restore`)."""

    if ckpt.format not in SAFETENSORS_FORMATS:
        return []
    if options.weights_only or options.select is not None:
        return ["written as a bare state dict (--weights-only / --select); the safetensors __metadata__ is "
                "not carried over"] if ckpt.metadata else []
    return restore(ckpt, OrderedDict()).notes


def _record_crcs(ckpt: Checkpoint, tree: Any) -> dict[str, int]:
    """CRC32s of the records a torch zip source already holds and the output copies unchanged:
    write_torch_zip then copies them inside the kernel (the read-back compares every byte)."""
    import zipfile

    from ckptkit.formats.zip_directory import storage_crcs_recorded

    prefix = ckpt.details.zip_prefix
    if ckpt.format != "torch-zip" or prefix is None:
        return {}
    _, storages = dumps_tree(tree)
    with zipfile.ZipFile(ckpt.path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    if not storage_crcs_recorded(infos):
        return {}       # written without CRC-32s (or under skip_data): the writer computes them as it copies
    return {key: infos[f"{prefix}/data/{key}"].CRC for key, s in storages.items()
            if on_disk(s) and s.byte_range().path == ckpt.path and f"{prefix}/data/{key}" in infos}


def _was_cast(t: TensorRef) -> bool:
    return isinstance(t.storage, DerivedStorage) and t.storage.casts


def _to_dcp(ckpt: Checkpoint, output: Path, options: ConvertOptions, to: DType | None,
            backup: Path | None) -> ConversionResult:

    tree, dropped = source_tree(ckpt, options.weights_only, options.select)
    if not isinstance(tree, dict):
        raise UnsupportedFeatureError(ckpt.path, "a DCP folder holds a dict; this checkpoint's top level is not one")
    # As for .pth: the model's floating storages are cast (optimizer moments keep their precision),
    # each tensor as DCP's writer comes to it; the read-back compares each with torch's cast.
    cast_ids = model_cast_ids(ckpt, to)
    uncast, tree = tree, rekeyed(tree, cast_ids, to, renumber=False) if cast_ids else tree
    state, sources = placeholder_state(tree, ckpt.path)   # refuses a value DCP cannot hold, before any write
    counts = {"checked": 0}

    def verify(tmp: Path) -> None:
        counts["checked"] = verify_dcp(tmp, output, tree, uncast if cast_ids else None)

    atomic_write_dir(output, lambda tmp: write_dcp(tmp, state, sources), verify=verify, backup=backup)
    files = sorted(p for p in output.iterdir())
    cast = sum(1 for _, t in iter_tensors(tree) if _was_cast(t))
    return ConversionResult(ckpt.path, output, ckpt.format, "dcp", files, counts["checked"],
                            sum(p.stat().st_size for p in files), counts["checked"],
                            cast_to=to.name if to else None, cast_tensors=cast, dropped=dropped,
                            notes=_restoration_notes(ckpt, options))


def _to_hf(ckpt: Checkpoint, output: Path, options: ConvertOptions, to: DType | None,
           backup: Path | None) -> ConversionResult:

    plan = to_hf.plan_folder(ckpt, options.weights_only, options.select, to, options.max_shard_size,
                             output.name)
    atomic_write_dir(output, lambda tmp: to_hf.populate(plan, tmp),
                     verify=lambda tmp: to_hf.verify(plan, tmp, output), backup=backup)
    files = sorted(output.iterdir())
    by_file = plan.tensors_by_file()
    return ConversionResult(ckpt.path, output, ckpt.format, "hf", files, sum(by_file.values()),
                            sum(p.stat().st_size for p in files), plan.verified, plan.weights.aliases,
                            to.name if to else None, len(plan.weights.casts), plan.dropped, notes=plan.notes,
                            tensors_by_file=by_file)
