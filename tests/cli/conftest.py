"""Fixtures for the CLI tests: the repair commands run on the same seed-sample copies as tests/repair.

Imported here rather than into the test module, where each test's parameter would shadow the
imported name; a module-level fixture of the same name (test_inspect_command's `samples`) still wins.
"""
from __future__ import annotations

from tests.repair.conftest import sample_dir, samples, training_state

__all__ = ["sample_dir", "samples", "training_state"]
