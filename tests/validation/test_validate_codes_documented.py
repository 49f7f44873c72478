"""Every finding code the validator can emit has a row in the finding-code table of docs/validate.md
(or, for a family's own traps, docs/families.md), and every row there is a code it can emit."""
from __future__ import annotations

import re
from pathlib import Path

from ckptkit.validation.compatibility import code_for
from ckptkit.views.keys import WRAPPERS

ROOT = Path(__file__).parent.parent.parent
GROUPS = "security|completeness|integrity|counters|optimizer|precision|rng|compat|deep"


def test_every_validation_code_is_in_the_documented_tables() -> None:
    source = "".join(p.read_text() for p in (ROOT / "ckptkit" / "validation").glob("*.py"))
    source += "".join(p.read_text() for p in (ROOT / "ckptkit" / "formats").glob("*.py"))   # readers' findings
    source += "".join(p.read_text() for p in (ROOT / "ckptkit" / "families").glob("*.py"))   # family traps
    emitted = set(re.findall(rf'"((?:{GROUPS})\.[a-z0-9-]+)"', source))
    emitted -= {"optimizer.pt", "optimizer.bin"}        # member file names, not codes
    emitted |= {code_for(w) for w in WRAPPERS}            # compat.{wrapper}-prefix, one per known wrapper
    tables = (ROOT / "docs" / "validate.md").read_text() + (ROOT / "docs" / "families.md").read_text()
    readme_rows = set(re.findall(rf"^\| `((?:{GROUPS})\.[a-z0-9-]+)` \|", tables, re.M))
    assert len(emitted) > 40
    assert sorted(emitted - readme_rows) == []
    assert sorted(readme_rows - emitted) == []
