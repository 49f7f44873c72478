"""The families layer's place in the package: formats below it never import it, and each rule
it owns has one definition."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ckptkit"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_no_format_module_imports_the_families_layer_above_it() -> None:
    offenders = {p.name for p in (PACKAGE / "formats").glob("*.py")
                 if any(m.startswith("ckptkit.families") for m in _imports(p))}
    assert offenders == set()


def test_fix_epoch_and_the_hf_trainer_repair_do_not_import_each_other_back() -> None:
    assert "ckptkit.repair.epoch" not in _imports(PACKAGE / "repair" / "hf_trainer.py")


def test_there_is_one_optimizer_step_rule() -> None:
    defined = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if any(isinstance(n, ast.FunctionDef) and n.name.lstrip("_") == "optimizer_step"
                      for n in ast.walk(ast.parse(p.read_text())))]
    assert defined == ["families/base.py"]
