"""The package imports and the CLI answers --help without importing torch."""
from __future__ import annotations

import subprocess
import sys


def test_cli_help_lists_inspect_and_does_not_import_torch() -> None:
    code = "import sys; from ckptkit.cli import main; " \
           "sys.argv=['ckptkit','--help']\ntry: main()\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "inspect" in out
    assert out.strip().endswith("False")


def test_an_error_message_quoting_damaged_bytes_is_still_one_printable_line() -> None:
    from ckptkit.core.errors import CorruptCheckpointError

    text = str(CorruptCheckpointError("/runs/a.pt", "persistent id b'\\x00q\\n' ends\nearly\x00"))
    assert "\n" not in text and "\x00" not in text
    assert text.startswith("/runs/a.pt: persistent id")


def test_inspect_imports_only_its_own_command_module() -> None:
    code = ("import sys; from ckptkit.cli import main\n"
            "try: main(['inspect', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('ckptkit.cli.') and m.endswith('_command')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['ckptkit.cli.inspect_command']"
