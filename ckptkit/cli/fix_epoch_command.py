"""`ckptkit fix-epoch PATH --epoch N [--complete | --step S]`."""
from __future__ import annotations

from pathlib import Path

import click

from ckptkit.cli import EXIT_CLEAN, main
from ckptkit.cli.render import emit_json
from ckptkit.cli.repair_render import check_backup_options, render_result, write_options
from ckptkit.repair import fix_epoch


@main.command("fix-epoch")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--epoch", "epoch", type=int, required=True,
              help="Epoch number, counted from 1 (--epoch 2 --complete: two epochs are done).")
@click.option("--complete", is_flag=True, help="Epoch N finished (the default).")
@click.option("--step", type=int, default=None, help="Epoch N is in progress with S batches of it done.")
@write_options
def fix_epoch_command(path: Path, epoch: int, complete: bool, step: int | None, dry_run: bool,
                      backup: Path | None, no_backup: bool, as_json: bool) -> None:
    """Set the recorded training progress of a checkpoint, in its own family's convention.

    Every copy of the counters is set to agree (epoch+1 for retrieval .pt, 1-based epoch with
    step 0 = end of epoch for training_state.pth, float epoch and global_step in a Trainer
    folder's trainer_state.json, ...). Counters it cannot derive (LR scheduler position,
    optimizer step count, folder and file names) are listed, not guessed. Running it twice is
    the same as running it once. Writes are atomic; the original is kept as <name>.bak.

    \b
    Examples:
      ckptkit fix-epoch last_checkpoint/training_state.pth --epoch 1 --complete
      ckptkit fix-epoch checkpoint-recent.pth --epoch 12 --dry-run
      ckptkit fix-epoch checkpoint_step_1000.pt --epoch 2 --step 300 --no-backup
    """
    if complete and step is not None:
        raise click.BadParameter("give either --complete or --step S, not both", param_hint="--step")
    check_backup_options(backup, no_backup)
    result = fix_epoch(path, epoch, step=step, dry_run=dry_run, backup=backup, keep_backup=not no_backup)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(render_result(result))
    raise SystemExit(EXIT_CLEAN)
