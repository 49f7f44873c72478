"""A healthy run of any bundled trainer, stopped at any point and resumed, is called healthy:
`validate --fail-on warning` of every checkpoint and `ls` of the run exit 0, and the family reads
each checkpoint at the place the trainer recorded (its data_position)."""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.cli import main as cli
from ckptkit.formats import open_checkpoint
from ckptkit.runs import find_checkpoints
from ckptkit.training import load_for_resume


def _trainer(name: str) -> tuple[Any, Any, Any, int]:
    """(run class, config, RunOptions, batches in the whole run) of a bundled trainer."""
    if name == "recsys":
        from trainers import recsys
        return recsys.RecsysRun, recsys.PRESETS["tiny"], recsys.RunOptions, 40
    if name == "retrieval":
        from trainers import retrieval
        return retrieval.RetrievalRun, retrieval.PRESETS["tiny"], retrieval.RunOptions, 48
    from trainers import pretrained
    return pretrained.PretrainedRun, pretrained.PRESETS["tiny"], pretrained.RunOptions, 36


def _run(name: str, out: Path, resume: Any = None, **options: Any) -> Any:
    run_type, cfg, options_type, _ = _trainer(name)
    return run_type(cfg, options_type(out=out, keep_last=None, device="cpu", progress_stream=io.StringIO(),
                                      **options), resume).run()


def _assert_clean(out: Path) -> None:
    runner = CliRunner()
    for path, _ in find_checkpoints(out):
        # a folder and the training_state.pth inside it alike
        for target in (path, *[path / "training_state.pth"] * (path / "training_state.pth").is_file()):
            result = runner.invoke(cli, ["validate", str(target), "--fail-on", "warning"])
            assert result.exit_code == 0, result.output
        position = open_checkpoint(path).progress
        assert position.known and position.resume is not None, path
    listing = runner.invoke(cli, ["ls", str(out)])
    assert listing.exit_code == 0, listing.output


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trainer=st.sampled_from(["recsys", "retrieval", "pretrained"]), share=st.floats(0.02, 0.98))
def test_a_run_stopped_anywhere_and_resumed_validates_clean_and_ls_exits_0(
        tmp_path_factory: Any, trainer: str, share: float) -> None:
    out = tmp_path_factory.mktemp(trainer)
    stop_at = max(1, int(share * _trainer(trainer)[3]))
    assert _run(trainer, out, stop_at_micro_step=stop_at).status == "interrupted"
    _assert_clean(out)
    point = load_for_resume(out)
    recorded = point.position
    family = open_checkpoint(point.path).progress
    assert (family.epochs_completed, family.step_in_epoch or 0) == (recorded.epoch, recorded.batch_in_epoch)
    assert _run(trainer, out, point).status == "finished"
    _assert_clean(out)
    shutil.rmtree(out)
