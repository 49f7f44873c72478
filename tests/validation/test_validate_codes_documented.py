"""Every finding code the validator can emit has a row in the README's table."""
from __future__ import annotations

import re
from pathlib import Path

from ckptkit.views.keys import WRAPPERS
from ckptkit.validation.compatibility import code_for

ROOT = Path(__file__).parent.parent.parent
GROUPS = "security|completeness|integrity|counters|optimizer|precision|rng|compat|deep"


def test_every_validation_code_is_in_the_readme_table() -> None:
    source = "".join(p.read_text() for p in (ROOT / "ckptkit" / "validation").glob("*.py"))
    source += (ROOT / "ckptkit" / "formats" / "base.py").read_text()     # security findings
    emitted = set(re.findall(rf'"((?:{GROUPS})\.[a-z0-9-]+)"', source))
    emitted -= {"optimizer.pt", "optimizer.bin"}        # member file names, not codes
    emitted |= {code_for(w) for w in WRAPPERS}            # compat.{wrapper}-prefix, one per known wrapper
    readme_rows = set(re.findall(rf"^\| `((?:{GROUPS})\.[a-z0-9-]+)` \|", (ROOT / "README.md").read_text(), re.M))
    assert len(emitted) > 40
    assert sorted(emitted - readme_rows) == []
    assert sorted(readme_rows - emitted) == []
