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
