"""The `ckptkit` command line: one click group, one error funnel, one module per command.

Every command parses its arguments, calls one library function, and renders the returned
dataclass as tables or (`--json`) JSON. Exit codes: 0 clean, 1 findings or differences,
2 unusable input or error. Library errors (`CkptkitError`) become one line on stderr here, in
one place; no traceback reaches a user for bad input.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

import click

from ckptkit.core.errors import CkptkitError
from ckptkit.core.version import VERSION

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class CkptkitGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMAND_MODULES:
            importlib.import_module(COMMAND_MODULES[name])   # registers itself on `main`
        return super().get_command(ctx, name)

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
@click.version_option(VERSION, prog_name="ckptkit")
def main() -> None:
    """Checkpoint forensics and repair for PyTorch training runs.

    Reads .pt/.pth/.bin/.ckpt (torch.save zip and legacy), .safetensors, plain pickles, and
    checkpoint folders (Hugging Face Trainer, save_pretrained, torch.distributed.checkpoint,
    accelerate), without ever running code from a file. Exit codes: 0 clean, 1 findings or
    differences, 2 unusable input.

    \b
    A run crashed or resumed wrongly? In this order:
      ckptkit ls RUN_DIR              every checkpoint, ordered by progress, with its health
      ckptkit inspect CHECKPOINT      what is in one, progress in plain words
      ckptkit validate CHECKPOINT     everything wrong with it, and the command that fixes it
      ckptkit latest RUN_DIR          the path to resume from (for scripts)
    \b
    See it all on a tiny run first:
      ckptkit demo
    """


# Command name -> the module that defines it (with `@main.command`). A module is imported only
# when its command runs (or for `--help`), so `ckptkit inspect` and `ckptkit ls` start without
# paying for diff's numpy or convert's writers. Listed in the order a user meets them.
COMMAND_MODULES: dict[str, str] = {
    "inspect": "ckptkit.cli.inspect_command",
    "ls": "ckptkit.cli.ls_command",
    "latest": "ckptkit.cli.ls_command",
    "validate": "ckptkit.cli.validate_command",
    "diff": "ckptkit.cli.diff_command",
    "fix-epoch": "ckptkit.cli.fix_epoch_command",
    "repair": "ckptkit.cli.repair_command",
    "convert": "ckptkit.cli.convert_command",
    "salvage": "ckptkit.cli.salvage_command",
    "resume": "ckptkit.cli.resume_command",
    "demo": "ckptkit.cli.demo_command",
    "plot": "ckptkit.cli.plot_command",
}
