"""ckptkit plot: the series a run's checkpoints carry, their markers and resumes, and the PNG."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from ckptkit.cli import main
from ckptkit.plotting import collect_series
from tests.run_builders import REAL

HF_RUN = REAL / "hf_full"


def series(data, run: str, metric: str) -> tuple[list[float], list[float]]:
    s = next(s for s in data.series if s.run == run and s.metric == metric)
    return [x for x, _ in s.points], [v for _, v in s.points]


def logged(folder: Path, key: str) -> tuple[list[float], list[float]]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [float(e["step"]) for e in history if key in e], [e[key] for e in history if key in e]


def test_an_hf_trainer_run_plots_its_log_history_against_global_step_with_each_checkpoint_marked() -> None:
    data = collect_series(HF_RUN)
    assert series(data, "hf_full", "loss") == logged(HF_RUN / "checkpoint-10", "loss")
    assert series(data, "hf_full", "eval_loss") == logged(HF_RUN / "checkpoint-10", "eval_loss")
    assert series(data, "hf_full", "eval_loss")[0] == [4.0, 8.0, 10.0]
    assert {s.metric for s in data.series} == {"loss", "eval_loss", "grad_norm", "learning_rate"}   # no runtimes
    # trainer_state.json names checkpoint-10 the best too: drawn as best, still marked latest.
    assert [(m.path, m.step, m.kind) for m in data.markers] == [
        ("checkpoint-4", 4, "checkpoint"), ("checkpoint-8", 8, "checkpoint"), ("checkpoint-10", 10, "best")]
    assert "latest" in data.markers[-1].markers
    assert data.resumes == []


def test_older_checkpoints_fill_the_steps_the_newest_history_lacks(tmp_path: Path) -> None:
    run = tmp_path / "out"
    shutil.copytree(HF_RUN, run)
    state_file = run / "checkpoint-10" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"] = [e for e in state["log_history"] if e["step"] > 4]
    state_file.write_text(json.dumps(state))
    data = collect_series(run)
    assert series(data, "out", "loss") == logged(HF_RUN / "checkpoint-10", "loss")
    loss = next(s for s in data.series if s.metric == "loss")
    assert loss.source == "checkpoint-10: log_history" and loss.filled_from == ["checkpoint-8: log_history"]


def lm_file(path: Path, step: int, losses: list[float]) -> Path:
    """run_experiment.py LM's dict: train_history/val_history are lists of per-step dicts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "global_step": step, "epoch": 0, "best_val_loss": 0.4,
                "train_history": [{"step": i + 1, "loss": v, "lr": 0.1} for i, v in enumerate(losses)],
                "val_history": [{"step": step, "val_loss": losses[-1] + 0.1}]}, path)
    return path


def test_two_runs_give_two_lines_and_a_history_that_parts_ways_marks_the_resume(tmp_path: Path) -> None:
    lm_file(tmp_path / "a" / "checkpoint_step_2.pt", 2, [3.0, 2.5])
    lm_file(tmp_path / "a" / "checkpoint_step_4.pt", 4, [3.0, 2.5, 2.0, 1.5])
    lm_file(tmp_path / "b" / "checkpoint_step_3.pt", 3, [3.0, 2.5, 2.2])     # the abandoned branch
    lm_file(tmp_path / "b" / "checkpoint_step_4.pt", 4, [3.0, 2.5, 2.0, 1.9])  # resumed from step 2
    data = collect_series(tmp_path)
    assert data.runs == ["a", "b"]
    assert series(data, "a", "loss") == ([1.0, 2.0, 3.0, 4.0], [3.0, 2.5, 2.0, 1.5])
    assert series(data, "b", "loss") == ([1.0, 2.0, 3.0, 4.0], [3.0, 2.5, 2.0, 1.9])
    assert series(data, "b", "val_loss") == ([3.0, 4.0], [2.2 + 0.1, 2.0])   # step 3's val fills the gap
    assert [(r.run, r.step) for r in data.resumes] == [("b", 2.0)]


def test_retrieval_histories_are_per_epoch_lists(tmp_path: Path) -> None:
    torch.save(
        {
            "epoch": 4,
            "model_state_dict": {"w": torch.ones(2)},
            "optimizer_state_dict": {"state": {}, "param_groups": []},
            "loss": 0.5,
            "recall_at_10": 0.3,
            "train_losses": [0.9, 0.7, 0.5],
            "val_recalls": [0.1, 0.2, 0.3],
        },
        tmp_path / "optimized_model_epoch_3_recall_0.3000.pt",
    )
    data = collect_series(tmp_path)
    assert series(data, tmp_path.name, "train_losses") == ([1.0, 2.0, 3.0], [0.9, 0.7, 0.5])
    assert next(s for s in data.series if s.metric == "val_recalls").axis == "epoch"


def test_lightning_files_give_one_point_each_from_the_monitored_score(tmp_path: Path) -> None:
    for name, score in (("epoch=0-step=3.ckpt", 0.9), ("epoch=1-step=6.ckpt", 0.7)):
        ckpt = torch.load(REAL / "lightning" / name, weights_only=True)
        key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
        ckpt["callbacks"][key].update(monitor="val_loss", current_score=torch.tensor(score))
        torch.save(ckpt, tmp_path / name)
    data = collect_series(tmp_path)
    steps, values = series(data, tmp_path.name, "val_loss")
    assert steps == [3.0, 6.0] and [round(v, 6) for v in values] == [0.9, 0.7]


def test_plot_writes_a_png_and_json_gives_the_same_series(tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(main, ["plot", str(HF_RUN), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    got = json.loads(result.output)
    assert got == json.loads(json.dumps(collect_series(HF_RUN).to_json()))
    assert [c["kind"] for c in got["checkpoints"]] == ["checkpoint", "checkpoint", "best"]


def test_without_matplotlib_plot_names_the_extra_in_one_line_and_exits_2(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["plot", str(HF_RUN), "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 2
    assert "pip install 'ckptkit[plot]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()


def test_a_run_without_histories_exits_2_and_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plot", str(REAL / "lightning"), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.output)["notes"] == [
        "no checkpoint below it carries a history (a loss or metric per step or epoch)"]


def test_a_save_left_unfinished_before_later_checkpoints_marks_a_resume_at_the_whole_one_before_it(
        tmp_path: Path) -> None:
    lm_file(tmp_path / "checkpoint_step_2.pt", 2, [3.0, 2.5])
    lm_file(tmp_path / "checkpoint_step_3.pt.ckptkit-tmp-new-1a2b", 3, [3.0, 2.5, 2.2])   # killed mid-save
    lm_file(tmp_path / "checkpoint_step_4.pt", 4, [3.0, 2.5, 2.2, 1.9])
    data = collect_series(tmp_path)
    assert [(r.step, r.axis) for r in data.resumes] == [(2.0, "step")]
    assert "checkpoint_step_3.pt.ckptkit-tmp-new-1a2b is a temporary" in data.resumes[0].why
    assert [m.kind for m in data.markers] == ["checkpoint", "broken", "latest"]
