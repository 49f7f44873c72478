"""Which module continues a checkpoint: the trainer name it records, looked up among the
registered trainers (entry points; a source checkout's own pyproject.toml), never a module name
written into the library."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptkit.core.errors import ResumeRefusedError
from ckptkit.runs import resuming, trainer_registry
from ckptkit.runs.trainer_registry import TrainerEntry, find_trainer, registered_trainers

BUNDLED = ["lm", "pretrained", "recsys", "retrieval"]


def test_from_the_checkout_every_bundled_trainer_resolves_to_its_module_in_the_trainers_folder() -> None:
    trainers = registered_trainers()
    assert [name for name in trainers if name in BUNDLED] == BUNDLED
    for name in BUNDLED:
        assert find_trainer(name) == TrainerEntry(name, f"trainers.{name}")


def test_a_checkout_maps_the_installed_package_name_to_its_folder(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "ckptkit"\n'
                         '[project.entry-points."ckptkit.trainers"]\nranker = "ckptkit_trainers.ranker:main"\n'
                         'other = "elsewhere.train:main"\n'
                         '[tool.setuptools.package-dir]\nckptkit_trainers = "trainers"\n')
    assert trainer_registry._checkout_entries(pyproject) == {"ranker": "trainers.ranker", "other": "elsewhere.train"}


def test_another_project_s_pyproject_is_not_read_as_ckptkit_s(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "other"\n[project.entry-points."ckptkit.trainers"]\nx = "x.y:main"\n')
    assert trainer_registry._checkout_entries(pyproject) == {}
    assert trainer_registry._checkout_entries(tmp_path / "missing.toml") == {}


def test_an_unregistered_name_and_a_module_that_cannot_be_imported_find_no_trainer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert find_trainer(None) is None and find_trainer("nanogpt") is None
    monkeypatch.setattr(trainer_registry, "_module_names", lambda: {"gone": ["no_such_pkg.gone", "json.gone"]})
    assert find_trainer("gone") is None


def test_the_trainer_module_of_this_tree_is_chosen_over_another_importable_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # an installed ckptkit_trainers.lm of another checkout must not run this checkout's checkpoints
    monkeypatch.setattr(trainer_registry, "_module_names", lambda: {"lm": ["json.decoder", "trainers.lm"]})
    assert find_trainer("lm") == TrainerEntry("lm", "trainers.lm")
    monkeypatch.setattr(trainer_registry, "_module_names", lambda: {"lm": ["no_such_pkg.lm", "json.decoder"]})
    assert find_trainer("lm") == TrainerEntry("lm", "json.decoder")   # none of ours: any importable one


def test_a_checkpoint_of_a_registered_trainer_whose_module_is_missing_is_refused_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "ckptkit": {"version": 1, "trainer": "gone"}}, path)
    monkeypatch.setattr(resuming, "registered_trainers", lambda: {"gone": TrainerEntry("gone", "no_such_pkg.gone")})
    with pytest.raises(
        ResumeRefusedError, match="written by the 'gone' trainer, whose module no_such_pkg.gone cannot be imported"
    ):
        resuming.plan_resume(path)
