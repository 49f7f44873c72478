"""Recall and false positives of ckptkit's safety verdict on the corpus in tests/security.

    PYTHONPATH=. python scripts/safety_corpus_report.py

A hostile sample counts as caught when `open_checkpoint` reports `security.dangerous-global` for it
or refuses it with an error that names a dangerous call, a dangerous name it would load, or a
limit; a benign one is a false positive when it gets `security.dangerous-global` or is refused.
"""
from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ckptkit.core.errors import CkptkitError  # noqa: E402
from ckptkit.formats import open_checkpoint  # noqa: E402
from tests.security.corpus import containers, hostile, hostile_structures  # noqa: E402
from tests.security.test_benign_corpus import _fixture_paths, benign_values  # noqa: E402


def verdict(path: Path) -> str:
    try:
        ckpt = open_checkpoint(path)
    except CkptkitError as exc:
        text = str(exc)
        return "caught" if ("would call" in text or "would load" in text or "limit" in text or "contains itself" in text
                           or "ends inside a FRAME" in text) else "refused"
    return "caught" if any(f.code == "security.dangerous-global" for f in ckpt.findings) else "clean"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "MARKER"
        samples: list[tuple[str, str, bytes]] = []
        samples += [("hostile", n, d) for n, (d, _) in hostile(marker).items()]
        samples += [("hostile", n, d) for n, (_, d) in containers(marker).items()]
        samples += [("hostile", n, d) for n, (d, _) in hostile_structures().items()]
        samples += [("benign", f"{n} (protocol {p})", pickle.dumps(v, protocol=p))
                    for n, v in benign_values().items() for p in range(6)]
        counts = {"hostile": [0, 0], "benign": [0, 0]}
        misses = []
        for i, (kind, name, data) in enumerate(samples):
            folder = Path(tmp) / f"s{i}"
            folder.mkdir()
            suffix = containers(marker)[name][0] if name in containers(marker) else "sample.pkl"
            path = folder / suffix
            path.write_bytes(data)
            v = verdict(path)
            bad = v != "caught" if kind == "hostile" else v != "clean"
            counts[kind][0] += not bad if kind == "hostile" else bad
            counts[kind][1] += 1
            if bad:
                misses.append(f"{kind}: {name} -> {v}")
        for path in _fixture_paths():
            v = verdict(path)
            if v == "refused":
                continue   # DCP items are read through their folder
            counts["benign"][0] += v != "clean"
            counts["benign"][1] += 1
            if v != "clean":
                misses.append(f"benign fixture: {path.relative_to(ROOT)} -> {v}")
        assert not marker.exists(), "a sample ran code"
    print(f"hostile named dangerous or refused: {counts['hostile'][0]} / {counts['hostile'][1]}")
    print(f"benign falsely called dangerous:    {counts['benign'][0]} / {counts['benign'][1]}")
    for line in misses:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
