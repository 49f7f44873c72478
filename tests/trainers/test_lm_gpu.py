"""GPU paths: pinned staging buffers and bf16 autocast. Skipped cleanly without CUDA."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch

from ckptkit.training import load_for_resume
from ckptkit.training.snapshot import StagingArea
from trainers.lm import PRESETS, LMRun, RunOptions

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_tensors_are_staged_into_reused_pinned_cpu_buffers() -> None:
    area = StagingArea()
    weight = torch.arange(1024, dtype=torch.float32, device="cuda")
    first = area.snapshot({"w": weight})["w"]
    weight.mul_(2)
    second = area.snapshot({"w": weight})["w"]
    assert first.is_pinned() and not first.is_cuda
    assert first.data_ptr() == second.data_ptr()
    assert second[-1].item() == 2046.0


def test_a_bf16_cuda_run_interrupted_mid_window_resumes_and_finishes(tmp_path: Path) -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], grad_accum=2, max_steps=10, save_interval=4, eval_interval=4)
    options = dict(out=tmp_path, device="cuda", progress_stream=io.StringIO())
    stopped = LMRun(cfg, RunOptions(stop_at_micro_step=9, **options)).run()
    assert stopped.checkpoints[-1].name == "checkpoint_step_4_micro_1.pt"
    point = load_for_resume(tmp_path)
    assert point.config["precision"] == "bf16" and point.warnings == []
    assert len(point.checkpoint["rng_state"]["ranks"][0]["cuda"]) == torch.cuda.device_count()
    finished = LMRun(cfg, RunOptions(**options), point).run()
    assert finished.status == "finished" and finished.global_step == 10
    assert [h["step"] for h in finished.train_history] == list(range(1, 11))
