"""Lightning checkpoints saved with ModelCheckpoint(save_weights_only=True) (real fixture from
Lightning 2.6.6, scripts/make_real_fixtures.py): Trainer.fit(ckpt_path=...) raises KeyError
"Trying to restore optimizer state but checkpoint contains only the model" on them.

ckptkit once said Lightning "continues from global step 6", warned only that "a resume would
restart Adam moments", and `ls`/`latest` picked last.ckpt to resume from.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.core.checkpoint import Severity
from ckptkit.formats import open_checkpoint
from ckptkit.runs import scan_run
from tests.validation.helpers import only, run

RUN = Path(__file__).parent.parent / "fixtures" / "real" / "lightning_weights_only"
REFUSES = ("Lightning's Trainer.fit(ckpt_path=...) refuses this file: it has no 'optimizer_states' "
           "(ModelCheckpoint(save_weights_only=True) writes the model only), and Lightning raises KeyError "
           "'Trying to restore optimizer state but checkpoint contains only the model'")


def test_the_fixture_is_what_lightning_writes_with_save_weights_only() -> None:
    ckpt = torch.load(RUN / "last.ckpt", weights_only=True)
    assert {"optimizer_states", "lr_schedulers"}.isdisjoint(ckpt)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 6) and "state_dict" in ckpt


def test_the_resume_line_says_lightning_refuses_a_weights_only_ckpt() -> None:
    resume = open_checkpoint(RUN / "last.ckpt").progress.resume
    assert resume is not None and resume.describe().startswith(REFUSES)
    assert "load_from_checkpoint" in resume.describe()
    assert resume.to_json()["refuses"].startswith("it has no 'optimizer_states'")


def test_validate_warns_that_the_resume_refuses_it_not_that_it_restarts_adam() -> None:
    finding = only(run(RUN / "last.ckpt"), "completeness.missing-optimizer")
    assert finding.severity is Severity.WARNING
    assert finding.message.startswith("expected optimizer state beside the counters (epoch 2 complete, global step 6), "
                                      f"found none: {REFUSES}")
    assert "restart Adam moments" not in finding.message


def test_a_full_lightning_ckpt_still_resumes() -> None:
    resume = open_checkpoint(RUN.parent / "lightning" / "last.ckpt").progress.resume
    assert resume is not None and resume.refuses is None
    assert resume.describe() == "Lightning's Trainer.fit(ckpt_path=...) continues from global step 6"


def test_ls_and_latest_pick_no_weights_only_ckpt_to_resume(tmp_path: Path) -> None:
    shutil.copytree(RUN, tmp_path / "run")
    scanned = scan_run(tmp_path / "run")
    assert scanned.resume is None
    assert [e.markers for e in scanned.entries] == [[], [], ["latest"]]
    result = CliRunner().invoke(main, ["latest", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "(3 found, 0 broken, 3 that Lightning does not resume from;" in result.output


def test_a_full_ckpt_beside_weights_only_ones_is_the_one_to_resume(tmp_path: Path) -> None:
    shutil.copytree(RUN, tmp_path / "run")
    shutil.copy(RUN.parent / "lightning" / "epoch=0-step=3.ckpt", tmp_path / "run" / "full-epoch=0-step=3.ckpt")
    result = CliRunner().invoke(main, ["latest", str(tmp_path / "run")])
    assert (result.exit_code, result.output.strip()) == (0, str(tmp_path / "run" / "full-epoch=0-step=3.ckpt"))
