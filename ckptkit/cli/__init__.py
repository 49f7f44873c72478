"""The `ckptkit` command line: one click group, one error funnel, one module per command.

Every command parses its arguments, calls one library function, and renders the returned
dataclass as tables or (`--json`) JSON. Exit codes: 0 clean, 1 findings or differences,
2 unusable input or error. Library errors (`CkptkitError`) become one line on stderr here, in
one place; no traceback reaches a user for bad input.
"""
from __future__ import annotations

import os
from typing import Any

import click

from ckptkit import __version__
from ckptkit.errors import CkptkitError

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class CkptkitGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except CkptkitError as exc:
            click.echo(f"ckptkit: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("ckptkit: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if os.environ.get("CKPTKIT_DEBUG"):
                raise
            click.echo(f"ckptkit: internal error: {type(exc).__name__}: {exc} "
                       "(a bug in ckptkit; set CKPTKIT_DEBUG=1 for the traceback)", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=CkptkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckptkit")
def main() -> None:
    """Checkpoint forensics and repair for PyTorch training runs.

    Reads .pt/.pth/.bin/.ckpt (torch.save zip and legacy), .safetensors, and plain pickles,
    without ever running code from the file. Exit codes: 0 clean, 1 findings or differences,
    2 unusable input.

    \b
    Start here:
      ckptkit inspect CHECKPOINT      what is in it, progress in plain words
      ckptkit ls RUN_DIR              every checkpoint of a run, ordered by progress
      ckptkit latest RUN_DIR          the path to resume from
      ckptkit diff A B                what changed between two checkpoints
      ckptkit validate CHECKPOINT     is it whole, consistent and safe to resume from?
    """


def _register() -> None:
    # Imported for their side effect of adding a command to `main`; one line per command.
    from ckptkit.cli import inspect_command  # noqa: F401
    from ckptkit.cli import resume_command  # noqa: F401
    from ckptkit.cli import demo_command  # noqa: F401
    from ckptkit.cli import ls_command  # noqa: F401  (ls and latest)
    from ckptkit.cli import diff_command  # noqa: F401
    from ckptkit.cli import fix_epoch_command  # noqa: F401
    from ckptkit.cli import repair_command  # noqa: F401
    from ckptkit.cli import convert_command  # noqa: F401
    from ckptkit.cli import validate_command  # noqa: F401


_register()
