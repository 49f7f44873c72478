"""The fashion recommender's --mixed-precision on CUDA: fp16 autocast with a GradScaler whose state is saved
(the seed's bug was not saving it). Skipped cleanly without CUDA."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch

from ckptkit.training import load_for_resume
from trainers.retrieval import PRESETS, RetrievalRun, RunOptions

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_an_fp16_cuda_run_saves_its_grad_scaler_and_resumes_with_it(tmp_path: Path) -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], precision="fp16", epochs=2)
    options = dict(out=tmp_path, device="cuda", progress_stream=io.StringIO())
    stopped = RetrievalRun(cfg, RunOptions(stop_at_micro_step=17, **options)).run()
    assert stopped.checkpoints[-1].name == "interrupted_model_epoch_1_batch_5.pt"
    point = load_for_resume(tmp_path)
    scaler = point.checkpoint["scaler_state_dict"]
    assert point.config["precision"] == "fp16" and scaler["scale"] > 0 and point.warnings == []
    run = RetrievalRun(cfg, RunOptions(**options), point)
    assert run.scaler.get_scale() == scaler["scale"]
    finished = run.run()
    assert finished.status == "finished" and finished.record.global_step == 12
    assert len(finished.record.val_recalls) == 2
