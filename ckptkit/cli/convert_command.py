"""`ckptkit convert SRC DST`."""
from __future__ import annotations

import re
from pathlib import Path

import click

from ckptkit.cli import EXIT_CLEAN, main
from ckptkit.cli.render import emit_json, heading, human_bytes, plural
from ckptkit.conversion import TARGETS, ConversionResult, ConvertOptions, convert_checkpoint
from ckptkit.conversion.plan import DTYPE_CHOICES

_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_size(text: str | None) -> int | None:
    """'500MB' -> 500_000_000, '2GiB' -> 2 * 2**30 (Hugging Face's spelling of shard sizes)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", text.upper())
    if m is None or int(float(m.group(1)) * _UNITS[m.group(2) or ""]) <= 0:
        raise click.BadParameter(f"{text!r}: a positive size such as 500MB, 2GB or 1GiB", param_hint="--max-shard-size")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


@main.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(sorted(TARGETS)), help="Target format (default: from OUTPUT's name).")
@click.option("--weights-only", is_flag=True, help="Keep the model weights alone: drop optimizer, scheduler, "
              "scaler, RNG and other training state (for release).")
@click.option("--dtype", type=click.Choice(sorted(DTYPE_CHOICES)), help="Cast floating model tensors, one at a time.")
@click.option("--max-shard-size", help="Write sharded safetensors into the folder OUTPUT, e.g. 500MB, 2GB "
              "(shards model-00001-of-0000N.safetensors + model.safetensors.index.json); with --to hf, "
              "the HF folder's weights.")
@click.option("--select", metavar="PREFIX", help="Only the model tensors whose name starts with PREFIX.")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT (the old one is kept as OUTPUT.bak).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def convert_command(source: Path, output: Path, to: str | None, weights_only: bool, dtype: str | None,
                    max_shard_size: str | None, select: str | None, force: bool, as_json: bool) -> None:
    """Convert a checkpoint to another format, verified and atomic.

    \b
    .pth/.pt (zip or legacy) -> .safetensors   model weights; progress/config as JSON metadata
    .safetensors -> .pth                       a state dict torch.load(weights_only=True) reads;
                                               progress/config/metrics back if ckptkit kept them
    legacy torch.save -> zip                   same tree, byte-identical storage records
    DCP folder <-> .pth (--to dcp)             the state tree; chunked tensors assembled whole
    HF Trainer / accelerate folder <-> .pth    sections in one file (--weights-only: the model);
                                               back with --to hf

    Every tensor written is read back and compared with the source (byte for byte, or exactly
    after --dtype) before the output is renamed into place; a mismatch deletes it and exits 2.
    Memory stays at about one tensor whatever the checkpoint size. Never overwrites without --force.

    \b
    Examples:
      ckptkit convert checkpoint-recent.pth model.safetensors --weights-only
      ckptkit convert model.safetensors model.pth
      ckptkit convert old_legacy.pt new.pt
      ckptkit convert best.pt release/ --weights-only --dtype bf16 --max-shard-size 500MB
      ckptkit convert checkpoints/step_1000 step_1000.pt
    """
    options = ConvertOptions(to=to, weights_only=weights_only, dtype=dtype, select=select, force=force,
                             max_shard_size=parse_size(max_shard_size))
    result = convert_checkpoint(source, output, options)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(render_conversion(result))
    raise SystemExit(EXIT_CLEAN)


def render_conversion(r: ConversionResult) -> str:
    out = [heading(f"{r.source} -> {r.output}"),
           f"  formats   {r.source_format} -> {r.target_format}",
           f"  written   {plural(r.tensors, 'tensor')}, {human_bytes(r.bytes_written)} "
           f"in {plural(len(r.files), 'file')}",
           f"  verified  {plural(r.verified_tensors, 'tensor')} read back and equal to the source"]
    if len(r.tensors_by_file) > 1:
        out.insert(3, "            " + ", ".join(f"{n} in {name}" for name, n in r.tensors_by_file.items() if n))
    if r.cast_to:
        out.append(f"  cast      {r.cast_tensors} floating tensors to {r.cast_to}")
    if r.aliases:
        shown = ", ".join(f"{a} = {n}" for a, n in list(r.aliases.items())[:4])
        out.append(f"  tied      {len(r.aliases)} written once: {shown}{', ...' if len(r.aliases) > 4 else ''}")
    if r.dropped:
        out.append(f"  dropped   {'; '.join(r.dropped)}")
    if r.backup:
        out.append(f"  backup    old output kept at {r.backup}")
    out += [f"  note      {n}" for n in r.notes]
    return "\n".join(out)
