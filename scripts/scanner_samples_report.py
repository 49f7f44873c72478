"""ckptkit's safety verdict on the public test material of the established pickle scanners.

    git clone https://github.com/mmaitre314/picklescan   /tmp/ss/picklescan
    git clone https://github.com/trailofbits/fickling     /tmp/ss/fickling
    PYTHONPATH=. python scripts/scanner_samples_report.py --picklescan /tmp/ss/picklescan \\
        --fickling /tmp/ss/fickling [--compare]

The samples are other projects' files and are not kept in this repository (our own corpus, written
from the same public knowledge, is `tests/security/`). What is measured:

- picklescan's `tests/data` and `tests/data2` (the advisories' proof-of-concept files, GHSA-*):
  every file whose name says malicious (`malicious*`, `GHSA-*`, `*sploit*`, `*bypass*`) is hostile;
  `benign*` and the two real `pytorch_model.bin` files are benign; the rest (a PNG named `.pt`, a
  file that is not a pickle, a broken pickle, a 7z archive) are listed but counted in neither.
- fickling's `test/test_bypasses.py`: every pickle its bypass tests build (each is an attack that
  got past a scanner once), captured by running those tests with fickling's `check_safety`
  replaced by a recorder. Needs fickling installed (`pip install fickling`); skipped otherwise.
- benign training checkpoints: every real fixture in `tests/fixtures/` and the benign corpus of
  `tests/security/` (plain values in protocols 0-5).

A hostile sample is caught when ckptkit names a call it would make (`security.dangerous-global`,
or a refusal naming the call or a limit). With --compare the installed scanners (picklescan,
fickling, modelscan) judge the same files and get a row each.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import pickle
import sys
import tempfile
import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.safety_corpus_report import verdict as ckptkit_verdict  # noqa: E402
from tests.security.test_benign_corpus import _fixture_paths, benign_values  # noqa: E402

HOSTILE_WORDS = ("malicious", "ghsa-", "sploit", "bypass")
BENIGN_NAMES = ("pytorch_model.bin", "new_pytorch_model.bin")
BENIGN_ARRAYS = ("int_array", "object_array")   # tests/data2's plain NumPy files


def label(path: Path) -> str | None:
    name = path.name.lower()
    if name.startswith("benign") or name in BENIGN_NAMES or name.startswith(BENIGN_ARRAYS):
        return "benign"
    if any(w in name for w in HOSTILE_WORDS) or path.parent.name == "data2":
        return "hostile"   # tests/data2 holds the advisories' proof-of-concept files
    return None


def picklescan_samples(repo: Path) -> list[tuple[str | None, Path]]:
    files = sorted(p for d in ("tests/data", "tests/data2") for p in (repo / d).glob("*") if p.is_file())
    return [(label(p), p) for p in files]


def fickling_samples(repo: Path, out: Path) -> list[tuple[str | None, Path]]:
    """The pickles fickling's bypass tests build, each written to `out`: hostile when the test
    passes only if fickling flags it, benign when it passes only if fickling calls it safe."""
    source = repo / "test" / "test_bypasses.py"
    if not source.exists() or importlib.util.find_spec("fickling") is None:
        print(f"(fickling bypasses skipped: need {source} and fickling installed)")
        return []
    spec = importlib.util.spec_from_file_location("fickling_bypasses", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from fickling.analysis import Severity

    captured: dict[str, list[bytes]] = {}

    def recorder(severity: object) -> Callable[..., object]:
        class Recorded:
            results: list[object] = []

            def __bool__(self) -> bool:
                return severity is Severity.LIKELY_SAFE

        Recorded.severity = severity   # type: ignore[attr-defined]

        def record(pickled: Any, *args: object, **kwargs: object) -> object:
            data = pickled.dumps()
            captured.setdefault(current, []).append(data)
            return Recorded()
        return record

    labels: dict[str, str] = {}
    for name in dir(module):
        cls = getattr(module, name)
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
            continue
        for current in unittest.defaultTestLoader.getTestCaseNames(cls):
            passed = []
            captured.pop(current, None)
            for kind, severity in (("hostile", Severity.OVERTLY_MALICIOUS), ("benign", Severity.LIKELY_SAFE)):
                module.check_safety = recorder(severity)
                try:
                    getattr(cls(current), current)()
                except Exception:   # the test expects the other verdict (or asserts more)
                    continue
                passed.append(kind)
            if len(passed) == 1 and len(captured.get(current, [])) == 2:
                labels[current] = passed[0]   # one pickle, and the verdict on it decides the test
    out.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[str | None, Path]] = []
    for i, (test, pickles) in enumerate(sorted(captured.items())):
        path = out / f"fickling-{i:02d}-{test}.pkl"
        path.write_bytes(pickles[-1])
        samples.append((labels.get(test), path))
    return samples


def benign_samples(out: Path) -> list[tuple[str | None, Path]]:
    samples: list[tuple[str | None, Path]] = [("benign", p) for p in _fixture_paths()]
    out.mkdir(parents=True, exist_ok=True)
    for name, value in benign_values().items():
        for protocol in range(6):
            path = out / f"benign-{name}-p{protocol}.pkl"
            path.write_bytes(pickle.dumps(value, protocol=protocol))
            samples.append(("benign", path))
    return samples


def scanners() -> dict[str, Callable[[Path], str]]:
    """The installed scanners' verdicts: 'caught' (named dangerous) or 'clean'."""
    judges: dict[str, Callable[[Path], str]] = {}
    if importlib.util.find_spec("picklescan"):
        from picklescan.scanner import scan_file_path

        judges["picklescan"] = lambda p: "caught" if scan_file_path(str(p)).infected_files else "clean"
    if importlib.util.find_spec("fickling"):
        import fickling

        def fickling_judge(p: Path) -> str:
            try:
                return "clean" if fickling.is_likely_safe(str(p)) else "caught"
            except Exception:
                return "caught"   # fickling refuses what it cannot parse
        judges["fickling"] = fickling_judge
    if importlib.util.find_spec("modelscan"):
        from modelscan.modelscan import ModelScan

        def modelscan_judge(p: Path) -> str:
            result = ModelScan().scan(p)
            return "caught" if result["summary"]["total_issues"] else "clean"
        judges["modelscan"] = modelscan_judge
    return judges


