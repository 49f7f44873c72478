"""`ckptkit repair PATH [--fix CODE ...]`."""
from __future__ import annotations

from pathlib import Path

import click

from ckptkit.cli import EXIT_CLEAN, EXIT_FINDINGS, main
from ckptkit.cli.render import emit_json
from ckptkit.cli.repair_render import check_backup_options, render_result, write_options
from ckptkit.repair import ALL_CODES, repair_checkpoint


@main.command("repair")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--fix", "fixes", multiple=True, type=click.Choice(ALL_CODES),
              help="Apply the fix for this finding code (repeatable). Without it, list what would be fixed.")
@write_options
def repair_command(path: Path, fixes: tuple[str, ...], dry_run: bool, backup: Path | None, no_backup: bool,
                   as_json: bool) -> None:
    """Apply safe automatic fixes for `validate` findings, each named by its finding code.

    \b
    Codes:
      compat.module-prefix       strip module. / _orig_mod. from the model's keys
      compat.compile-prefix      the same (validate's code for a torch.compile prefix)
      counters.missing-epoch     restore epoch from the file name or the per-epoch history
      counters.hf-step-mismatch  trainer_state.json global_step := the checkpoint-N folder's N
      security.pickled-class     pickled config objects -> plain dicts (weights_only=True loads)

    Without --fix nothing is written: the fixes that apply are listed (exit 1 if any, 0 if
    none). With --fix the file is rewritten atomically and the original kept as <name>.bak.

    \b
    Examples:
      ckptkit repair best_model.pt
      ckptkit repair best_model.pt --fix security.pickled-class
      ckptkit repair runs/checkpoint-500 --fix counters.hf-step-mismatch --dry-run
    """
    check_backup_options(backup, no_backup)
    result = repair_checkpoint(path, list(fixes) if fixes else None, dry_run=dry_run, backup=backup,
                    keep_backup=not no_backup)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(render_result(result))
        if not fixes and result.plan.fixes:
            click.echo(f"apply with: ckptkit repair {path} " + " ".join(f"--fix {c}" for c in result.plan.fixes))
    listing_found = not fixes and not result.plan.nothing_to_do
    raise SystemExit(EXIT_FINDINGS if listing_found else EXIT_CLEAN)
