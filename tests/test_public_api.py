"""The package root exports the public API, lazily: `import ckptkit` loads no torch and no verb."""
from __future__ import annotations

import subprocess
import sys

import ckptkit


def test_every_exported_name_resolves_to_the_object_its_module_defines() -> None:
    import importlib

    assert ckptkit.__all__ == ["__version__", *ckptkit._API]
    for name in ckptkit.__all__:
        value = getattr(ckptkit, name)
        if name != "__version__":
            assert value is getattr(importlib.import_module(ckptkit._API[name]), name), name


def test_importing_the_package_loads_neither_torch_nor_any_verb() -> None:
    verbs = ("ckptkit.validation", "ckptkit.runs", "ckptkit.inspection", "ckptkit.diffing", "ckptkit.repair",
             "ckptkit.conversion", "ckptkit.training", "ckptkit.cli")
    code = (f"import sys, ckptkit; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith({verbs!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    try:
        ckptkit.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