def quiet(judge: Callable[[Path], str], path: Path) -> str:
    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:
        return judge(path)
    except Exception:
        return "error"
    finally:
        sys.stdout = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--picklescan", type=Path, help="a clone of github.com/mmaitre314/picklescan")
    parser.add_argument("--fickling", type=Path, help="a clone of github.com/trailofbits/fickling")
    parser.add_argument("--compare", action="store_true", help="also run the installed scanners")
    parser.add_argument("--verbose", action="store_true", help="every sample's verdicts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        samples: list[tuple[str | None, Path]] = []
        if args.picklescan:
            samples += picklescan_samples(args.picklescan)
        if args.fickling:
            samples += fickling_samples(args.fickling, Path(tmp) / "fickling")
        samples += benign_samples(Path(tmp) / "benign")
        judges: dict[str, Callable[[Path], str]] = {"ckptkit": ckptkit_verdict}
        if args.compare:
            judges.update(scanners())
        table = {name: {"hostile": 0, "benign": 0} for name in judges}
        misses: dict[str, list[str]] = {name: [] for name in judges}
        totals = {"hostile": 0, "benign": 0}
        for kind, path in samples:
            verdicts = {name: quiet(judge, path) for name, judge in judges.items()}
            if args.verbose or kind is None:
                print(f"  {kind or 'unlabelled':<10} {path.name:<48} {verdicts}")
            if kind is None:
                continue
            totals[kind] += 1
            for name, v in verdicts.items():
                hit = v == "caught"
                table[name][kind] += hit
                if hit != (kind == "hostile"):
                    misses[name].append(f"{kind} {path.name}: {v}")
        print(f"\n{'tool':<12} {'hostile named dangerous':>26} {'benign called dangerous':>26}")
        for name, row in table.items():
            hostile, benign = f"{row['hostile']} / {totals['hostile']}", f"{row['benign']} / {totals['benign']}"
            print(f"{name:<12} {hostile:>26} {benign:>26}")
        for line in misses["ckptkit"]:
            print(f"  ckptkit: {line}")
    return 0 if not misses["ckptkit"] else 1


if __name__ == "__main__":
    sys.exit(main())
