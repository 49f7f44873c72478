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
    from ckptkit.errors import CorruptCheckpointError

    text = str(CorruptCheckpointError("/runs/a.pt", "persistent id b'\\x00q\\n' ends\nearly\x00"))
    assert "\n" not in text and "\x00" not in text
    assert text.startswith("/runs/a.pt: persistent id")
